//! A connection's session: its settings (SET, SHOW, RESET), cursors and LISTENs.

use std::collections::BTreeMap;

use eddy_storage::Lane;

use crate::cursor::Cursor;

/// Per-connection state: settings changed with SET, open cursors, LISTENed topics.
#[derive(Debug, Clone, Default)]
pub struct Session {
    vars: BTreeMap<String, String>,
    pub(crate) cursors: BTreeMap<String, Cursor>,
    /// Topic -> the next offset of each partition when LISTEN ran.
    pub(crate) listens: BTreeMap<String, Vec<u64>>,
    /// Inside BEGIN .. COMMIT/ROLLBACK: how many of the block's statements wrote (each
    /// committed on its own; a ROLLBACK warns that it undoes none of them).
    pub(crate) block_writes: Option<u64>,
    /// How this session's writes are committed: a client connection running one
    /// statement at a time is a writer alone; without one (the default), queued.
    lane: Lane,
    /// This node's defaults where its config sets them (`routing`), in place of
    /// [`DEFAULT_SETTINGS`]; RESET returns to them.
    defaults: BTreeMap<String, String>,
}

/// The strategies `SET routing` takes (the broker's router says what each does).
pub const ROUTING_STRATEGIES: [&str; 5] = [
    "adaptive",
    "round_robin",
    "least_connections",
    "locality",
    "local",
];

/// Checks a value for a setting eddy interprets (`consistency`, `routing`,
/// `statement_timeout`); others are taken as they are.
pub fn check_setting(name: &str, value: &str) -> crate::Result<()> {
    match name {
        "consistency" if !["strong", "local"].contains(&value) => {
            Err(crate::Error::InvalidParameter(format!(
                "consistency must be 'strong' or 'local', not '{value}'"
            )))
        }
        "routing" if !ROUTING_STRATEGIES.contains(&value) => {
            Err(crate::Error::InvalidParameter(format!(
                "routing must be one of {}, not '{value}'",
                ROUTING_STRATEGIES
                    .iter()
                    .map(|s| format!("'{s}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        "statement_timeout" => crate::types::parse_duration_ms(value).map(|_| ()),
        _ => Ok(()),
    }
}

/// Defaults reported by SHOW (and as ParameterStatus at startup).
pub const DEFAULT_SETTINGS: [(&str, &str); 16] = [
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("intervalstyle", "postgres"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("search_path", "public"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("max_identifier_length", "63"),
    ("consistency", "strong"),
    ("statement_timeout", "0"),
    ("routing", "adaptive"),
];

impl Session {
    /// A session with default settings.
    pub fn new() -> Self {
        Self::default()
    }
    /// This session, writing in `lane` (a connection: [`Lane::Alone`] with its id; a
    /// pipelined write: [`Lane::Queued`]).
    pub fn in_lane(self, lane: Lane) -> Self {
        Self { lane, ..self }
    }
    /// How this session's writes are committed.
    pub fn lane(&self) -> Lane {
        self.lane
    }
    /// This session, with `value` as the default of setting `name` (a node's config).
    pub fn with_default(mut self, name: &str, value: &str) -> Self {
        self.defaults
            .insert(name.to_ascii_lowercase(), value.to_owned());
        self
    }
    /// The current value of a setting.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.vars
            .get(&name)
            .or_else(|| self.defaults.get(&name))
            .cloned()
            .or_else(|| {
                DEFAULT_SETTINGS
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
    }
    /// How long a statement may run (`statement_timeout`; 0, the default: no limit).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        let ms = self
            .get("statement_timeout")
            .and_then(|v| crate::types::parse_duration_ms(&v).ok())?;
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }
    /// Changes a setting.
    pub fn set(&mut self, name: &str, value: String) {
        self.vars.insert(name.to_ascii_lowercase(), value);
    }
    /// Puts a setting (`None`: every setting) back to its default.
    pub fn reset(&mut self, name: Option<&str>) {
        match name {
            Some(name) => {
                self.vars.remove(&name.to_ascii_lowercase());
            }
            None => self.vars.clear(),
        }
    }
    /// The settings changed with SET in this session (lower-case names).
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
    /// The topics (or tables) this session LISTENs to, with the per-partition offsets the
    /// notifications start from.
    pub fn listens(&self) -> &BTreeMap<String, Vec<u64>> {
        &self.listens
    }
}
