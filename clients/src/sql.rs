//! The SQL text the client sends, built by pure functions so unit tests can read it, and
//! the options that become its clauses ([`StartFrom`], [`SubscriptionOptions`]).
//!
//! Names (topics, columns, subscriptions, cursors) are always double-quoted, so they are
//! used exactly as given: `readings` and `Readings` are different topics, and a name may
//! hold any character. Unquoted SQL folds to lower case, so a topic created as
//! `CREATE TOPIC Readings` is named `readings`.

use std::fmt::Write as _;
use std::time::Duration;

/// Most parameters one statement carries. The wire protocol counts them in 16 bits
/// (at most 65535); we stay one below that.
pub(crate) const MAX_PARAMS: usize = 65_534;

/// `name` as a double-quoted SQL identifier (embedded quotes doubled).
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `value` as a single-quoted SQL string literal (embedded quotes doubled).
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' {
            s.push('\'');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A duration as eddy's interval text: whole seconds as `'30s'`, otherwise milliseconds
/// (`'1500ms'`; sub-millisecond parts round up so a timeout never becomes zero).
pub(crate) fn duration_literal(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("'{}s'", d.as_secs())
    } else {
        let ms = d.as_nanos().div_ceil(1_000_000);
        format!("'{ms}ms'")
    }
}

/// `INSERT INTO "topic" ("_key", "c1", ...) VALUES ($1, $2, ...), (...) RETURNING
/// _partition, _offset` for `rows` rows; row `i`'s key is parameter `i * (cols + 1) + 1`.
pub(crate) fn insert(topic: &str, columns: &[String], rows: usize) -> String {
    let per_row = columns.len() + 1;
    let mut s = format!("INSERT INTO {} (\"_key\"", quote_ident(topic));
    for c in columns {
        s.push_str(", ");
        s.push_str(&quote_ident(c));
    }
    s.push_str(") VALUES ");
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..per_row {
            if c > 0 {
                s.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(s, "${}", r * per_row + c + 1);
        }
        s.push(')');
    }
    s.push_str(" RETURNING _partition, _offset");
    s
}

/// Most rows one INSERT of `columns` user columns (plus `_key`) may carry.
pub(crate) fn max_rows(columns: usize) -> usize {
    MAX_PARAMS / (columns + 1)
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest row each partition still holds.
    Beginning,
    /// Only rows published after the subscription starts (the default).
    Now,
    /// This offset in every partition.
    Offset(i64),
    /// These `(partition, offset)` positions; partitions not listed start at the beginning.
    Offsets(Vec<(i32, i64)>),
}

impl StartFrom {
    /// The `FROM ...` clause.
    pub(crate) fn clause(&self) -> String {
        match self {
            StartFrom::Beginning => "FROM BEGINNING".to_owned(),
            StartFrom::Now => "FROM NOW".to_owned(),
            StartFrom::Offset(n) => format!("FROM OFFSET {n}"),
            StartFrom::Offsets(list) => {
                let pairs: Vec<String> = list.iter().map(|(p, o)| format!("({p}, {o})")).collect();
                format!("FROM OFFSETS ({})", pairs.join(", "))
            }
        }
    }
}

/// `DECLARE "cursor" CURSOR FOR SUBSCRIBE "topic" [WHERE filter] FROM ...`.
pub(crate) fn declare(cursor: &str, topic: &str, filter: Option<&str>, from: &StartFrom) -> String {
    let mut s = format!(
        "DECLARE {} CURSOR FOR SUBSCRIBE {}",
        quote_ident(cursor),
        quote_ident(topic)
    );
    if let Some(f) = filter {
        // The filter is SQL by contract; parentheses keep it one expression.
        let _ = write!(s, " WHERE ({f})");
    }
    s.push(' ');
    s.push_str(&from.clause());
    s
}

/// `FETCH n "cursor" WITH (timeout = '...')`.
pub(crate) fn fetch_cursor(cursor: &str, n: u32, timeout: Duration) -> String {
    format!(
        "FETCH {n} {} WITH (timeout = {})",
        quote_ident(cursor),
        duration_literal(timeout)
    )
}

/// How a durable subscription is created when it does not exist yet; every `None` takes
/// the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Only rows matching this SQL expression (`"temp > 30"`).
    pub filter: Option<String>,
    /// Where it starts (server default: now).
    pub from: Option<StartFrom>,
    /// How long a fetched row stays leased before it is redelivered.
    pub ack_wait: Option<Duration>,
    /// Deliveries after which a row goes to the dead-letter topic `<name>_dlq`.
    pub max_deliver: Option<u32>,
    /// `true`: rows of one key are delivered one at a time, in order (`ordering = 'key'`);
    /// `false`: no ordering between fetches (`ordering = 'none'`).
    pub ordering_key: Option<bool>,
    /// Most rows leased or held back at once; while that many are pending, FETCH only
    /// redelivers.
    pub max_pending: Option<u32>,
}

/// A durable subscription to create when it does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscriptionSpec {
    pub topic: String,
    pub options: SubscriptionOptions,
}

/// `CREATE SUBSCRIPTION IF NOT EXISTS "s" ON "t" [WHERE ..] [FROM ..] [WITH (..)]`.
pub(crate) fn create_subscription(name: &str, spec: &SubscriptionSpec) -> String {
    let o = &spec.options;
    let mut s = format!(
        "CREATE SUBSCRIPTION IF NOT EXISTS {} ON {}",
        quote_ident(name),
        quote_ident(&spec.topic)
    );
    if let Some(f) = &o.filter {
        let _ = write!(s, " WHERE ({f})");
    }
    if let Some(from) = &o.from {
        s.push(' ');
        s.push_str(&from.clause());
    }
    let mut options = Vec::new();
    if let Some(d) = o.ack_wait {
        options.push(format!("ack_wait = {}", duration_literal(d)));
    }
    if let Some(n) = o.max_deliver {
        options.push(format!("max_deliver = {n}"));
    }
    if let Some(key) = o.ordering_key {
        options.push(format!("ordering = '{}'", if key { "key" } else { "none" }));
    }
    if let Some(n) = o.max_pending {
        options.push(format!("max_pending = {n}"));
    }
    if !options.is_empty() {
        let _ = write!(s, " WITH ({})", options.join(", "));
    }
    s
}

/// `FETCH n FROM SUBSCRIPTION "s" WITH (timeout = '...')`.
pub(crate) fn fetch_subscription(name: &str, n: u32, timeout: Duration) -> String {
    format!(
        "FETCH {n} FROM SUBSCRIPTION {} WITH (timeout = {})",
        quote_ident(name),
        duration_literal(timeout)
    )
}

/// `ACK SUBSCRIPTION "s" (p, o), ...` (`verb` = `ACK`) or `NACK SUBSCRIPTION ...`.
pub(crate) fn settle(
    verb: &str,
    name: &str,
    positions: impl IntoIterator<Item = (i32, i64)>,
) -> String {
    let pairs: Vec<String> = positions
        .into_iter()
        .map(|(p, o)| format!("({p}, {o})"))
        .collect();
    format!(
        "{verb} SUBSCRIPTION {} {}",
        quote_ident(name),
        pairs.join(", ")
    )
}

/// The partitions of one topic and their offset ranges.
pub(crate) const PARTITIONS: &str =
    "SELECT partition, start_offset, next_offset FROM eddy.partitions WHERE topic = $1 ORDER BY partition";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("readings"), r#""readings""#);
        assert_eq!(quote_ident("Mixed Case"), r#""Mixed Case""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident(r#"x"; DROP TOPIC t; --"#),
            r#""x""; DROP TOPIC t; --""#
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_literal(Duration::from_secs(30)), "'30s'");
        assert_eq!(duration_literal(Duration::from_millis(1500)), "'1500ms'");
        assert_eq!(duration_literal(Duration::from_micros(1)), "'1ms'");
        assert_eq!(duration_literal(Duration::ZERO), "'0s'");
    }

    #[test]
    fn insert_numbers_parameters_row_by_row() {
        let cols = vec!["sensor".to_owned(), "temp".to_owned()];
        assert_eq!(
            insert("readings", &cols, 1),
            r#"INSERT INTO "readings" ("_key", "sensor", "temp") VALUES ($1, $2, $3) RETURNING _partition, _offset"#
        );
        assert_eq!(
            insert("r", &cols, 2),
            r#"INSERT INTO "r" ("_key", "sensor", "temp") VALUES ($1, $2, $3), ($4, $5, $6) RETURNING _partition, _offset"#
        );
        assert_eq!(
            insert("e", &[], 2),
            r#"INSERT INTO "e" ("_key") VALUES ($1), ($2) RETURNING _partition, _offset"#
        );
    }

    #[test]
    fn batches_stay_under_the_parameter_limit() {
        for cols in [0, 1, 2, 7, 100, 65_533] {
            let rows = max_rows(cols);
            assert!(rows >= 1, "{cols}");
            assert!(rows * (cols + 1) < 65_535, "{cols}");
            assert!(
                (rows + 1) * (cols + 1) > MAX_PARAMS,
                "{cols}: could carry more rows"
            );
        }
    }

    #[test]
    fn declare_and_fetch() {
        assert_eq!(
            declare("c", "r", None, &StartFrom::Now),
            r#"DECLARE "c" CURSOR FOR SUBSCRIBE "r" FROM NOW"#
        );
        assert_eq!(
            declare(
                "c",
                "r",
                Some("temp > 30"),
                &StartFrom::Offsets(vec![(0, 5), (1, 0)])
            ),
            r#"DECLARE "c" CURSOR FOR SUBSCRIBE "r" WHERE (temp > 30) FROM OFFSETS ((0, 5), (1, 0))"#
        );
        assert_eq!(StartFrom::Beginning.clause(), "FROM BEGINNING");
        assert_eq!(StartFrom::Offset(7).clause(), "FROM OFFSET 7");
        assert_eq!(
            fetch_cursor("c", 100, Duration::from_secs(1)),
            r#"FETCH 100 "c" WITH (timeout = '1s')"#
        );
    }

    #[test]
    fn durable_subscription_statements() {
        let mut spec = SubscriptionSpec {
            topic: "readings".into(),
            options: SubscriptionOptions::default(),
        };
        assert_eq!(
            create_subscription("alerts", &spec),
            r#"CREATE SUBSCRIPTION IF NOT EXISTS "alerts" ON "readings""#
        );
        spec.options = SubscriptionOptions {
            filter: Some("temp > 30".into()),
            from: Some(StartFrom::Beginning),
            ack_wait: Some(Duration::from_secs(30)),
            max_deliver: Some(5),
            ordering_key: Some(true),
            max_pending: Some(1000),
        };
        assert_eq!(
            create_subscription("alerts", &spec),
            r#"CREATE SUBSCRIPTION IF NOT EXISTS "alerts" ON "readings" WHERE (temp > 30) FROM BEGINNING WITH (ack_wait = '30s', max_deliver = 5, ordering = 'key', max_pending = 1000)"#
        );
        assert_eq!(
            fetch_subscription("alerts", 10, Duration::from_millis(250)),
            r#"FETCH 10 FROM SUBSCRIPTION "alerts" WITH (timeout = '250ms')"#
        );
        assert_eq!(
            settle("ACK", "alerts", [(0, 41), (1, 17)]),
            r#"ACK SUBSCRIPTION "alerts" (0, 41), (1, 17)"#
        );
        assert_eq!(
            settle("NACK", "a", [(2, 3)]),
            r#"NACK SUBSCRIPTION "a" (2, 3)"#
        );
    }
}
