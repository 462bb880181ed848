//! Every `tests/slt/*.slt` golden file, each on a fresh node.

use eddy_tests::{slt, slt_dir, TestNode};

#[tokio::test]
async fn golden_files() -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(slt_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "golden files missing: {files:?}");
    for f in files {
        let node = TestNode::start().await?;
        let client = node.client().await?;
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let n = slt::run(&client, &name, &std::fs::read_to_string(&f)?).await?;
        eprintln!("{name}: {n} records passed");
        drop(client);
        node.shutdown().await?;
    }
    Ok(())
}
