//! Stopping statements: a CancelRequest (Ctrl-C in psql) and `statement_timeout` stop a
//! running query, pg_sleep or a join that is still computing, with 57014, and leave the
//! connection usable.

use eddy_tests::{wait_for, TestNode};
use tokio_postgres::error::SqlState;

/// Table `n` of the integers `0..count`.
async fn numbers(c: &tokio_postgres::Client, count: usize) -> anyhow::Result<()> {
    c.batch_execute("CREATE TABLE n (i INT PRIMARY KEY)")
        .await?;
    let values: Vec<String> = (0..count).map(|i| format!("({i})")).collect();
    c.batch_execute(&format!("INSERT INTO n VALUES {}", values.join(",")))
        .await?;
    Ok(())
}

/// Sends CancelRequests until the statement `running` ends, and returns how it ended. A
/// cancel that arrives before the statement starts is ignored, so it sends again; but it
/// waits for each to be answered first, so that none is still on its way when the next
/// statement starts (that one would be cancelled instead).
async fn cancel_until_stopped<T: Send + 'static>(
    token: &tokio_postgres::CancelToken,
    mut running: tokio::task::JoinHandle<T>,
) -> anyhow::Result<T> {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        token.cancel_query(tokio_postgres::NoTls).await?;
        let answered = std::time::Duration::from_secs(5);
        if let Ok(done) = tokio::time::timeout(answered, &mut running).await {
            return Ok(done?);
        }
    }
}

/// A count over `n`'s three-way cross join: `count^3` joined rows, long enough to stop.
const CUBE: &str = "SELECT count(*) FROM n a, n b, n c WHERE a.i + b.i + c.i >= 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = std::sync::Arc::new(node.client().await?);
    numbers(&c, 600).await?;
    let token = c.cancel_token();
    let q = c.clone();
    // 600^3 = 216M joined rows: far longer than the cancel takes to arrive.
    let running = tokio::spawn(async move { q.query(CUBE, &[]).await });
    let result = cancel_until_stopped(&token, running).await?;
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    // The connection is still usable afterwards.
    let n: i64 = c.query_one("SELECT count(*) FROM n", &[]).await?.get(0);
    assert_eq!(n, 600);
    node.shutdown().await
}

/// A query stopped while a join computes stops computing: the tasks it spawned end (they
/// yield as the join emits batches, so their abort takes effect), instead of looping for
/// as long as the whole join takes. (More workers than the query's partitions, so that
/// without the fix the test itself still runs and fails instead of hanging.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_join_stops_computing() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    numbers(&c, 1500).await?;
    let metrics = tokio::runtime::Handle::current().metrics();
    let idle = metrics.num_alive_tasks();
    c.batch_execute("SET statement_timeout = 300").await?;
    // 1500^3 joined rows: minutes of work.
    let err = c.query_one(CUBE, &[]).await.expect_err("timed out");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    wait_for(
        &format!("the query's tasks to end ({idle} alive before it)"),
        std::time::Duration::from_secs(30),
        || std::future::ready((metrics.num_alive_tasks() <= idle).then_some(())),
    )
    .await?;
    c.batch_execute("SET statement_timeout = 0").await?;
    let n: i64 = c.query_one("SELECT count(*) FROM n", &[]).await?.get(0);
    assert_eq!(n, 1500);
    node.shutdown().await
}

/// `pg_sleep` waits without a thread of its own, so a cancel stops it like any query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_pg_sleep() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = std::sync::Arc::new(node.client().await?);
    let token = c.cancel_token();
    let q = c.clone();
    let running = tokio::spawn(async move { q.query("SELECT pg_sleep(600)", &[]).await });
    let result = cancel_until_stopped(&token, running).await?;
    let err = result.expect_err("the sleep was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    let row = c.query_one("SELECT pg_sleep(0.01)", &[]).await?;
    assert_eq!(row.get::<_, &str>(0), "");
    node.shutdown().await
}

/// `statement_timeout` stops a statement that runs too long, in either protocol, with
/// 57014 and PostgreSQL's message, and leaves the connection usable. (Two workers, as a
/// node has: the timer needs a thread while the query's own tasks keep one busy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_stops_long_statements() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    let bad = c
        .batch_execute("SET statement_timeout = 'soon'")
        .await
        .expect_err("not a duration");
    assert_eq!(bad.code(), Some(&SqlState::INVALID_PARAMETER_VALUE));
    c.batch_execute("SET statement_timeout = '200ms'").await?;
    let shown: String = c.query_one("SHOW statement_timeout", &[]).await?.get(0);
    assert_eq!(shown, "200ms");
    let timed_out = |e: tokio_postgres::Error| {
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e:?}"))
            .clone();
        assert_eq!(db.code(), &SqlState::QUERY_CANCELED);
        assert_eq!(db.message(), "canceling statement due to statement timeout");
    };
    // Extended protocol, then simple (one deadline for the whole query string).
    timed_out(
        c.query("SELECT pg_sleep($1)", &[&600.0f64])
            .await
            .expect_err("timed out"),
    );
    timed_out(
        c.simple_query("SELECT 1; SELECT pg_sleep(0.15); SELECT pg_sleep(0.15)")
            .await
            .expect_err("timed out"),
    );
    // Rows that stream for longer than the timeout are stopped too.
    numbers(&c, 600).await?;
    timed_out(c.query(CUBE, &[]).await.expect_err("timed out"));
    // Quick statements are unaffected, and 0 turns the limit off.
    let n: i64 = c.query_one("SELECT count(*) FROM n", &[]).await?.get(0);
    assert_eq!(n, 600);
    c.batch_execute("SET statement_timeout = 0").await?;
    c.query_one("SELECT pg_sleep(0.3)", &[]).await?;
    node.shutdown().await
}
