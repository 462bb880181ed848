//! `point-select`: prepared primary-key SELECTs, one in flight per connection (eddy and
//! PostgreSQL run the same SQL).

use crate::{connect, Measured, Meter, Options, Server};

/// Rows of the point-select table.
pub(super) const ROWS: i64 = 10_000;

pub(super) async fn setup(server: &Server) -> anyhow::Result<()> {
    let c = connect(server.url()).await?;
    c.batch_execute("DROP TABLE IF EXISTS bench_points").await?;
    c.batch_execute("CREATE TABLE bench_points (id BIGINT PRIMARY KEY, name TEXT)")
        .await?;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'name {i}')")).collect();
        c.batch_execute(&format!(
            "INSERT INTO bench_points VALUES {}",
            values.join(",")
        ))
        .await?;
    }
    Ok(())
}

pub(super) async fn run(
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    let mut clients = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        clients.push(connect(server.url_for(i)).await?);
    }
    super::closed_loop(clients, opts, meter, |worker, c, mut run| async move {
        let stmt = c
            .prepare("SELECT name FROM bench_points WHERE id = $1")
            .await?;
        // A cheap spread of ids over the table (no RNG needed).
        let mut id = (worker as i64 * 7919) % ROWS;
        while let Some(started) = run.next().await {
            id = (id * 31 + 17) % ROWS;
            let rows = c.query(&stmt, &[&id]).await?;
            anyhow::ensure!(rows.len() == 1, "id {id} not found");
            run.done(started);
        }
        Ok(run.finish())
    })
    .await
}
