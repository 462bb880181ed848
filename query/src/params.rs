//! Parameters of prepared statements: their types, read off the plan, and their values.

use std::collections::HashMap;

use arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;

use crate::error::Result;

/// Parameter types of a DataFusion plan, ordered by `$n`.
pub(crate) fn param_types_of(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let mut map = plan.get_parameter_types()?;
    // DataFusion types a parameter compared with a column; one cast (`$1::float8`) or
    // passed to a function taking one type (`pg_sleep($1)`) takes that type, as in
    // PostgreSQL.
    for (id, ty) in placeholder_hints(plan)? {
        if let Some(slot @ None) = map.get_mut(&id) {
            *slot = Some(ty);
        }
    }
    let mut out: Vec<Option<DataType>> = Vec::new();
    for (k, v) in map {
        let Some(n) = k.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if n == 0 {
            continue;
        }
        if out.len() < n {
            out.resize(n, None);
        }
        out[n - 1] = v;
    }
    Ok(out)
}

/// Types the plan's expressions imply for parameters DataFusion left untyped: the target
/// of a cast of the parameter, or the argument type of a function with one exact
/// signature or one that coerces the argument to one native type. The first hint of a
/// parameter wins.
fn placeholder_hints(plan: &LogicalPlan) -> Result<HashMap<String, DataType>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, TypeSignature, TypeSignatureClass};
    let mut hints: HashMap<String, DataType> = HashMap::new();
    let mut hint = |arg: &Expr, ty: &DataType| {
        if let Expr::Placeholder(p) = arg {
            hints.entry(p.id.clone()).or_insert_with(|| ty.clone());
        }
    };
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                match e {
                    Expr::Cast(c) => hint(&c.expr, c.field.data_type()),
                    Expr::TryCast(c) => hint(&c.expr, c.field.data_type()),
                    Expr::ScalarFunction(f) => match &f.func.signature().type_signature {
                        TypeSignature::Exact(types) => {
                            for (arg, ty) in f.args.iter().zip(types) {
                                hint(arg, ty);
                            }
                        }
                        // An argument coerced to one native type (`pg_sleep`'s float8).
                        TypeSignature::Coercible(coercions) => {
                            for (arg, c) in f.args.iter().zip(coercions) {
                                if let TypeSignatureClass::Native(t) = c.desired_type() {
                                    if let Ok(ty) = t.default_cast_for(&DataType::Null) {
                                        hint(arg, &ty);
                                    }
                                }
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(hints)
}

/// The parameter values as scalars, by position.
pub(crate) fn param_list(params: &ParamValues) -> Vec<ScalarValue> {
    match params {
        ParamValues::List(l) => l.iter().map(|s| s.value.clone()).collect(),
        ParamValues::Map(_) => vec![],
    }
}
