//! eddy's own statements (topics, subscriptions, cursors, FETCH/ACK, cluster changes),
//! parsed with sqlparser's `Parser` over the same tokens as PostgreSQL's statements.

use super::*;

fn expect_word(p: &mut Parser<'_>, word: &str) -> Result<(), ParserError> {
    let t = p.next_token();
    match &t.token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(word) => Ok(()),
        other => Err(ParserError::ParserError(format!(
            "expected {word}, found: {other}"
        ))),
    }
}

pub(super) fn parse_eddy(sql: &str) -> Result<Statement, ParserError> {
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
            } else if parse_word(&mut p, "DRAIN") {
                expect_word(&mut p, "NODE")?;
                Statement::DrainNode {
                    node: parse_u64(&mut p, "node id")?,
                    drain: true,
                }
            } else if parse_word(&mut p, "RESUME") {
                expect_word(&mut p, "NODE")?;
                Statement::DrainNode {
                    node: parse_u64(&mut p, "node id")?,
                    drain: false,
                }
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
