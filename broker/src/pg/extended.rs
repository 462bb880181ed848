//! The extended query protocol: Parse plans once, Describe reports parameter and result
//! types, Bind/Execute runs the plan with decoded parameters.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, into_pg_type};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use eddy_query::{Engine, Prepared};
use futures::Sink;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use super::{respond, session_of, Backend};
use crate::error::to_pg;

/// Arrow type for a parameter type a client declared at Parse.
fn arrow_of_pg(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        Type::DATE => DataType::Date32,
        _ => return None,
    })
}

/// A portal's parameter values, decoded as the statement's parameter types say (types
/// it does not know are left to the client's format).
pub(super) fn parameters(portal: &Portal<Arc<Prepared>>) -> PgWireResult<ParamValues> {
    let mut types: Vec<Option<&DataType>> = portal
        .statement
        .statement
        .param_types
        .iter()
        .map(Option::as_ref)
        .collect();
    if types.len() < portal.parameter_len() {
        types.resize(portal.parameter_len(), None);
    }
    deserialize_parameters(portal, &types)
}

/// Plans statements at Parse time.
pub struct EddyParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for EddyParser {
    type Statement = Arc<Prepared>;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Arc<Prepared>>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let hints: Vec<Option<DataType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(arrow_of_pg))
            .collect();
        let session = session_of(client).lock().clone();
        self.engine
            .prepare_text(sql, &hints, &session)
            .await
            .map_err(to_pg)
    }

    fn get_parameter_types(&self, stmt: &Arc<Prepared>) -> PgWireResult<Vec<Type>> {
        stmt.param_types
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Arc<Prepared>,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => {
                let format = format.unwrap_or(&Format::UnifiedText);
                super::check_result_formats(format, schema.fields().len())?;
                arrow_schema_to_pg_fields(schema, format, None)
            }
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Arc<Prepared>;
    type QueryParser = EddyParser;

    fn query_parser(&self) -> Arc<EddyParser> {
        Arc::new(EddyParser {
            engine: self.engine.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Arc<Prepared>>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Arc<Prepared>>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        super::note_work(client, &prepared.statement, &prepared.description);
        // Before the statement runs, as PostgreSQL checks at Bind (`respond` checks a
        // schema known only from the output).
        if let Some(schema) = &prepared.schema {
            super::check_result_formats(&portal.result_column_format, schema.fields().len())?;
        }
        let params = parameters(portal)?;
        self.slow_down().await;
        let session = session_of(client);
        let mut s = session.lock().clone();
        let running = super::cancel::Running::begin(client, s.statement_timeout());
        let result = running
            .until_stopped(self.engine.execute(&mut s, prepared, &params))
            .await;
        *session.lock() = s;
        let output = result.map_err(to_pg)?;
        super::warn_first(client, output.warning().map(str::to_owned)).await?;
        respond(client, output, &portal.result_column_format, running)
    }
}
