//! Why DataFusion could not plan a statement, as a typed error. DataFusion says it only
//! in a message ("table '...' not found", "Invalid function ..."); the statement itself
//! says whether it names a relation or a function that does not exist, so that is asked
//! instead, and nothing reads the message.

use std::ops::ControlFlow;

use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionState;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{visit_expressions, Expr, Statement as SqlStatement};

use crate::error::Error;

/// The error for `stmt`, which DataFusion failed to plan with `e`: a relation it names
/// that does not exist ([`Error::UndefinedObject`]), else a function it calls that
/// does not exist ([`Error::UndefinedFunction`]), else `e` as it is.
pub(crate) async fn cause(state: &SessionState, stmt: &SqlStatement, e: DataFusionError) -> Error {
    if let Some(name) = missing_relation(state, stmt).await {
        return Error::UndefinedObject { name };
    }
    if let Some(name) = missing_function(state, stmt) {
        return Error::UndefinedFunction(name);
    }
    e.into()
}

/// The first table reference of `stmt` (CTEs aside) that resolves to no table.
async fn missing_relation(state: &SessionState, stmt: &SqlStatement) -> Option<String> {
    let statement = DfStatement::Statement(Box::new(stmt.clone()));
    for reference in state.resolve_table_references(&statement).ok()? {
        let exists = match state.schema_for_ref(reference.clone()) {
            Ok(schema) => schema.table_exist(reference.table()),
            Err(_) => false,
        };
        if !exists {
            return Some(reference.table().to_owned());
        }
    }
    None
}

/// The first function `stmt` calls that no registry of the session knows (scalar,
/// aggregate, window or table function).
fn missing_function(state: &SessionState, stmt: &SqlStatement) -> Option<String> {
    let known = |name: &str| {
        state.scalar_functions().contains_key(name)
            || state.aggregate_functions().contains_key(name)
            || state.window_functions().contains_key(name)
            || state.table_functions().contains_key(name)
    };
    let found = visit_expressions(stmt, |e: &Expr| match e {
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(crate::ident::normalize_ident);
            match name {
                Some(name) if !known(&name) => ControlFlow::Break(name),
                _ => ControlFlow::Continue(()),
            }
        }
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(name) => Some(name),
        ControlFlow::Continue(()) => None,
    }
}
