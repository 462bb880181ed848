//! The command line: help, config file, clean shutdown on SIGTERM, node id checks.

use std::process::Command;

use eddy_tests::{connect, eddy_bin, ProcessNode};
use tokio_postgres::error::SqlState;

#[test]
fn help_lists_the_flags() -> anyhow::Result<()> {
    let out = Command::new(eddy_bin()?)
        .args(["start", "--help"])
        .output()?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--pg-addr",
        "--config",
        "--max-message-bytes",
        "--max-connections",
        "--node-id",
        "--cluster-addr",
        "--join",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let out = Command::new(eddy_bin()?).arg("--version").output()?;
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("eddy "));
    let out = Command::new(eddy_bin()?)
        .args(["start", "--bogus"])
        .output()?;
    assert!(!out.status.success(), "unknown flags are rejected");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("eddy.toml");
    std::fs::write(&cfg, "[query]\nmax_message_bytes = 100\n")?;
    let data = dir.path().join("data");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let mut node = ProcessNode::start(&data, &["--config", &cfg_s])?;
    let c = connect(node.addr()).await?;
    c.batch_execute("CREATE TOPIC t (body TEXT)").await?;
    let e = c
        .execute("INSERT INTO t VALUES ($1)", &[&"x".repeat(200)])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::PROGRAM_LIMIT_EXCEEDED),
        "the config file's limit applies"
    );
    c.execute("INSERT INTO t VALUES ($1)", &[&"small"]).await?;
    drop(c);

    let status = tokio::task::spawn_blocking(move || node.terminate()).await??;
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");

    // A flag overrides the file.
    let node = ProcessNode::start(&data, &["--config", &cfg_s, "--max-message-bytes", "1000"])?;
    let c = connect(node.addr()).await?;
    c.execute("INSERT INTO t VALUES ($1)", &[&"x".repeat(200)])
        .await?;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 2, "data written before SIGTERM is there after restart");
    Ok(())
}

#[test]
fn bad_config_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[node]\nnope = 1\n")?;
    let out = Command::new(eddy_bin()?)
        .args(["start", "--config"])
        .arg(&cfg)
        .args(["--pg-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
    Ok(())
}

#[test]
fn a_data_dir_keeps_its_node_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("d");
    let mut node = ProcessNode::start(&data, &["--node-id", "4"])?;
    assert!(node.terminate()?.success());
    let out = Command::new(eddy_bin()?)
        .args([
            "start",
            "--pg-addr",
            "127.0.0.1:0",
            "--node-id",
            "5",
            "--data-dir",
        ])
        .arg(&data)
        .output()?;
    assert!(
        !out.status.success(),
        "another id on the same data is refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to node 4"), "{err}");
    // The same id starts again.
    let mut node = ProcessNode::start(&data, &["--node-id", "4"])?;
    assert!(node.terminate()?.success());
    Ok(())
}
