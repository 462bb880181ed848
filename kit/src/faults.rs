//! eddy's fault injection for tests and benchmarks: one `--fault-file` per node, which
//! the node re-reads every 100 ms. A file lists the node ids its links are cut to, then
//! `loss=N` (per mille of the gossip frames it sends that are lost), `fail-forwards`
//! (it answers writes forwarded to it with an internal failure) and `slow=N` (every
//! statement run on it waits N ms first: a slow node). Both ends of a cut
//! list each other, so calls are dropped in both directions at once:
//!
//! ```text
//!   isolate(2) of 3 nodes:   node1.faults "2"   node2.faults "1 3"   node3.faults "2"
//!   heal():                  no cut (a loss= setting stays)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The fault files of a cluster's nodes and what they say now.
pub struct FaultFiles {
    /// Node `id`'s file is `paths[id - 1]`.
    paths: Vec<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default, Clone)]
struct State {
    /// The ids each node's file lists.
    cut: Vec<Vec<u64>>,
    loss_permille: u64,
    /// Nodes failing the writes forwarded to them.
    failing: Vec<u64>,
    /// Per node, the delay of every statement run there, in ms (0: none).
    slow_ms: Vec<u64>,
}

impl FaultFiles {
    /// No files yet; [`FaultFiles::add`] makes one per node, before it starts.
    pub fn new() -> FaultFiles {
        FaultFiles {
            paths: Vec::new(),
            state: Mutex::default(),
        }
    }

    /// An empty file for the next node (id = how many there were + 1) in `dir`; returns
    /// its path, for the node's `--fault-file`.
    pub fn add(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        let id = self.paths.len() + 1;
        let path = dir.join(format!("node{id}.faults"));
        std::fs::write(&path, "")?;
        self.paths.push(path.clone());
        let mut st = self.state()?;
        st.cut.push(Vec::new());
        st.slow_ms.push(0);
        Ok(path)
    }

    fn state(&self) -> anyhow::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow::anyhow!("fault files poisoned"))
    }

    /// How many nodes have a file.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True before any node has a file.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Cuts node `id` off from every other node, both ways (a `loss=` setting stays).
    pub fn isolate(&self, id: u64) -> anyhow::Result<()> {
        let n = self.paths.len() as u64;
        anyhow::ensure!((1..=n).contains(&id), "node {id} of {n}");
        let mut st = self.state()?;
        st.cut = (1..=n)
            .map(|j| {
                if j == id {
                    (1..=n).filter(|other| *other != id).collect()
                } else {
                    vec![id]
                }
            })
            .collect();
        self.write(&st)
    }

    /// Every node loses `permille` per mille of the gossip frames it sends (0: none).
    /// Cuts stay as they are.
    pub fn lose_gossip(&self, permille: u64) -> anyhow::Result<()> {
        anyhow::ensure!(permille <= 1000, "a loss of {permille} per mille");
        let mut st = self.state()?;
        st.loss_permille = permille;
        self.write(&st)
    }

    /// Node `id` answers every write forwarded to it with an internal failure.
    pub fn fail_forwards(&self, id: u64) -> anyhow::Result<()> {
        let mut st = self.state()?;
        st.failing.push(id);
        self.write(&st)
    }

    /// Every statement run on node `id` waits `ms` milliseconds first (0: none again).
    pub fn slow(&self, id: u64, ms: u64) -> anyhow::Result<()> {
        let mut st = self.state()?;
        let n = st.slow_ms.len() as u64;
        anyhow::ensure!((1..=n).contains(&id), "node {id} of {n}");
        st.slow_ms[id as usize - 1] = ms;
        self.write(&st)
    }

    /// No cut link any more (a `loss=` setting stays).
    pub fn heal_links(&self) -> anyhow::Result<()> {
        let mut st = self.state()?;
        st.cut.iter_mut().for_each(Vec::clear);
        self.write(&st)
    }

    /// No fault at all.
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut st = self.state()?;
        let n = st.cut.len();
        *st = State {
            cut: vec![Vec::new(); n],
            slow_ms: vec![0; n],
            ..State::default()
        };
        self.write(&st)
    }

    /// Writes every node's file. Each is replaced whole (written beside it, then renamed
    /// over it): a node reading it half-written would see a heal that never happened.
    fn write(&self, st: &State) -> anyhow::Result<()> {
        for (i, path) in self.paths.iter().enumerate() {
            let id = i as u64 + 1;
            let tmp = path.with_extension("faults.tmp");
            std::fs::write(
                &tmp,
                text(
                    &st.cut[i],
                    st.loss_permille,
                    st.failing.contains(&id),
                    st.slow_ms[i],
                ),
            )?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    }
}

impl Default for FaultFiles {
    fn default() -> Self {
        FaultFiles::new()
    }
}

/// A fault file's contents.
fn text(cut: &[u64], loss_permille: u64, fail_forwards: bool, slow_ms: u64) -> String {
    let mut words: Vec<String> = cut.iter().map(u64::to_string).collect();
    if loss_permille > 0 {
        words.push(format!("loss={loss_permille}"));
    }
    if fail_forwards {
        words.push("fail-forwards".into());
    }
    if slow_ms > 0 {
        words.push(format!("slow={slow_ms}"));
    }
    let mut text = words.join(" ");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(f: &FaultFiles) -> Vec<String> {
        f.paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn isolating_cuts_both_ways_and_healing_keeps_the_loss() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut f = FaultFiles::new();
        for _ in 0..3 {
            f.add(dir.path())?;
        }
        assert_eq!(read(&f), vec!["", "", ""]);
        f.isolate(2)?;
        assert_eq!(read(&f), vec!["2\n", "1 3\n", "2\n"]);
        f.lose_gossip(250)?;
        assert_eq!(
            read(&f),
            vec!["2 loss=250\n", "1 3 loss=250\n", "2 loss=250\n"]
        );
        f.heal_links()?;
        assert_eq!(read(&f), vec!["loss=250\n"; 3]);
        f.fail_forwards(3)?;
        assert_eq!(read(&f)[2], "loss=250 fail-forwards\n");
        f.slow(3, 40)?;
        assert_eq!(read(&f)[2], "loss=250 fail-forwards slow=40\n");
        assert_eq!(read(&f)[1], "loss=250\n");
        f.clear()?;
        assert_eq!(read(&f), vec!["\n"; 3]);
        // Replaced whole: no temporary file is left beside them.
        let left = std::fs::read_dir(dir.path())?.count();
        assert_eq!(left, 3);
        Ok(())
    }
}
