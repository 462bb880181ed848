//! COPY as a statement: `COPY ... TO STDOUT` runs a query whose rows the wire layer writes
//! as lines; `COPY ... FROM STDIN` makes a sink (`crate::copy`) whose parsed rows are
//! written here, batch by batch, as an INSERT would write them.

use datafusion::sql::sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget};
use eddy_storage::{Lane, ObjectDef, OnConflict, Value, WriteOp, WriteResult};

use crate::copy::{CopyInSink, CopyOptions};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ident::{normalize_ident, object_name};
use crate::output::Output;

/// Plans a COPY statement.
pub(crate) async fn plan(
    engine: &Core,
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<Output> {
    let opts = CopyOptions::from_ast(options, legacy)?;
    match (to, target) {
        (true, CopyTarget::Stdout) => {
            let sql = match source {
                CopySource::Query(q) => q.to_string(),
                CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let cols = if columns.is_empty() {
                        "*".to_owned()
                    } else {
                        columns
                            .iter()
                            .map(|c| format!("\"{}\"", normalize_ident(c)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let name = object_name(table_name)?;
                    if engine.store().catalog().get(&name).is_none() {
                        return Err(Error::UndefinedObject { name });
                    }
                    format!("SELECT {cols} FROM \"{name}\"")
                }
            };
            let stmts = crate::dialect::parse_sql(&sql, &engine.compat)?;
            let [crate::dialect::Statement::Sql(s)] = stmts.as_slice() else {
                return Err(Error::Syntax(sql));
            };
            let plan = engine.plan_sql(s).await?;
            let stream = engine
                .run_plan(&plan, &datafusion::common::ParamValues::List(vec![]))
                .await?;
            Ok(Output::CopyOut {
                stream,
                options: opts,
            })
        }
        (false, CopyTarget::Stdin) => {
            let CopySource::Table {
                table_name,
                columns,
            } = source
            else {
                return Err(Error::Syntax("COPY (query) FROM is not valid".into()));
            };
            let def = super::target(engine, table_name)?;
            let all = super::write_columns(&def);
            // Without a column list a topic takes its user columns (not _key, _msg_id), as
            // INSERT does.
            let skip = if matches!(*def, ObjectDef::Topic(_)) {
                super::TOPIC_WRITE_META
            } else {
                0
            };
            let targets: Vec<usize> = if columns.is_empty() {
                (skip..all.len()).collect()
            } else {
                columns
                    .iter()
                    .map(|c| super::column_index(&def, &all, &normalize_ident(c)))
                    .collect::<Result<_>>()?
            };
            Ok(Output::CopyIn(Box::new(CopyInSink::new(
                def, opts, all, targets,
            ))))
        }
        _ => Err(Error::NotSupported(
            "COPY to or from a file or program (use STDIN / STDOUT)".into(),
        )),
    }
}

impl Core {
    /// Writes rows parsed by a COPY sink, in the session's `lane`; returns how many were
    /// written.
    pub async fn copy_write(
        &self,
        lane: Lane,
        sink: &CopyInSink,
        rows: Vec<Vec<Value>>,
    ) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        match sink.target() {
            ObjectDef::Subscription(s) => Err(Error::WrongObjectType {
                name: s.name.clone(),
                expected: "topic or table",
            }),
            ObjectDef::Topic(t) => super::append_rows(self, lane, t, rows).await,
            ObjectDef::Table(t) => {
                let res = self
                    .write(
                        lane,
                        vec![WriteOp::Insert {
                            table: t.id,
                            rows,
                            on_conflict: OnConflict::Error,
                        }],
                    )
                    .await?;
                Ok(match res.first() {
                    Some(WriteResult::Rows(n)) => *n,
                    _ => 0,
                })
            }
        }
    }
}
