//! psycopg 3 (Python): server-side parameters, executemany, errors, and subscriptions
//! (LISTEN notifications, a server-side cursor over SUBSCRIBE, a durable consumer).

use eddy_tests::TestNode;

const SCRIPT: &str = r#"
import sys, psycopg
from psycopg import errors
port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="eddy", dbname="eddy", autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION)")
    cur.execute("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT)")
    cur.executemany("INSERT INTO readings (sensor, temp) VALUES (%s, %s)", [("s%d" % i, i * 1.5) for i in range(20)])
    cur.execute("SELECT count(*), sum(temp) FROM readings WHERE temp >= %s", (15.0,))
    n, total = cur.fetchone()
    assert n == 10 and abs(total - sum(i * 1.5 for i in range(10, 20))) < 1e-9, (n, total)
    cur.execute("INSERT INTO users (id, name) VALUES (%s, %s) RETURNING id", (1, "ann"))
    assert cur.fetchone() == (1,)
    cur.execute("SELECT name FROM users WHERE id = %s", (1,))
    assert cur.fetchone() == ("ann",)
    try:
        cur.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (1, "dup"))
        raise SystemExit("duplicate was accepted")
    except errors.UniqueViolation:
        pass
    try:
        cur.execute("SELECT * FROM nope")
        raise SystemExit("unknown table accepted")
    except errors.UndefinedTable:
        pass
    with conn.transaction():
        cur.execute("INSERT INTO users (id, name) VALUES (%s, %s)", (2, "bob"))
    cur.execute("SELECT count(*) FROM users")
    assert cur.fetchone() == (2,)
print("psycopg ok")
"#;

const SUBSCRIBE_SCRIPT: &str = r#"
import sys, json, psycopg
port = int(sys.argv[1])
args = dict(host="127.0.0.1", port=port, user="eddy", dbname="eddy", autocommit=True)
with psycopg.connect(**args) as pub, psycopg.connect(**args) as sub:
    pub.execute("CREATE TOPIC alerts (level TEXT, n INT) WITH (partitions = 2)")
    # LISTEN: each new row arrives as a notification whose payload is the row as JSON.
    sub.execute("LISTEN alerts")
    pub.execute("INSERT INTO alerts (level, n) VALUES ('warn', 1), ('crit', 2)")
    got = []
    for note in sub.notifies(timeout=20, stop_after=2):
        assert note.channel == "alerts", note
        got.append(json.loads(note.payload)["n"])
    assert sorted(got) == [1, 2], got
    sub.execute("UNLISTEN *")
    # A cursor over a subscription: FETCH waits up to its timeout.
    sub.execute("DECLARE c CURSOR FOR SUBSCRIBE alerts WHERE level = 'crit' FROM BEGINNING")
    rows = sub.execute("FETCH 10 c WITH (timeout = '5s')").fetchall()
    assert [r[5] for r in rows] == [2], rows
    assert sub.execute("FETCH 10 c WITH (timeout = '100ms')").fetchall() == []
    # A durable subscription: FETCH, ACK, and nothing comes back once acked.
    pub.execute("CREATE SUBSCRIPTION s ON alerts FROM BEGINNING")
    rows = sub.execute("FETCH 10 FROM SUBSCRIPTION s").fetchall()
    assert sorted(r[6] for r in rows) == [1, 2], rows
    pairs = ", ".join("(%d, %d)" % (r[0], r[1]) for r in rows)
    cur = sub.execute("ACK SUBSCRIPTION s " + pairs)
    assert cur.statusmessage == "ACK 2", cur.statusmessage
    assert sub.execute("FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '100ms')").fetchall() == []
print("psycopg subscriptions ok")
"#;

/// Runs a psycopg script against a fresh node; it must exit 0 and print `marker`.
async fn run_script(script: &'static str, marker: &str) -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let port = node.addr().port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &port])
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psycopg script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(marker), "{stdout}");
    node.shutdown().await
}

#[tokio::test]
async fn psycopg_driver() -> anyhow::Result<()> {
    run_script(SCRIPT, "psycopg ok").await
}

#[tokio::test]
async fn psycopg_subscriptions() -> anyhow::Result<()> {
    run_script(SUBSCRIBE_SCRIPT, "psycopg subscriptions ok").await
}
