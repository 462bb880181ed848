//! psycopg 3 (Python): server-side parameters, executemany, errors.

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

#[tokio::test]
async fn psycopg_driver() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let port = node.addr().port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(["-c", SCRIPT, &port]).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("psycopg ok"), "{stdout}");
    node.shutdown().await
}
