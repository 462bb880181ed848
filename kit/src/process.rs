//! `eddy start` as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The real `eddy` binary running as a child process.
pub struct EddyProcess {
    child: Child,
    addr: SocketAddr,
    cluster_addr: Option<SocketAddr>,
    /// Where its stderr (logs) goes: `<data_dir>.log`, appended on every start.
    pub log: PathBuf,
}

impl EddyProcess {
    /// Starts `eddy start` on `data_dir` with the Postgres listener on `pg_addr` (port 0:
    /// a free one) plus `extra` flags, and returns once it prints the address it serves.
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        pg_addr: &str,
        extra: &[&str],
    ) -> anyhow::Result<EddyProcess> {
        let log = data_dir.with_extension("log");
        let mut child = Command::new(bin)
            .arg("start")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--pg-addr", pg_addr])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut out = BufReader::new(stdout);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("eddy listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("eddy did not start: {line:?}\n{logs}");
        };
        let addr = addr.parse()?;
        // Second line: "eddy node N cluster address HOST:PORT".
        line.clear();
        out.read_line(&mut line)?;
        let cluster_addr = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok());
        // Whatever eddy prints later must not meet a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(EddyProcess {
            child,
            addr,
            cluster_addr,
            log,
        })
    }

    /// The cluster (internal RPC) address it printed.
    pub fn cluster_addr(&self) -> anyhow::Result<SocketAddr> {
        self.cluster_addr
            .ok_or_else(|| anyhow::anyhow!("the node printed no cluster address"))
    }

    /// The Postgres address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?; // SIGKILL on Unix
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(self.child.wait()?)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for EddyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
