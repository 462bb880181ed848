//! The statements that are neither queries nor writes: eddy's own (`CREATE TOPIC`,
//! `SHOW CLUSTER`, cursors, subscriptions, ...) and PostgreSQL's session and catalog
//! commands (`SET`, `SHOW`, `BEGIN`, `CREATE TABLE`, ...).

use arrow::array::StringArray;
use datafusion::common::ParamValues;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{
    self as ast, Expr as SqlExpr, ObjectType, Statement as SqlStatement,
};

use super::{Engine, Output};
use crate::core::{one_text_column, Core};
use crate::cursor::Cursor;
use crate::ddl::option_value;
use crate::dialect::{CursorSource, Statement};
use crate::error::{Error, Result};
use crate::ident::object_name;
use crate::names::{pg_column_names, show_column, show_name};
use crate::session::Session;

impl Engine {
    /// Runs a statement that is neither a query nor a write.
    pub(super) async fn execute_other(
        &self,
        session: &mut Session,
        statement: &Statement,
    ) -> Result<Output> {
        match statement {
            Statement::CreateTopic { name, columns, options, if_not_exists } => {
                self.create_topic(name, columns, options, *if_not_exists).await
            }
            Statement::AlterTopic { name, options } => self.alter_topic(name, options).await,
            Statement::DropTopic { name, if_exists } => self.drop_object(name, *if_exists, true).await,
            Statement::ShowTopics => self.show_topics(),
            Statement::ShowCluster => {
                let batch = self.nodes_batch()?;
                let schema = batch.schema();
                Ok(Output::Rows {
                    tag: "SHOW".into(),
                    stream: Box::pin(MemoryStream::try_new(vec![batch], schema, None)?),
                })
            }
            Statement::AddNode(addr) => {
                let id = self.writer.add_node(addr).await?;
                tracing::info!(node = id, addr, "node added to the cluster");
                Ok(Output::Command {
                    tag: "ALTER CLUSTER".into(),
                    rows: None,
                })
            }
            Statement::RemoveNode(id) => {
                self.writer.remove_node(*id).await?;
                Ok(Output::Command {
                    tag: "ALTER CLUSTER".into(),
                    rows: None,
                })
            }
            Statement::DrainNode { node, drain } => {
                self.writer.drain_node(*node, *drain).await?;
                Ok(Output::Command {
                    tag: "ALTER CLUSTER".into(),
                    rows: None,
                })
            }
            Statement::ExplainRoute(inner) => {
                let description = crate::Description::of(inner);
                let holders = self.route(&description)?;
                let strategy = session.get("routing").unwrap_or_default();
                let rows = self.writer.explain_route(&description, holders, &strategy);
                let batch = crate::system::route_batch(&rows)?;
                let schema = batch.schema();
                Ok(Output::Rows {
                    tag: "EXPLAIN".into(),
                    stream: Box::pin(MemoryStream::try_new(vec![batch], schema, None)?),
                })
            }
            Statement::CopySubscribe { .. } => Err(Error::NotSupported(
                "COPY (SUBSCRIBE ...) here: the connection drives subscriptions itself".into(),
            )),
            Statement::Subscribe(_) => Err(Error::NotSupported(
                "SUBSCRIBE on its own; use COPY (SUBSCRIBE ...) TO STDOUT, DECLARE c CURSOR FOR SUBSCRIBE ..., or LISTEN"
                    .into(),
            )),
            Statement::DeclareCursor { name, source } => {
                if session.cursors.contains_key(name) {
                    return Err(Error::DuplicateCursor(name.clone()));
                }
                let cursor = match source {
                    CursorSource::Subscribe(spec) => {
                        let (stream, stats) = self.subscribe_counted(spec, "cursor").await?;
                        Cursor::new(stream, Some(stats))
                    }
                    CursorSource::Query(q) => {
                        let plan = pg_column_names(q, self.plan_sql(q).await?)?;
                        Cursor::new(self.run_plan(&plan, &ParamValues::List(vec![])).await?, None)
                    }
                };
                session.cursors.insert(name.clone(), cursor);
                Ok(Output::Command { tag: "DECLARE CURSOR".into(), rows: None })
            }
            Statement::Fetch { cursor, count, timeout } => {
                let c = session.cursors.get(cursor).ok_or_else(|| Error::UndefinedCursor(cursor.clone()))?;
                Ok(Output::Rows { tag: "FETCH".into(), stream: c.fetch(*count, *timeout) })
            }
            Statement::Close { cursor } => {
                match cursor {
                    Some(c) => {
                        session.cursors.remove(c).ok_or_else(|| Error::UndefinedCursor(c.clone()))?;
                    }
                    None => session.cursors.clear(),
                }
                Ok(Output::Command { tag: "CLOSE CURSOR".into(), rows: None })
            }
            Statement::Listen(name) => {
                let source = self.source(name)?;
                let positions = self.resolve_positions(&source.log, &crate::subscribe::StartPosition::Now).await?;
                session.listens.entry(source.log.name.clone()).or_insert(positions);
                Ok(Output::Command { tag: "LISTEN".into(), rows: None })
            }
            Statement::Unlisten(name) => {
                match name {
                    Some(n) => {
                        session.listens.remove(&object_name(n)?);
                    }
                    None => session.listens.clear(),
                }
                Ok(Output::Command { tag: "UNLISTEN".into(), rows: None })
            }
            Statement::CreateSubscription { name, spec, if_not_exists } => {
                self.create_subscription(name, spec, *if_not_exists).await
            }
            Statement::DropSubscription { name, if_exists } => self.drop_subscription(&self.durable, name, *if_exists).await,
            Statement::ShowSubscriptions => {
                let all = self.subscriptions_batch(&self.durable).await?;
                let kinds = all.column(1).as_any().downcast_ref::<StringArray>().cloned();
                let durable: arrow::array::BooleanArray =
                    kinds.iter().flat_map(|k| k.iter()).map(|k| Some(k == Some("durable"))).collect();
                let batch = arrow::compute::filter_record_batch(&all, &durable)?;
                let stream = MemoryStream::try_new(vec![batch], Core::subscriptions_schema(), None)?;
                Ok(Output::Rows { tag: "SHOW".into(), stream: Box::pin(stream) })
            }
            Statement::FetchSubscription { name, count, timeout } => {
                self.fetch_subscription(&self.durable, name, *count, *timeout).await
            }
            Statement::Ack { name, positions, nack } => self.ack_subscription(&self.durable, name, positions, *nack).await,
            Statement::Sql(s) => self.execute_sql_other(session, s).await,
        }
    }

    /// Runs a PostgreSQL statement that is neither a query nor a write.
    async fn execute_sql_other(&self, session: &mut Session, s: &SqlStatement) -> Result<Output> {
        let command = |tag: &str| {
            Ok(Output::Command {
                tag: tag.into(),
                rows: None,
            })
        };
        match s {
            SqlStatement::CreateTable(ct) => self.create_table(ct).await,
            SqlStatement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => {
                for name in names {
                    self.drop_object(name, *if_exists, false).await?;
                }
                command("DROP TABLE")
            }
            SqlStatement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => crate::dml::plan_copy(self, source, *to, target, options, legacy_options).await,
            SqlStatement::Set(set) => {
                use ast::Set;
                match set {
                    Set::SingleAssignment {
                        variable, values, ..
                    } => {
                        let name = variable.to_string().to_ascii_lowercase();
                        if let [SqlExpr::Identifier(i)] = values.as_slice() {
                            if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") {
                                session.reset(Some(&name));
                                return command("SET");
                            }
                        }
                        let value = values
                            .iter()
                            .map(option_value)
                            .collect::<Vec<_>>()
                            .join(", ");
                        crate::session::check_setting(&name, &value)?;
                        session.set(&name, value);
                    }
                    Set::SetTimeZone { value, .. } => session.set("timezone", option_value(value)),
                    _ => {}
                }
                command("SET")
            }
            SqlStatement::Reset(reset) => {
                match &reset.reset {
                    ast::Reset::ALL => session.reset(None),
                    ast::Reset::ConfigurationParameter(name) => {
                        session.reset(Some(&name.to_string()))
                    }
                }
                command("RESET")
            }
            SqlStatement::ShowVariable { variable } => {
                let name = show_name(variable);
                let key = match name.as_str() {
                    "time zone" => "timezone",
                    "transaction isolation level" => "transaction_isolation",
                    other => other,
                };
                let value = session.get(key).ok_or_else(|| {
                    Error::InvalidParameter(format!(
                        "unrecognized configuration parameter \"{name}\""
                    ))
                })?;
                Ok(Output::Rows {
                    tag: "SHOW".into(),
                    stream: one_text_column(&show_column(&name), vec![value])?,
                })
            }
            SqlStatement::StartTransaction { .. } => {
                session.block_writes.get_or_insert(0);
                Ok(Output::TransactionStart)
            }
            SqlStatement::Commit { .. } => {
                session.block_writes = None;
                Ok(Output::TransactionEnd {
                    tag: "COMMIT",
                    warning: None,
                })
            }
            SqlStatement::Rollback { .. } => {
                let wrote = session.block_writes.take().unwrap_or(0);
                Ok(Output::TransactionEnd {
                    tag: "ROLLBACK",
                    warning: (wrote > 0).then(|| {
                        format!(
                            "eddy has no multi-statement transactions: the {wrote} \
                             statement(s) of this block that wrote committed as they ran, and \
                             ROLLBACK does not undo them"
                        )
                    }),
                })
            }
            SqlStatement::Discard { .. } => command("DISCARD ALL"),
            SqlStatement::Deallocate { .. } => command("DEALLOCATE"),
            other => Err(Error::NotSupported(format!(
                "statement \"{}\"",
                first_words(&other.to_string())
            ))),
        }
    }
}

/// The first two words of `sql`: how an unsupported statement is named in its error.
fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}
