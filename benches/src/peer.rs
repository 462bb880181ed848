//! Peers started by the tool on loopback, in a temporary directory, for the run only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server of our own: initdb into a temp dir, trust auth on 127.0.0.1, stopped
/// on drop. As root it runs as the `postgres` user (PostgreSQL refuses to run as root).
pub struct PostgresPeer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    /// tokio-postgres connection string.
    pub url: String,
}

/// Where PostgreSQL's server binaries are: `$PG_BIN`, then Debian's layout, then `PATH`.
fn find_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("postgres").exists())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

impl PostgresPeer {
    /// Starts one; fails with install advice when PostgreSQL's server is not installed.
    pub fn start() -> anyhow::Result<PostgresPeer> {
        let bin = find_bin().ok_or_else(|| {
            anyhow::anyhow!("PostgreSQL server binaries not found: apt-get install postgresql (or set PG_BIN)")
        })?;
        let dir = tempfile::tempdir()?;
        let user = is_root().then(|| "postgres".to_owned());
        if let Some(u) = &user {
            let ok = Command::new("chown").args(["-R", u]).arg(dir.path()).status()?.success();
            anyhow::ensure!(ok, "cannot hand {} to {u}", dir.path().display());
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let peer = PostgresPeer {
            url: format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
            dir,
            bin,
            user,
        };
        let data = peer.dir.path().join("data");
        peer.pg("initdb", &["-A", "trust", "-U", "postgres", "-D", &data.to_string_lossy()])?;
        // Durable like eddy: fsync and synchronous_commit stay at their defaults (on).
        let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", peer.dir.path().display());
        let log = peer.dir.path().join("postgres.log");
        peer.pg("pg_ctl", &["-D", &data.to_string_lossy(), "-o", &opts, "-l", &log.to_string_lossy(), "-w", "start"])?;
        Ok(peer)
    }

    fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).current_dir(Path::new("/")).output()?;
        anyhow::ensure!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

impl Drop for PostgresPeer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.pg("pg_ctl", &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"]);
    }
}
