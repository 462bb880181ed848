//! What a statement touches, decided once, when it is parsed: the objects whose rows it
//! reads, whether it writes and whether that write is blind, what it does to the session,
//! and whether it may be run again elsewhere. Routing, the relay and its retries,
//! pipelined writes, strong reads and the block's write count all read this one value
//! ([`Parsed::description`]), so a new statement kind is described here and nowhere else.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_relations, ObjectName, OnConflictAction, OnInsert, SetExpr, Statement as SqlStatement,
};

use crate::dialect::{CursorSource, Statement};
use crate::ident::object_name;

/// A parsed statement and its [`Description`].
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The statement.
    pub statement: Statement,
    /// What running it touches.
    pub description: Description,
}

impl Parsed {
    /// Describes `statement`.
    pub fn new(statement: Statement) -> Self {
        let description = Description::of(&statement);
        Parsed {
            statement,
            description,
        }
    }
}

/// What running a statement touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The topics, tables and subscriptions whose rows it reads, by name, as written in
    /// the statement (a subscription stands for its topic). Empty for a blind write,
    /// `COPY FROM`, DDL and settings.
    pub reads: Vec<String>,
    /// What it changes.
    pub writes: Writes,
    /// What it does to the session.
    pub session: SessionChange,
}

/// What a statement changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Nothing stored.
    Nothing,
    /// Rows of topics or tables, reading none first (`INSERT .. VALUES` without
    /// `ON CONFLICT DO UPDATE`, `COPY FROM`): a blind write.
    Blind,
    /// Rows, after reading some (`UPDATE`, `DELETE`, upserts, `INSERT .. SELECT`), or a
    /// durable subscription's positions (`ACK`, `NACK`).
    Rows,
    /// The catalog or the cluster (DDL, `ALTER CLUSTER`).
    Catalog,
}

/// What a statement does to the session running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Nothing.
    None,
    /// A setting (`SET`, `RESET`, `SET TRANSACTION`, `DISCARD`).
    Settings,
    /// `BEGIN` / `START TRANSACTION`: a block opens.
    Begin,
    /// `COMMIT` / `ROLLBACK`: the block ends.
    End,
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
    /// `DECLARE cursor`: the session holds the cursor until it is closed.
    Declare(String),
    /// `FETCH .. FROM cursor`: reads a cursor the session holds.
    Fetch(String),
    /// `CLOSE cursor` (`None` = `CLOSE ALL`).
    Close(Option<String>),
    /// A COPY or a streamed subscription: the connection is given over to it until it
    /// ends.
    Stream,
}

impl Description {
    /// Describes `statement`.
    pub fn of(statement: &Statement) -> Self {
        let mut reads = Vec::new();
        let mut writes = Writes::Nothing;
        let mut session = SessionChange::None;
        match statement {
            Statement::Sql(s) => {
                let mut named = Vec::new();
                if reads_rows(s) {
                    add_relations(s, &mut named);
                }
                (writes, session) = describe_sql(s, named.len());
                if writes != Writes::Blind {
                    reads = named;
                }
            }
            Statement::Subscribe(spec) => add(&spec.topic, &mut reads),
            Statement::CopySubscribe { spec, .. } => {
                add(&spec.topic, &mut reads);
                session = SessionChange::Stream;
            }
            Statement::DeclareCursor { name, source } => {
                match source {
                    CursorSource::Subscribe(spec) => add(&spec.topic, &mut reads),
                    CursorSource::Query(q) => add_relations(q, &mut reads),
                }
                session = SessionChange::Declare(name.clone());
            }
            Statement::Fetch { cursor, .. } => session = SessionChange::Fetch(cursor.clone()),
            Statement::Close { cursor } => session = SessionChange::Close(cursor.clone()),
            Statement::Listen(name) => {
                add(name, &mut reads);
                if let Ok(channel) = object_name(name) {
                    session = SessionChange::Listen(channel);
                }
            }
            Statement::Unlisten(name) => {
                session = match name.as_ref().map(object_name) {
                    None => SessionChange::UnlistenAll,
                    Some(Ok(channel)) => SessionChange::Unlisten(channel),
                    Some(Err(_)) => SessionChange::None,
                }
            }
            Statement::FetchSubscription { name, .. } => add(name, &mut reads),
            Statement::Ack { name, .. } => {
                add(name, &mut reads);
                writes = Writes::Rows;
            }
            Statement::CreateTopic { .. }
            | Statement::AlterTopic { .. }
            | Statement::DropTopic { .. }
            | Statement::CreateSubscription { .. }
            | Statement::DropSubscription { .. }
            | Statement::AddNode(_)
            | Statement::RemoveNode(_)
            | Statement::DrainNode { .. } => writes = Writes::Catalog,
            // Answered where it is asked: it runs nothing.
            Statement::ExplainRoute(_) => {}
            Statement::ShowTopics | Statement::ShowCluster | Statement::ShowSubscriptions => {}
        }
        Description {
            reads,
            writes,
            session,
        }
    }

    /// True when running the statement only writes rows, reading none first: it needs no
    /// session, so a connection may run the statements after it before its write is
    /// acknowledged (pipelining), and it runs on the node that received it.
    pub fn is_blind_write(&self) -> bool {
        // COPY FROM writes blind too, but holds the connection until its data ends.
        self.writes == Writes::Blind && self.session == SessionChange::None
    }

    /// True when the statement changes nothing stored (it may still open a cursor or a
    /// LISTEN): a try whose outcome is unknown (its node went away) may be run again on
    /// another node.
    pub fn may_retry(&self) -> bool {
        self.writes == Writes::Nothing
            && !matches!(
                self.session,
                SessionChange::Fetch(_) | SessionChange::Close(_)
            )
    }

    /// True when the statement ties later statements of the session to the node that ran
    /// it: a cursor, a LISTEN, a COPY or subscription stream, an open block.
    pub fn pins_session(&self) -> bool {
        matches!(
            self.session,
            SessionChange::Declare(_)
                | SessionChange::Listen(_)
                | SessionChange::Stream
                | SessionChange::Begin
        )
    }
}

/// What a PostgreSQL-shaped statement writes and does to the session; `relations` is
/// how many distinct relations it names.
fn describe_sql(s: &SqlStatement, relations: usize) -> (Writes, SessionChange) {
    use SessionChange as S;
    match s {
        SqlStatement::Query(_) | SqlStatement::ShowVariable { .. } => (Writes::Nothing, S::None),
        SqlStatement::Insert(insert) => {
            let values = insert
                .source
                .as_ref()
                .is_some_and(|q| matches!(*q.body, SetExpr::Values(_)));
            let upsert = matches!(
                &insert.on,
                Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoUpdate(_))
            );
            // The target is named once; a subquery in VALUES reads another relation.
            let blind = values && !upsert && relations <= 1;
            (if blind { Writes::Blind } else { Writes::Rows }, S::None)
        }
        SqlStatement::Update(_) | SqlStatement::Delete(_) => (Writes::Rows, S::None),
        SqlStatement::Copy { to: true, .. } => (Writes::Nothing, S::Stream),
        SqlStatement::Copy { to: false, .. } => (Writes::Blind, S::Stream),
        SqlStatement::StartTransaction { .. } => (Writes::Nothing, S::Begin),
        SqlStatement::Commit { .. } | SqlStatement::Rollback { .. } => (Writes::Nothing, S::End),
        SqlStatement::Set(_) | SqlStatement::Discard { .. } => (Writes::Nothing, S::Settings),
        SqlStatement::CreateTable(_)
        | SqlStatement::Drop { .. }
        | SqlStatement::AlterTable(_)
        | SqlStatement::CreateIndex(_)
        | SqlStatement::CreateView(_)
        | SqlStatement::Truncate(_) => (Writes::Catalog, S::None),
        // Anything else eddy runs (SHOW, EXPLAIN, ...) writes nothing.
        _ => (Writes::Nothing, S::None),
    }
}

/// True for the SQL statements whose result depends on stored rows.
fn reads_rows(s: &SqlStatement) -> bool {
    matches!(
        s,
        SqlStatement::Query(_)
            | SqlStatement::Update(_)
            | SqlStatement::Delete(_)
            | SqlStatement::Insert(_)
            | SqlStatement::Copy { to: true, .. }
    )
}

/// Adds the name of every relation `s` mentions to `reads`.
fn add_relations(s: &SqlStatement, reads: &mut Vec<String>) {
    let _ = visit_relations(s, |name: &ObjectName| {
        add(name, reads);
        ControlFlow::<()>::Continue(())
    });
}

fn add(name: &ObjectName, reads: &mut Vec<String>) {
    if let Ok(n) = object_name(name) {
        if !reads.contains(&n) {
            reads.push(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(sql: &str) -> Description {
        let compat = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        let mut stmts = crate::dialect::parse_sql(sql, &compat).unwrap();
        assert_eq!(stmts.len(), 1, "{sql}");
        Description::of(&stmts.remove(0))
    }

    #[test]
    fn reads_and_writes_of_each_kind() {
        let d = describe("SELECT * FROM a JOIN b USING (k) WHERE k IN (SELECT k FROM c)");
        assert_eq!(d.reads, ["a", "b", "c"]);
        assert_eq!(d.writes, Writes::Nothing);
        assert!(d.may_retry() && !d.pins_session());

        let d = describe("INSERT INTO t (k, v) VALUES (1, 'x'), (2, 'y')");
        assert!(d.is_blind_write() && d.reads.is_empty() && !d.may_retry());

        let d = describe("INSERT INTO t VALUES (1) ON CONFLICT (k) DO NOTHING");
        assert!(d.is_blind_write());

        let d = describe("INSERT INTO t VALUES (1, 1) ON CONFLICT (k) DO UPDATE SET n = t.n + 1");
        assert_eq!(
            (d.writes, d.reads.as_slice()),
            (Writes::Rows, &["t".to_owned()][..])
        );

        let d = describe("INSERT INTO t VALUES ((SELECT max(k) FROM u))");
        assert_eq!(d.writes, Writes::Rows);
        assert_eq!(d.reads, ["t", "u"]);

        let d = describe("INSERT INTO t SELECT * FROM u");
        assert_eq!((d.writes, d.reads.len()), (Writes::Rows, 2));

        let d = describe("UPDATE \"T\" SET n = n + 1 WHERE k = 1");
        assert_eq!(
            (d.writes, d.reads.as_slice()),
            (Writes::Rows, &["T".to_owned()][..])
        );

        let d = describe("COPY t FROM STDIN");
        assert!(!d.is_blind_write() && d.reads.is_empty());
        assert_eq!(d.writes, Writes::Blind);
        assert_eq!(d.session, SessionChange::Stream);

        let d = describe("CREATE TOPIC x");
        assert_eq!(d.writes, Writes::Catalog);
        assert!(!d.may_retry());
    }

    #[test]
    fn session_changes() {
        let d = describe("DECLARE c CURSOR FOR SELECT * FROM t");
        assert_eq!(d.session, SessionChange::Declare("c".into()));
        assert_eq!(d.reads, ["t"]);
        assert!(d.may_retry() && d.pins_session());

        let d = describe("FETCH 10 FROM c");
        assert_eq!(d.session, SessionChange::Fetch("c".into()));
        assert!(!d.may_retry());

        assert_eq!(describe("CLOSE ALL").session, SessionChange::Close(None));
        assert_eq!(
            describe("LISTEN t").session,
            SessionChange::Listen("t".into())
        );
        assert_eq!(describe("LISTEN t").reads, ["t"]);
        assert_eq!(
            describe("UNLISTEN t").session,
            SessionChange::Unlisten("t".into())
        );
        assert_eq!(describe("UNLISTEN *").session, SessionChange::UnlistenAll);
        assert_eq!(describe("BEGIN").session, SessionChange::Begin);
        assert_eq!(describe("ROLLBACK").session, SessionChange::End);
        assert_eq!(
            describe("SET consistency = 'local'").session,
            SessionChange::Settings
        );

        let d = describe("ACK SUBSCRIPTION s (0, 5)");
        assert_eq!(
            (d.writes, d.reads.as_slice()),
            (Writes::Rows, &["s".to_owned()][..])
        );
        let d = describe("COPY (SUBSCRIBE t) TO STDOUT");
        assert!(d.pins_session() && d.may_retry());
    }
}
