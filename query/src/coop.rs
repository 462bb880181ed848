//! Joins that yield: a cancelled or timed-out query stops computing.
//!
//! A query's operators run as futures, some of them in tasks DataFusion spawns (one per
//! partition under a repartition or a coalesce). Dropping the query's stream (a cancel
//! request, `statement_timeout`, a closed connection) aborts those tasks, but an abort
//! takes effect only when the task next yields to the runtime. DataFusion makes its
//! sources and exchanges consume the task's cooperative budget for each batch, so a plan
//! yields about every 128 batches they produce. A join does not read a batch for each one
//! it emits: a nested-loop or cross join emits a build side's worth of rows for every
//! row it reads, and an aggregate above it can loop over those batches within one poll
//! for seconds, holding a runtime worker, after its query is gone (measured: a
//! three-way cross join went on using both cores for 5 s after a 300 ms timeout).
//!
//! [`YieldingJoins`] puts a `CooperativeExec` above every join (and unnest, which also
//! emits more than it reads), so each batch a join emits takes one unit of the budget too.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;

/// Wraps joins and unnests in `CooperativeExec` (see the module notes).
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(if emits_more_than_it_reads(node.as_ref()) {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "YieldingJoins"
    }

    fn schema_check(&self) -> bool {
        // The wrapper passes its input's batches through unchanged.
        true
    }
}

/// Operators that may emit many batches for one they read.
fn emits_more_than_it_reads(plan: &dyn ExecutionPlan) -> bool {
    let name = plan.name();
    name.ends_with("JoinExec") || name == "UnnestExec"
}
