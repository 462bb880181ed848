//! eddy's SQL dialect: PostgreSQL as sqlparser (DataFusion's copy) reads it, plus eddy's
//! own statements, parsed with the same parser so there is one AST and one tokenizer.
//!
//! A query string is split into statements on top-level semicolons (the tokenizer knows
//! quotes, dollar quoting and comments). Each statement is eddy's own when it starts with
//! one of eddy's keyword pairs; anything else goes through datafusion-pg-catalog's
//! compatibility parser, which rewrites the catalog queries psql and drivers send.

use datafusion::sql::sqlparser::ast::{
    ColumnDef, Expr, ObjectName, SqlOption, Statement as SqlStatement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::error::{Error, Result};

mod eddy;

use eddy::parse_eddy;

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE TOPIC [IF NOT EXISTS] name [(columns)] [WITH (options)]`
    CreateTopic {
        /// Topic name.
        name: ObjectName,
        /// Declared columns (none = a single `payload TEXT`).
        columns: Vec<ColumnDef>,
        /// `WITH (...)` options.
        options: Vec<SqlOption>,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
    },
    /// `ALTER TOPIC name SET (options)`
    AlterTopic {
        /// Topic name.
        name: ObjectName,
        /// Options to change.
        options: Vec<SqlOption>,
    },
    /// `DROP TOPIC [IF EXISTS] name`
    DropTopic {
        /// Topic name.
        name: ObjectName,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `SHOW TOPICS`
    ShowTopics,
    /// `SHOW CLUSTER`: the nodes (as `eddy.nodes`)
    ShowCluster,
    /// `ALTER CLUSTER ADD NODE 'cluster address'`: the (new, empty) node listening there
    /// joins the cluster.
    AddNode(String),
    /// `ALTER CLUSTER REMOVE NODE id`: the node's replicas move to other nodes, then it
    /// leaves the cluster.
    RemoveNode(u64),
    /// `ALTER CLUSTER DRAIN NODE id` (`drain`) or `ALTER CLUSTER RESUME NODE id`: the
    /// node stops (or starts again) taking new work.
    DrainNode {
        /// The node.
        node: u64,
        /// Drain it, or take it back.
        drain: bool,
    },
    /// `EXPLAIN ROUTE statement`: where the router would run the statement, and why.
    ExplainRoute(Box<Statement>),
    /// `SUBSCRIBE topic [WHERE expr] [FROM BEGINNING | NOW | OFFSET n | TIMESTAMP '...']`
    Subscribe(crate::spec::SubscribeSpec),
    /// `COPY (SUBSCRIBE ...) TO STDOUT [WITH (FORMAT text | csv, HEADER, DELIMITER 'c', NULL 's')]`
    CopySubscribe {
        /// The subscription.
        spec: crate::spec::SubscribeSpec,
        /// How rows are written.
        options: Vec<datafusion::sql::sqlparser::ast::CopyOption>,
    },
    /// `DECLARE name CURSOR FOR SUBSCRIBE ... | SELECT ...`
    DeclareCursor {
        /// Cursor name.
        name: String,
        /// What it reads.
        source: CursorSource,
    },
    /// `FETCH [FORWARD | NEXT] [n | ALL] [FROM | IN] cursor [WITH (timeout = '1s')]`
    Fetch {
        /// Cursor name.
        cursor: String,
        /// Most rows to return (`None` = ALL).
        count: Option<u64>,
        /// Longest wait for the first row of a subscription cursor (`None` = until one comes).
        timeout: Option<std::time::Duration>,
    },
    /// `CLOSE cursor | ALL`
    Close {
        /// Cursor name (`None` = ALL).
        cursor: Option<String>,
    },
    /// `LISTEN topic`
    Listen(ObjectName),
    /// `UNLISTEN topic | *`
    Unlisten(Option<ObjectName>),
    /// `CREATE SUBSCRIPTION [IF NOT EXISTS] s ON topic [WHERE ...] [FROM ...] [WITH (...)]`
    CreateSubscription {
        /// Subscription name.
        name: ObjectName,
        /// Topic, filter, start position and options.
        spec: crate::spec::SubscribeSpec,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
    },
    /// `DROP SUBSCRIPTION [IF EXISTS] s`
    DropSubscription {
        /// Subscription name.
        name: ObjectName,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `SHOW SUBSCRIPTIONS`
    ShowSubscriptions,
    /// `FETCH n FROM SUBSCRIPTION s [WITH (timeout = '5s')]`
    FetchSubscription {
        /// Subscription name.
        name: ObjectName,
        /// Most rows to return.
        count: u64,
        /// Longest wait for the first row (`None` = return at once).
        timeout: Option<std::time::Duration>,
    },
    /// `ACK SUBSCRIPTION s (partition, offset), ...` or `NACK ...`
    Ack {
        /// Subscription name.
        name: ObjectName,
        /// (partition, offset) pairs.
        positions: Vec<(u32, u64)>,
        /// NACK: deliver these again at once.
        nack: bool,
    },
    /// Anything PostgreSQL-shaped.
    Sql(Box<SqlStatement>),
}

/// What a cursor reads.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorSource {
    /// A live subscription: FETCH waits for rows.
    Subscribe(Box<crate::spec::SubscribeSpec>),
    /// An ordinary query: FETCH pages through its rows.
    Query(Box<SqlStatement>),
}

/// Splits `sql` into statement texts on top-level semicolons, dropping empty ones.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax(e.to_string()))?;
    // Locations are (line, column) in characters; map them to byte offsets.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let byte_at = |line: u64, col: u64| -> usize {
        let start = line_starts
            .get(line.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth(col.saturating_sub(1) as usize)
            .map(|(i, _)| start + i)
            .unwrap_or(sql.len())
    };
    let mut out = Vec::new();
    let mut begin = 0;
    let mut has_content = false;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                let end = byte_at(t.span.start.line, t.span.start.column);
                if has_content {
                    out.push(sql[begin..end].to_owned());
                }
                begin = end + 1;
                has_content = false;
            }
            Token::Whitespace(_) => {}
            _ => has_content = true,
        }
    }
    if has_content {
        out.push(sql[begin..].to_owned());
    }
    Ok(out)
}

fn syntax(e: ParserError) -> Error {
    Error::Syntax(match e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
        ParserError::RecursionLimitExceeded => "statement nested too deeply".into(),
    })
}

/// The first three tokens of a statement, upper-cased (comments and whitespace skipped).
fn leading_words(sql: &str) -> Vec<String> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return vec![];
    };
    tokens
        .into_iter()
        .filter(|t| {
            !matches!(
                t,
                Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
                    | Token::Whitespace(_)
            )
        })
        .take(3)
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// The text of `sql` after its first `n` words (comments and whitespace before them
/// skipped).
fn after_words(sql: &str, n: usize) -> String {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return String::new();
    };
    let mut words = 0;
    tokens
        .into_iter()
        .skip_while(|t| {
            if words == n {
                return false;
            }
            if !matches!(t, Token::Whitespace(_)) {
                words += 1;
            }
            true
        })
        .map(|t| t.to_string())
        .collect()
}

/// Parses one statement text (as produced by [`split_statements`]).
pub fn parse_statement(sql: &str, compat: &PostgresCompatibilityParser) -> Result<Statement> {
    let words = leading_words(sql);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["CREATE", "TOPIC", ..]
        | ["ALTER", "TOPIC", ..]
        | ["DROP", "TOPIC", ..]
        | ["SHOW", "TOPICS", ..]
        | ["SHOW", "CLUSTER", ..]
        | ["ALTER", "CLUSTER", ..]
        | ["SUBSCRIBE", ..]
        | ["COPY", "(", "SUBSCRIBE"]
        | ["CREATE", "SUBSCRIPTION", ..]
        | ["DROP", "SUBSCRIPTION", ..]
        | ["SHOW", "SUBSCRIPTIONS", ..]
        | ["DECLARE", ..]
        | ["FETCH", ..]
        | ["CLOSE", ..]
        | ["LISTEN", ..]
        | ["UNLISTEN", ..]
        | ["ACK", ..]
        | ["NACK", ..] => parse_eddy(sql).map_err(syntax),
        ["EXPLAIN", "ROUTE", ..] => {
            let inner = after_words(sql, 2);
            if inner.trim().is_empty() {
                return Err(Error::Syntax("EXPLAIN ROUTE needs a statement".into()));
            }
            match parse_statement(&inner, compat)? {
                Statement::ExplainRoute(_) => {
                    Err(Error::Syntax("EXPLAIN ROUTE of EXPLAIN ROUTE".into()))
                }
                inner => Ok(Statement::ExplainRoute(Box::new(inner))),
            }
        }
        _ => {
            let mut stmts = compat.parse(sql).map_err(syntax)?;
            match stmts.len() {
                1 => Ok(Statement::Sql(Box::new(stmts.remove(0)))),
                0 => Err(Error::Syntax("empty statement".into())),
                _ => Err(Error::Syntax("expected one statement".into())),
            }
        }
    }
}

/// Splits and parses a whole query string.
pub fn parse_sql(sql: &str, compat: &PostgresCompatibilityParser) -> Result<Vec<Statement>> {
    split_statements(sql)?
        .iter()
        .map(|s| parse_statement(s, compat))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Result<Vec<Statement>> {
        parse_sql(sql, &PostgresCompatibilityParser::new())
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let parts = split_statements("SELECT ';'; -- c;\n SELECT $$a;b$$ ;;  ").unwrap();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].trim(), "SELECT ';'");
        assert!(parts[1].contains("$$a;b$$"));
        assert!(split_statements(" ; ; ").unwrap().is_empty());
        assert_eq!(
            split_statements("SELECT 'ü;'; SELECT 2").unwrap()[0],
            "SELECT 'ü;'"
        );
    }

    #[test]
    fn eddy_statements() -> Result<()> {
        let s = parse("create topic readings (sensor text, temp double precision) with (partitions = 4, retention = '7 days')").unwrap();
        let Statement::CreateTopic {
            name,
            columns,
            options,
            if_not_exists,
        } = &s[0]
        else {
            panic!("{s:?}")
        };
        assert_eq!(name.to_string(), "readings");
        assert_eq!(columns.len(), 2);
        assert_eq!(options.len(), 2);
        assert!(!if_not_exists);
        assert!(
            matches!(&parse("CREATE TOPIC events")?[0], Statement::CreateTopic { columns, .. } if columns.is_empty())
        );
        assert!(matches!(
            &parse("ALTER TOPIC t SET (retention = '1 day')")?[0],
            Statement::AlterTopic { .. }
        ));
        assert!(matches!(
            &parse("DROP TOPIC IF EXISTS t")?[0],
            Statement::DropTopic {
                if_exists: true,
                ..
            }
        ));
        assert_eq!(parse("SHOW TOPICS")?, vec![Statement::ShowTopics]);
        assert_eq!(parse("show cluster")?, vec![Statement::ShowCluster]);
        assert!(matches!(parse("SHOW CLUSTER nodes"), Err(Error::Syntax(_))));
        assert_eq!(
            parse("alter cluster add node '127.0.0.1:7436'")?,
            vec![Statement::AddNode("127.0.0.1:7436".into())]
        );
        assert_eq!(
            parse("ALTER CLUSTER REMOVE NODE 3")?,
            vec![Statement::RemoveNode(3)]
        );
        assert_eq!(
            parse("alter cluster drain node 2; ALTER CLUSTER RESUME NODE 2")?,
            vec![
                Statement::DrainNode {
                    node: 2,
                    drain: true
                },
                Statement::DrainNode {
                    node: 2,
                    drain: false
                }
            ]
        );
        assert_eq!(
            parse("EXPLAIN ROUTE /* where */ SELECT 'a b'  FROM t")?,
            vec![Statement::ExplainRoute(Box::new(
                parse("SELECT 'a b'  FROM t")?.remove(0)
            ))]
        );
        assert_eq!(
            parse("explain route show topics")?,
            vec![Statement::ExplainRoute(Box::new(Statement::ShowTopics))]
        );
        for bad in [
            "EXPLAIN ROUTE",
            "EXPLAIN ROUTE EXPLAIN ROUTE SELECT 1",
            "EXPLAIN ROUTE SELEC 1",
        ] {
            assert!(matches!(parse(bad), Err(Error::Syntax(_))), "{bad}");
        }
        for bad in [
            "ALTER CLUSTER ADD NODE 4",
            "ALTER CLUSTER REMOVE NODE '3'",
            "ALTER CLUSTER REMOVE 3",
            "ALTER CLUSTER DROP NODE 3",
            "ALTER CLUSTER ADD NODE 'a' 'b'",
        ] {
            assert!(matches!(parse(bad), Err(Error::Syntax(_))), "{bad}");
        }
        assert!(matches!(parse("CREATE TOPIC"), Err(Error::Syntax(_))));
        assert!(matches!(parse("SHOW TOPICS extra"), Err(Error::Syntax(_))));
        assert!(matches!(&parse("SELECT 1")?[0], Statement::Sql(_)));
        use crate::spec::StartPosition;
        let s = parse("SUBSCRIBE readings WHERE temp > 30 FROM OFFSET 5")?;
        let Statement::Subscribe(spec) = &s[0] else {
            panic!("{s:?}")
        };
        assert_eq!(spec.from, StartPosition::Offset(5));
        assert_eq!(
            spec.filter.as_ref().map(|f| f.to_string()).as_deref(),
            Some("temp > 30")
        );
        let s = parse("subscribe r from beginning")?;
        assert!(
            matches!(&s[0], Statement::Subscribe(spec) if spec.from == StartPosition::Beginning && spec.filter.is_none())
        );
        let s = parse("SUBSCRIBE r FROM TIMESTAMP '1970-01-01 00:00:01'")?;
        assert!(
            matches!(&s[0], Statement::Subscribe(spec) if spec.from == StartPosition::Timestamp(1_000_000))
        );
        assert!(
            matches!(&parse("SUBSCRIBE r")?[0], Statement::Subscribe(spec) if spec.from == StartPosition::Now)
        );
        assert!(matches!(
            parse("SUBSCRIBE r FROM YESTERDAY"),
            Err(Error::Syntax(_))
        ));
        let s = parse(
            "COPY (SUBSCRIBE r WHERE x = 1 FROM BEGINNING) TO STDOUT WITH (FORMAT csv, HEADER)",
        )?;
        let Statement::CopySubscribe { spec, options } = &s[0] else {
            panic!("{s:?}")
        };
        assert_eq!(spec.from, StartPosition::Beginning);
        assert_eq!(options.len(), 2);
        assert!(
            matches!(&parse("copy (subscribe r) to stdout")?[0], Statement::CopySubscribe { options, .. } if options.is_empty())
        );
        assert!(matches!(
            &parse("COPY (SELECT 1) TO STDOUT")?[0],
            Statement::Sql(_)
        ));
        assert!(matches!(parse("SELEC 1"), Err(Error::Syntax(_))));
        Ok(())
    }

    #[test]
    fn subscription_statements() -> Result<()> {
        use std::time::Duration;
        let s = parse("DECLARE \"C1\" NO SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE t FROM OFFSETS ((0, 5), (2, 7))")?;
        let Statement::DeclareCursor {
            name,
            source: CursorSource::Subscribe(spec),
        } = &s[0]
        else {
            panic!("{s:?}")
        };
        assert_eq!(name, "C1");
        assert_eq!(
            spec.from,
            crate::spec::StartPosition::Offsets(vec![(0, 5), (2, 7)])
        );
        assert!(matches!(
            &parse("declare c cursor for select 1")?[0],
            Statement::DeclareCursor {
                source: CursorSource::Query(_),
                ..
            }
        ));
        let fetch = |sql: &str| parse(sql).map(|mut v| v.remove(0));
        assert_eq!(
            fetch("FETCH 10 c WITH (timeout = '1s')")?,
            Statement::Fetch {
                cursor: "c".into(),
                count: Some(10),
                timeout: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            fetch("FETCH NEXT FROM c")?,
            Statement::Fetch {
                cursor: "c".into(),
                count: Some(1),
                timeout: None
            }
        );
        assert_eq!(
            fetch("fetch forward all in c")?,
            Statement::Fetch {
                cursor: "c".into(),
                count: None,
                timeout: None
            }
        );
        assert!(
            matches!(fetch("FETCH 5 FROM SUBSCRIPTION s WITH (timeout = '250ms')")?,
            Statement::FetchSubscription { count: 5, timeout: Some(t), .. } if t == Duration::from_millis(250))
        );
        assert!(matches!(
            fetch("FETCH 5 c WITH (timeout = 'soon')"),
            Err(Error::Syntax(_))
        ));
        assert!(matches!(
            fetch("FETCH ALL FROM SUBSCRIPTION s"),
            Err(Error::Syntax(_))
        ));
        assert_eq!(fetch("CLOSE ALL")?, Statement::Close { cursor: None });
        assert!(
            matches!(fetch("ACK SUBSCRIPTION s (0, 41), (1, 17)")?, Statement::Ack { positions, nack: false, .. } if positions == vec![(0, 41), (1, 17)])
        );
        assert!(
            matches!(fetch("NACK SUBSCRIPTION s ((3, 4))")?, Statement::Ack { positions, nack: true, .. } if positions == vec![(3, 4)])
        );
        assert!(matches!(
            fetch("ACK SUBSCRIPTION s (0, -1)"),
            Err(Error::Syntax(_))
        ));
        assert!(
            matches!(fetch("CREATE SUBSCRIPTION IF NOT EXISTS s ON t WHERE n > 1 FROM BEGINNING WITH (ack_wait = '5s')")?,
            Statement::CreateSubscription { if_not_exists: true, spec, .. } if spec.options.len() == 1 && spec.filter.is_some())
        );
        assert!(matches!(
            fetch("DROP SUBSCRIPTION IF EXISTS s")?,
            Statement::DropSubscription {
                if_exists: true,
                ..
            }
        ));
        assert_eq!(fetch("SHOW SUBSCRIPTIONS")?, Statement::ShowSubscriptions);
        assert!(matches!(fetch("LISTEN t")?, Statement::Listen(_)));
        assert_eq!(fetch("UNLISTEN *")?, Statement::Unlisten(None));
        // CREATE TABLE and DROP TABLE still go to the PostgreSQL parser.
        assert!(matches!(
            fetch("CREATE TABLE x (id INT PRIMARY KEY)")?,
            Statement::Sql(_)
        ));
        Ok(())
    }
}
