//! Catalog statements: CREATE/ALTER/DROP TOPIC, CREATE/DROP TABLE, SHOW TOPICS.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{
    self as ast, ColumnOption, Expr as SqlExpr, ObjectName, SqlOption, TableConstraint,
};
use eddy_storage::{ColumnDef, Lane, ObjectDef, Replication, TableDef, TopicDef, WriteOp};

use crate::core::Core;
use crate::core::MAX_PARTITIONS;
use crate::error::{Error, Result};
use crate::ident::normalize_ident;
use crate::ident::object_name;
use crate::output::Output;
use crate::types::{column_type_of, format_duration_ms, parse_duration_ms};

pub(crate) use crate::ident::{option_value, options_map};

fn parse_replication(v: &str) -> Result<Replication> {
    match v.to_ascii_lowercase().as_str() {
        "raft" => Ok(Replication::Raft),
        "gossip" => Ok(Replication::Gossip),
        _ => Err(Error::InvalidParameter(format!(
            "replication must be 'raft' or 'gossip', not '{v}'"
        ))),
    }
}

fn parse_count(key: &str, v: &str, max: u32) -> Result<u32> {
    match v.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Error::InvalidParameter(format!(
            "{key} must be an integer between 1 and {max}, not '{v}'"
        ))),
    }
}

fn retention_value(v: &str) -> Result<Option<u64>> {
    match v.to_ascii_lowercase().as_str() {
        "forever" | "none" | "infinite" | "-1" => Ok(None),
        _ => parse_duration_ms(v).map(Some),
    }
}

impl Core {
    async fn create_object(&self, def: ObjectDef, if_not_exists: bool) -> Result<()> {
        match self.write(Lane::Queued, vec![WriteOp::Create(def)]).await {
            Ok(_) => Ok(()),
            Err(Error::Storage(eddy_storage::Error::ObjectExists { .. })) if if_not_exists => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn create_topic(
        &self,
        name: &ObjectName,
        columns: &[ast::ColumnDef],
        options: &[SqlOption],
        if_not_exists: bool,
    ) -> Result<Output> {
        let name = object_name(name)?;
        let mut cols = Vec::new();
        for c in columns {
            let col = column_def(c)?;
            if col.name.starts_with('_') {
                return Err(Error::InvalidParameter(format!(
                    "column name \"{}\" is reserved: names starting with _ are topic metadata",
                    col.name
                )));
            }
            if cols.iter().any(|x: &ColumnDef| x.name == col.name) {
                return Err(Error::InvalidParameter(format!(
                    "column \"{}\" specified more than once",
                    col.name
                )));
            }
            cols.push(col);
        }
        if cols.is_empty() {
            cols.push(ColumnDef {
                name: "payload".into(),
                ty: eddy_storage::ColumnType::Text,
                nullable: true,
            });
        }
        let mut topic = TopicDef {
            partitions: self.config.default_partitions,
            ..TopicDef::new(name, cols)
        };
        for (k, v) in options_map(options)? {
            match k.as_str() {
                "partitions" => topic.partitions = parse_count("partitions", &v, MAX_PARTITIONS)?,
                "retention" => topic.retention_ms = retention_value(&v)?,
                "dedup_window" => topic.dedup_window_ms = parse_duration_ms(&v)?,
                "replication" => topic.replication = parse_replication(&v)?,
                "replicas" => topic.replicas = Some(parse_count("replicas", &v, 9)?),
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "unrecognized topic option \"{other}\""
                    )))
                }
            }
        }
        self.create_object(ObjectDef::Topic(topic), if_not_exists)
            .await?;
        Ok(Output::Command {
            tag: "CREATE TOPIC".into(),
            rows: None,
        })
    }

    pub(crate) async fn alter_topic(
        &self,
        name: &ObjectName,
        options: &[SqlOption],
    ) -> Result<Output> {
        let name = object_name(name)?;
        let def = self
            .store
            .catalog()
            .get(&name)
            .ok_or_else(|| Error::UndefinedObject { name: name.clone() })?;
        let ObjectDef::Topic(mut topic) = (*def).clone() else {
            return Err(Error::WrongObjectType {
                name,
                expected: "topic",
            });
        };
        for (k, v) in options_map(options)? {
            match k.as_str() {
                "retention" => topic.retention_ms = retention_value(&v)?,
                "dedup_window" => topic.dedup_window_ms = parse_duration_ms(&v)?,
                "partitions" | "replication" => {
                    return Err(Error::NotSupported(format!(
                        "changing {k} of an existing topic"
                    )))
                }
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "unrecognized topic option \"{other}\""
                    )))
                }
            }
        }
        self.write(Lane::Queued, vec![WriteOp::Alter(ObjectDef::Topic(topic))])
            .await?;
        Ok(Output::Command {
            tag: "ALTER TOPIC".into(),
            rows: None,
        })
    }

    pub(crate) async fn drop_object(
        &self,
        name: &ObjectName,
        if_exists: bool,
        topic: bool,
    ) -> Result<Output> {
        let name = object_name(name)?;
        match self.store.catalog().get(&name) {
            None if if_exists => {}
            None => return Err(Error::UndefinedObject { name }),
            Some(def) => {
                let right_kind = if topic {
                    matches!(*def, ObjectDef::Topic(_))
                } else {
                    matches!(*def, ObjectDef::Table(_))
                };
                if !right_kind {
                    return Err(Error::WrongObjectType {
                        name,
                        expected: if topic { "topic" } else { "table" },
                    });
                }
                self.write(Lane::Queued, vec![WriteOp::Drop { name }])
                    .await?;
            }
        }
        Ok(Output::Command {
            tag: if topic { "DROP TOPIC" } else { "DROP TABLE" }.into(),
            rows: None,
        })
    }

    pub(crate) async fn create_table(&self, ct: &ast::CreateTable) -> Result<Output> {
        let name = object_name(&ct.name)?;
        if ct.query.is_some() || ct.like.is_some() {
            return Err(Error::NotSupported("CREATE TABLE AS / LIKE".into()));
        }
        let mut columns = Vec::new();
        let mut pk_names: Vec<String> = Vec::new();
        for c in &ct.columns {
            let col = column_def(c)?;
            if c.options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)))
            {
                pk_names.push(col.name.clone());
            }
            if columns.iter().any(|x: &ColumnDef| x.name == col.name) {
                return Err(Error::InvalidParameter(format!(
                    "column \"{}\" specified more than once",
                    col.name
                )));
            }
            columns.push(col);
        }
        for tc in &ct.constraints {
            if let TableConstraint::PrimaryKey(pk) = tc {
                if !pk_names.is_empty() {
                    return Err(Error::InvalidParameter(
                        "multiple primary keys are not allowed".into(),
                    ));
                }
                for ic in &pk.columns {
                    match &ic.column.expr {
                        SqlExpr::Identifier(id) => pk_names.push(normalize_ident(id)),
                        other => {
                            return Err(Error::NotSupported(format!(
                                "primary key expression {other}"
                            )))
                        }
                    }
                }
            }
        }
        if pk_names.is_empty() {
            return Err(Error::InvalidParameter(format!(
                "table \"{name}\" needs a PRIMARY KEY"
            )));
        }
        let mut primary_key = Vec::new();
        for pk in &pk_names {
            let i = columns.iter().position(|c| &c.name == pk).ok_or_else(|| {
                Error::UndefinedColumn {
                    relation: name.clone(),
                    column: pk.clone(),
                }
            })?;
            columns[i].nullable = false;
            primary_key.push(i);
        }
        let mut replication = Replication::Raft;
        let mut change_retention_ms = Some(eddy_storage::DEFAULT_CHANGE_RETENTION_MS);
        let opts = match &ct.table_options {
            ast::CreateTableOptions::With(o) | ast::CreateTableOptions::Options(o) => o.clone(),
            _ => vec![],
        };
        for (k, v) in options_map(&opts)? {
            match k.as_str() {
                "replication" => replication = parse_replication(&v)?,
                "replicas" => {
                    parse_count("replicas", &v, 9)?;
                }
                "change_retention" => change_retention_ms = retention_value(&v)?,
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "unrecognized table option \"{other}\""
                    )))
                }
            }
        }
        let def = TableDef {
            id: 0,
            name,
            columns,
            primary_key,
            replication,
            change_retention_ms,
            placement: Vec::new(),
            reassigned: false,
        };
        self.create_object(ObjectDef::Table(def), ct.if_not_exists)
            .await?;
        Ok(Output::Command {
            tag: "CREATE TABLE".into(),
            rows: None,
        })
    }

    pub(crate) fn show_topics(&self) -> Result<Output> {
        let topics: Vec<TopicDef> = self
            .store
            .catalog()
            .list()
            .iter()
            .filter_map(|o| match &**o {
                ObjectDef::Topic(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let mut messages = Vec::new();
        for t in &topics {
            let mut n = 0u64;
            for p in 0..t.partitions {
                let st = self.store.partition(t, p)?;
                n += st.next_offset() - st.start_offset();
            }
            messages.push(n as i64);
        }
        let schema = show_topics_schema();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                topics.iter().map(|t| t.name.clone()),
            )),
            Arc::new(arrow::array::Int32Array::from_iter_values(
                topics.iter().map(|t| t.partitions as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                topics.iter().map(|t| t.replication.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(topics.iter().map(|t| {
                t.retention_ms
                    .map(format_duration_ms)
                    .unwrap_or_else(|| "forever".into())
            }))),
            Arc::new(StringArray::from_iter_values(
                topics.iter().map(|t| format_duration_ms(t.dedup_window_ms)),
            )),
            Arc::new(StringArray::from_iter_values(topics.iter().map(|t| {
                t.columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.ty.sql_name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }))),
            Arc::new(arrow::array::Int64Array::from(messages)),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        Ok(Output::Rows {
            tag: "SHOW".into(),
            stream: Box::pin(MemoryStream::try_new(vec![batch], schema, None)?),
        })
    }
}

pub(crate) fn show_topics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("partitions", DataType::Int32, false),
        Field::new("replication", DataType::Utf8, false),
        Field::new("retention", DataType::Utf8, false),
        Field::new("dedup_window", DataType::Utf8, false),
        Field::new("columns", DataType::Utf8, false),
        Field::new("messages", DataType::Int64, false),
    ]))
}

fn column_def(c: &ast::ColumnDef) -> Result<ColumnDef> {
    let ty = column_type_of(&c.data_type)?;
    let not_null = c.options.iter().any(|o| {
        matches!(
            o.option,
            ColumnOption::NotNull | ColumnOption::PrimaryKey(_)
        )
    });
    for o in &c.options {
        match &o.option {
            ColumnOption::Null | ColumnOption::NotNull | ColumnOption::PrimaryKey(_) => {}
            other => return Err(Error::NotSupported(format!("column option {other}"))),
        }
    }
    Ok(ColumnDef {
        name: normalize_ident(&c.name),
        ty,
        nullable: !not_null,
    })
}
