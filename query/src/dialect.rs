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

fn expect_word(p: &mut Parser<'_>, word: &str) -> Result<(), ParserError> {
    let t = p.next_token();
    match &t.token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(word) => Ok(()),
        other => Err(ParserError::ParserError(format!(
            "expected {word}, found: {other}"
        ))),
    }
}

fn parse_eddy(sql: &str) -> Result<Statement, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql)?;
    let stmt = if let Some(stmt) = parse_subscription_statement(&mut p)? {
        stmt
    } else if p.parse_keyword(Keyword::CREATE) {
        expect_word(&mut p, "TOPIC")?;
        let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.parse_object_name(false)?;
        let columns = if p.consume_token(&Token::LParen) {
            let cols = p.parse_comma_separated(Parser::parse_column_def)?;
            p.expect_token(&Token::RParen)?;
            cols
        } else {
            vec![]
        };
        let options = if p.parse_keyword(Keyword::WITH) {
            parse_option_list(&mut p)?
        } else {
            vec![]
        };
        Statement::CreateTopic {
            name,
            columns,
            options,
            if_not_exists,
        }
    } else if p.parse_keyword(Keyword::ALTER) {
        if parse_word(&mut p, "CLUSTER") {
            if parse_word(&mut p, "ADD") {
                expect_word(&mut p, "NODE")?;
                Statement::AddNode(p.parse_literal_string()?)
            } else {
                expect_word(&mut p, "REMOVE")?;
                expect_word(&mut p, "NODE")?;
                Statement::RemoveNode(parse_u64(&mut p, "node id")?)
            }
        } else {
            expect_word(&mut p, "TOPIC")?;
            let name = p.parse_object_name(false)?;
            p.expect_keyword(Keyword::SET)?;
            Statement::AlterTopic {
                name,
                options: parse_option_list(&mut p)?,
            }
        }
    } else if p.parse_keyword(Keyword::DROP) {
        expect_word(&mut p, "TOPIC")?;
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        Statement::DropTopic {
            name: p.parse_object_name(false)?,
            if_exists,
        }
    } else if p.parse_keyword(Keyword::COPY) {
        p.expect_token(&Token::LParen)?;
        expect_word(&mut p, "SUBSCRIBE")?;
        let spec = parse_subscribe(&mut p)?;
        p.expect_token(&Token::RParen)?;
        p.expect_keyword(Keyword::TO)?;
        expect_word(&mut p, "STDOUT")?;
        let options = parse_copy_options(&mut p)?;
        Statement::CopySubscribe { spec, options }
    } else if p.parse_keyword(Keyword::SHOW) {
        if parse_word(&mut p, "CLUSTER") {
            Statement::ShowCluster
        } else {
            expect_word(&mut p, "TOPICS")?;
            Statement::ShowTopics
        }
    } else {
        expect_word(&mut p, "SUBSCRIBE")?;
        Statement::Subscribe(parse_subscribe(&mut p)?)
    };
    match p.peek_token().token {
        Token::EOF => Ok(stmt),
        other => Err(ParserError::ParserError(format!(
            "unexpected {other} at the end of the statement"
        ))),
    }
}

fn next_is_word(p: &Parser<'_>, word: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    let yes = next_is_word(p, word);
    if yes {
        p.next_token();
    }
    yes
}

fn parse_u64(p: &mut Parser<'_>, what: &str) -> Result<u64, ParserError> {
    match p.next_token().token {
        Token::Number(n, _) => n
            .parse()
            .map_err(|_| ParserError::ParserError(format!("bad {what} {n}"))),
        other => Err(ParserError::ParserError(format!(
            "expected {what}, found: {other}"
        ))),
    }
}

/// `(p, o), (p, o)` (with or without an outer pair of parentheses).
fn parse_positions(p: &mut Parser<'_>) -> Result<Vec<(u32, u64)>, ParserError> {
    p.parse_comma_separated(|p| {
        p.expect_token(&Token::LParen)?;
        let part = parse_u64(p, "a partition")?;
        p.expect_token(&Token::Comma)?;
        let offset = parse_u64(p, "an offset")?;
        p.expect_token(&Token::RParen)?;
        let part = u32::try_from(part)
            .map_err(|_| ParserError::ParserError(format!("bad partition {part}")))?;
        Ok((part, offset))
    })
}

/// `[WITH (timeout = '1s')]` of FETCH.
fn parse_fetch_timeout(p: &mut Parser<'_>) -> Result<Option<std::time::Duration>, ParserError> {
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(None);
    }
    let mut timeout = None;
    for opt in parse_option_list(p)? {
        let SqlOption::KeyValue { key, value } = opt else {
            continue;
        };
        if !key.value.eq_ignore_ascii_case("timeout") {
            return Err(ParserError::ParserError(format!(
                "FETCH option \"{}\" not recognized",
                key.value
            )));
        }
        let text = crate::ident::option_value(&value);
        let ms = crate::types::parse_duration_ms(&text).map_err(|_| {
            ParserError::ParserError(format!("invalid timeout '{text}' (try '1s', '500ms')"))
        })?;
        timeout = Some(std::time::Duration::from_millis(ms));
    }
    Ok(timeout)
}

/// The cursor, subscription, LISTEN and ACK statements; `None` if `p` holds another one.
fn parse_subscription_statement(p: &mut Parser<'_>) -> Result<Option<Statement>, ParserError> {
    let ident = |p: &mut Parser<'_>| {
        p.parse_identifier()
            .map(|i| crate::ident::normalize_ident(&i))
    };
    let stmt = if parse_word(p, "DECLARE") {
        let name = ident(p)?;
        // PostgreSQL's cursor options; eddy's cursors are all forward-only and need no transaction.
        while parse_word(p, "BINARY")
            || parse_word(p, "INSENSITIVE")
            || parse_word(p, "SCROLL")
            || parse_word(p, "ASENSITIVE")
        {}
        if parse_word(p, "NO") {
            expect_word(p, "SCROLL")?;
        }
        expect_word(p, "CURSOR")?;
        if p.parse_keyword(Keyword::WITH) || p.parse_keyword(Keyword::WITHOUT) {
            expect_word(p, "HOLD")?;
        }
        p.expect_keyword(Keyword::FOR)?;
        let source = if parse_word(p, "SUBSCRIBE") {
            CursorSource::Subscribe(Box::new(parse_subscribe(p)?))
        } else {
            CursorSource::Query(Box::new(SqlStatement::Query(p.parse_query()?)))
        };
        Statement::DeclareCursor { name, source }
    } else if parse_word(p, "FETCH") {
        // FETCH [FORWARD | NEXT] [n | ALL] [FROM | IN] name | FETCH n FROM SUBSCRIPTION s
        let mut count = Some(1);
        if parse_word(p, "NEXT") {
        } else {
            parse_word(p, "FORWARD");
            if p.parse_keyword(Keyword::ALL) {
                count = None;
            } else if matches!(p.peek_token().token, Token::Number(..)) {
                count = Some(parse_u64(p, "a row count")?);
            }
        }
        let _ = p.parse_keyword(Keyword::FROM) || p.parse_keyword(Keyword::IN);
        if parse_word(p, "SUBSCRIPTION") {
            let name = p.parse_object_name(false)?;
            let count = count.ok_or_else(|| {
                ParserError::ParserError("FETCH ALL FROM SUBSCRIPTION: give a row count".into())
            })?;
            Statement::FetchSubscription {
                name,
                count,
                timeout: parse_fetch_timeout(p)?,
            }
        } else {
            let cursor = ident(p)?;
            Statement::Fetch {
                cursor,
                count,
                timeout: parse_fetch_timeout(p)?,
            }
        }
    } else if parse_word(p, "CLOSE") {
        let cursor = if p.parse_keyword(Keyword::ALL) {
            None
        } else {
            Some(ident(p)?)
        };
        Statement::Close { cursor }
    } else if parse_word(p, "LISTEN") {
        Statement::Listen(p.parse_object_name(false)?)
    } else if parse_word(p, "UNLISTEN") {
        if p.consume_token(&Token::Mul) {
            Statement::Unlisten(None)
        } else {
            Statement::Unlisten(Some(p.parse_object_name(false)?))
        }
    } else if next_is_word(p, "ACK") || next_is_word(p, "NACK") {
        let nack = parse_word(p, "NACK");
        if !nack {
            p.next_token();
        }
        expect_word(p, "SUBSCRIPTION")?;
        let name = p.parse_object_name(false)?;
        let positions =
            if p.consume_token(&Token::LParen) && matches!(p.peek_token().token, Token::LParen) {
                // ACK SUBSCRIPTION s ((0, 1), (1, 2))
                let v = parse_positions(p)?;
                p.expect_token(&Token::RParen)?;
                v
            } else {
                // ACK SUBSCRIPTION s (0, 1), (1, 2): the first "(" is already consumed.
                let part = parse_u64(p, "a partition")?;
                p.expect_token(&Token::Comma)?;
                let offset = parse_u64(p, "an offset")?;
                p.expect_token(&Token::RParen)?;
                let part = u32::try_from(part)
                    .map_err(|_| ParserError::ParserError(format!("bad partition {part}")))?;
                let mut v = vec![(part, offset)];
                if p.consume_token(&Token::Comma) {
                    v.extend(parse_positions(p)?);
                }
                v
            };
        Statement::Ack {
            name,
            positions,
            nack,
        }
    } else if next_is_word(p, "CREATE")
        && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("SUBSCRIPTION"))
    {
        p.next_token();
        p.next_token();
        let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.parse_object_name(false)?;
        p.expect_keyword(Keyword::ON)?;
        Statement::CreateSubscription {
            name,
            spec: parse_subscribe(p)?,
            if_not_exists,
        }
    } else if next_is_word(p, "DROP")
        && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("SUBSCRIPTION"))
    {
        p.next_token();
        p.next_token();
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        Statement::DropSubscription {
            name: p.parse_object_name(false)?,
            if_exists,
        }
    } else if next_is_word(p, "SHOW")
        && matches!(&p.peek_nth_token(1).token, Token::Word(w) if w.value.eq_ignore_ascii_case("SUBSCRIPTIONS"))
    {
        p.next_token();
        p.next_token();
        Statement::ShowSubscriptions
    } else {
        return Ok(None);
    };
    Ok(Some(stmt))
}

/// `topic [WHERE expr] [FROM BEGINNING | NOW | OFFSET n | OFFSETS ((p, o), ...) | TIMESTAMP '...']
/// [WITH (option = value, ...)]` (after SUBSCRIBE).
fn parse_subscribe(p: &mut Parser<'_>) -> Result<crate::spec::SubscribeSpec, ParserError> {
    use crate::spec::{StartPosition, SubscribeSpec};
    let topic = p.parse_object_name(false)?;
    let filter = if p.parse_keyword(Keyword::WHERE) {
        Some(p.parse_expr()?)
    } else {
        None
    };
    let from = if p.parse_keyword(Keyword::FROM) {
        let t = p.next_token();
        match &t.token {
            Token::Word(w) if w.value.eq_ignore_ascii_case("beginning") => StartPosition::Beginning,
            Token::Word(w) if w.value.eq_ignore_ascii_case("now") => StartPosition::Now,
            Token::Word(w) if w.value.eq_ignore_ascii_case("offsets") => {
                p.expect_token(&Token::LParen)?;
                let v = parse_positions(p)?;
                p.expect_token(&Token::RParen)?;
                StartPosition::Offsets(v)
            }
            Token::Word(w) if w.value.eq_ignore_ascii_case("offset") => {
                match p.next_token().token {
                    Token::Number(n, _) => StartPosition::Offset(
                        n.parse()
                            .map_err(|_| ParserError::ParserError(format!("bad offset {n}")))?,
                    ),
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "expected an offset, found: {other}"
                        )))
                    }
                }
            }
            Token::Word(w) if w.value.eq_ignore_ascii_case("timestamp") => {
                match p.next_token().token {
                    Token::SingleQuotedString(s) => {
                        StartPosition::Timestamp(crate::types::parse_timestamp(&s).ok_or_else(
                            || ParserError::ParserError(format!("bad timestamp '{s}'")),
                        )?)
                    }
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "expected a timestamp, found: {other}"
                        )))
                    }
                }
            }
            other => {
                return Err(ParserError::ParserError(format!(
                    "expected BEGINNING, NOW, OFFSET or TIMESTAMP after FROM, found: {other}"
                )))
            }
        }
    } else {
        StartPosition::Now
    };
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_option_list(p)?
    } else {
        vec![]
    };
    Ok(SubscribeSpec {
        topic,
        filter,
        from,
        options,
    })
}

/// `[WITH] (FORMAT x, HEADER [bool], DELIMITER 'c', NULL 's')` of a COPY ... TO STDOUT.
fn parse_copy_options(
    p: &mut Parser<'_>,
) -> Result<Vec<datafusion::sql::sqlparser::ast::CopyOption>, ParserError> {
    use datafusion::sql::sqlparser::ast::CopyOption;
    let with = p.parse_keyword(Keyword::WITH);
    if !p.consume_token(&Token::LParen) {
        return if with {
            Err(ParserError::ParserError("expected ( after WITH".into()))
        } else {
            Ok(vec![])
        };
    }
    let single_char = |p: &mut Parser<'_>, what: &str| -> Result<char, ParserError> {
        match p.next_token().token {
            Token::SingleQuotedString(s) if s.chars().count() == 1 => {
                Ok(s.chars().next().unwrap_or(','))
            }
            other => Err(ParserError::ParserError(format!(
                "{what} must be a single character, found: {other}"
            ))),
        }
    };
    let opts = p.parse_comma_separated(|p| {
        let t = p.next_token();
        let Token::Word(w) = &t.token else {
            return Err(ParserError::ParserError(format!("unexpected {t}")));
        };
        Ok(match w.value.to_ascii_lowercase().as_str() {
            "format" => CopyOption::Format(p.parse_identifier()?),
            "header" => {
                let on = !p.parse_keyword(Keyword::FALSE);
                let _explicit_true = p.parse_keyword(Keyword::TRUE);
                CopyOption::Header(on)
            }
            "delimiter" => CopyOption::Delimiter(single_char(p, "DELIMITER")?),
            "quote" => CopyOption::Quote(single_char(p, "QUOTE")?),
            "null" => match p.next_token().token {
                Token::SingleQuotedString(s) => CopyOption::Null(s),
                other => {
                    return Err(ParserError::ParserError(format!(
                        "NULL needs a string, found: {other}"
                    )))
                }
            },
            other => {
                return Err(ParserError::ParserError(format!(
                    "COPY option \"{other}\" not recognized"
                )))
            }
        })
    })?;
    p.expect_token(&Token::RParen)?;
    Ok(opts)
}

/// `( key = value, ... )`
fn parse_option_list(p: &mut Parser<'_>) -> Result<Vec<SqlOption>, ParserError> {
    p.expect_token(&Token::LParen)?;
    let opts = p.parse_comma_separated(|p| {
        let key = p.parse_identifier()?;
        p.expect_token(&Token::Eq)?;
        let value: Expr = p.parse_expr()?;
        Ok(SqlOption::KeyValue { key, value })
    })?;
    p.expect_token(&Token::RParen)?;
    Ok(opts)
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
