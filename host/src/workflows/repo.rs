//! Workflow persistence and key layout.
//!
//! * `wfdef:<tenant>:<id>`: a tenant's definitions; pack workflows are the
//!   installer's `workflow:<id>` entries (visible to every tenant, read-only).
//! * `wfrun:<run>`: the run record (compare-and-set on its revision).
//! * `wfruns:<tenant>:<reverse time>:<run>` and
//!   `wfrunsof:<tenant>:<workflow>:<reverse time>:<run>`: listings, newest first.
//! * `wfactive:<run>`: runs not finished (driven by the engine, resumed after a restart).
//! * `wftl:<run>:<seq>`: the timeline, one entry per event, written in the
//!   same atomic batch as the run change it records and never rewritten.

use super::model::{TimelineEvent, WorkflowDef, WorkflowRun};
use crate::store::{BatchOutcome, Op, Store, StoreError, to_json};
use std::sync::Arc;

pub const ACTIVE_PREFIX: &str = "wfactive:";
const PACK_WORKFLOW_PREFIX: &str = "workflow:";

pub fn def_key(tenant: &str, id: &str) -> String {
    format!("wfdef:{tenant}:{id}")
}

pub fn def_prefix(tenant: &str) -> String {
    format!("wfdef:{tenant}:")
}

pub fn run_key(id: &str) -> String {
    format!("wfrun:{id}")
}

fn reverse_time(run: &WorkflowRun) -> String {
    format!("{:020}", u64::MAX - run.created_at.timestamp_micros().max(0) as u64)
}

pub fn runs_prefix(tenant: &str) -> String {
    format!("wfruns:{tenant}:")
}

pub fn runs_of_prefix(tenant: &str, workflow: &str) -> String {
    format!("wfrunsof:{tenant}:{workflow}:")
}

fn timeline_prefix(run: &str) -> String {
    format!("wftl:{run}:")
}

pub fn timeline_key(run: &str, seq: u64) -> String {
    format!("wftl:{run}:{seq:012}")
}

fn active_key(run: &str) -> String {
    format!("{ACTIVE_PREFIX}{run}")
}

#[derive(Clone)]
pub struct WorkflowRepo {
    store: Arc<dyn Store>,
}

impl WorkflowRepo {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A tenant's definition, or a pack's (marked with its source).
    pub async fn definition(&self, tenant: &str, id: &str) -> Result<Option<WorkflowDef>, StoreError> {
        if let Some(entry) = self.store.get(&def_key(tenant, id)).await? {
            return entry.json().map(Some);
        }
        self.pack_definition(id).await
    }

    /// A workflow installed by a pack.
    pub async fn pack_definition(&self, id: &str) -> Result<Option<WorkflowDef>, StoreError> {
        match self.store.get(&format!("{PACK_WORKFLOW_PREFIX}{id}")).await? {
            Some(entry) => Ok(Some(pack_def(id, entry.json()?))),
            None => Ok(None),
        }
    }

    /// Every definition a tenant can see: its own, then the packs'.
    pub async fn definitions(&self, tenant: &str, limit: usize) -> Result<Vec<WorkflowDef>, StoreError> {
        let mut out = Vec::new();
        for (_, entry) in self.store.scan(&def_prefix(tenant), None, limit).await? {
            out.push(entry.json::<WorkflowDef>()?);
        }
        for (key, entry) in self.store.scan(PACK_WORKFLOW_PREFIX, None, limit).await? {
            out.push(pack_def(&key[PACK_WORKFLOW_PREFIX.len()..], entry.json()?));
        }
        out.truncate(limit);
        Ok(out)
    }

    pub async fn run(&self, id: &str) -> Result<Option<(WorkflowRun, u64)>, StoreError> {
        Ok(match self.store.get(&run_key(id)).await? {
            Some(entry) => Some((entry.json()?, entry.revision)),
            None => None,
        })
    }

    /// Ops creating a run: record, listings, active marker, first events.
    pub fn create_ops(run: &WorkflowRun, events: &[TimelineEvent]) -> Vec<Op> {
        let id = run.id.as_bytes().to_vec();
        let mut ops = vec![
            Op::PutIfAbsent { key: run_key(&run.id), value: to_json(run), ttl: None },
            Op::Put {
                key: format!("{}{}:{}", runs_prefix(&run.org_id), reverse_time(run), run.id),
                value: id.clone(),
                ttl: None,
            },
            Op::Put {
                key: format!("{}{}:{}", runs_of_prefix(&run.org_id, &run.workflow_id), reverse_time(run), run.id),
                value: id,
                ttl: None,
            },
        ];
        if !run.status.is_terminal() {
            ops.push(Op::Put { key: active_key(&run.id), value: run.org_id.as_bytes().to_vec(), ttl: None });
        }
        ops.extend(Self::event_ops(events));
        ops
    }

    fn event_ops(events: &[TimelineEvent]) -> Vec<Op> {
        events
            .iter()
            .map(|e| Op::PutIfAbsent { key: timeline_key(&e.run_id, e.seq), value: to_json(e), ttl: None })
            .collect()
    }

    /// Ops replacing a run read at `revision`, with its new events.
    pub fn update_ops(run: &WorkflowRun, revision: u64, events: &[TimelineEvent]) -> Vec<Op> {
        let mut ops =
            vec![Op::PutIfRevision { key: run_key(&run.id), value: to_json(run), expected: revision, ttl: None }];
        if run.status.is_terminal() {
            ops.push(Op::Delete { key: active_key(&run.id) });
        }
        ops.extend(Self::event_ops(events));
        ops
    }

    /// Apply; `false` when another writer changed the run first.
    pub async fn apply(&self, ops: Vec<Op>) -> Result<bool, StoreError> {
        Ok(matches!(self.store.apply(ops).await?, BatchOutcome::Applied(_)))
    }

    /// Runs not finished.
    pub async fn active(&self) -> Result<Vec<String>, StoreError> {
        let items = self.store.scan(ACTIVE_PREFIX, None, 1_000_000).await?;
        Ok(items.into_iter().map(|(k, _)| k[ACTIVE_PREFIX.len()..].to_string()).collect())
    }

    /// Drop the active marker of a run that is over.
    pub async fn clear_active(&self, run: &str) -> Result<(), StoreError> {
        self.store.apply(vec![Op::Delete { key: active_key(run) }]).await.map(|_| ())
    }

    /// Timeline events after sequence `after`, at most `limit`.
    pub async fn timeline(&self, run: &str, after: u64, limit: usize) -> Result<Vec<TimelineEvent>, StoreError> {
        let start = (after > 0).then(|| timeline_key(run, after));
        let items = self.store.scan(&timeline_prefix(run), start.as_deref(), limit).await?;
        items.into_iter().map(|(_, e)| e.json()).collect()
    }
}

/// A pack workflow as a definition (read-only, visible to every tenant).
fn pack_def(id: &str, raw: serde_json::Value) -> WorkflowDef {
    let pack = id.split('.').next().unwrap_or(id).to_string();
    let mut def = match serde_json::from_value::<WorkflowDef>(raw.clone()) {
        Ok(def) => def,
        // Shown, but not runnable: the steps use something this engine does not know.
        Err(e) => WorkflowDef {
            description: format!("unsupported workflow definition: {e}"),
            steps: Default::default(),
            ..Default::default()
        },
    };
    def.id = id.to_string();
    def.source = format!("pack:{pack}");
    def
}
