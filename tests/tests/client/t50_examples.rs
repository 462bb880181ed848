//! The crate's examples, run as programs against a node (`EDDY_URL`): each must exit 0
//! and print what it promises.

use std::path::PathBuf;
use std::process::Command;

use eddy_tests::TestNode;

use super::url;

/// `target/<profile>/examples/`, next to this test's `deps/` directory; (re)builds the
/// examples first so a stale binary is never run.
fn examples_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or_else(|| anyhow::anyhow!("odd test path"))?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "eddy-client", "--examples"])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p eddy-client --examples failed"
    );
    Ok(dir.join("examples"))
}

/// Runs an example on the blocking pool (the in-process node keeps serving) and returns
/// its stdout, failing unless it exits 0.
async fn run(dir: &std::path::Path, name: &str, eddy_url: &str) -> anyhow::Result<String> {
    let bin = dir.join(name);
    let eddy_url = eddy_url.to_owned();
    let out =
        tokio::task::spawn_blocking(move || Command::new(&bin).env("EDDY_URL", eddy_url).output())
            .await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_example() -> anyhow::Result<()> {
    let dir = tokio::task::spawn_blocking(examples_dir).await??;
    let node = TestNode::start().await?;
    let out = run(&dir, "publish", &url(node.addr())).await?;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("published s1 at partition ")),
        "{out}"
    );
    assert!(
        lines.contains(&"producer: 1000 rows acknowledged at 1000 distinct positions"),
        "{out}"
    );
    let c = node.client().await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0);
    assert_eq!(n, 1001);
    node.shutdown().await
}

/// Needs the server's cursors over SUBSCRIBE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_example() -> anyhow::Result<()> {
    let dir = tokio::task::spawn_blocking(examples_dir).await??;
    let node = TestNode::start().await?;
    let out = run(&dir, "subscribe", &url(node.addr())).await?;
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("partition="))
        .collect();
    assert_eq!(rows.len(), 10, "{out}");
    assert!(rows.iter().all(|l| l.contains(" sensor=s")), "{out}");
    assert_eq!(out.lines().last(), Some("received 10 rows"), "{out}");
    node.shutdown().await
}

/// Needs the server's durable subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_example() -> anyhow::Result<()> {
    let dir = tokio::task::spawn_blocking(examples_dir).await??;
    let node = TestNode::start().await?;
    let eddy_url = url(node.addr());
    let out = run(&dir, "consumer", &eddy_url).await?;
    assert_eq!(out.lines().last(), Some("acked 5 rows"), "{out}");
    let first: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("partition="))
        .map(str::to_owned)
        .collect();
    assert_eq!(first.len(), 5, "{out}");
    // A second run carries on: none of the rows the first run acknowledged comes again.
    let out = run(&dir, "consumer", &eddy_url).await?;
    assert_eq!(out.lines().last(), Some("acked 5 rows"), "{out}");
    let position = |l: &str| l.split(" temp=").next().unwrap_or_default().to_owned();
    let again: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("partition="))
        .map(position)
        .collect();
    assert_eq!(again.len(), 5, "{out}");
    for l in &first {
        assert!(!again.contains(&position(l)), "{l} delivered again:\n{out}");
    }
    node.shutdown().await
}
