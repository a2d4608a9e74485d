//! Policy authoring: drafts, publish, immutable snapshots, history and
//! rollback (what Policy Studio drives).
//!
//! * **Live bundles** (`policy:bundle:<id>`) are what the active policy is
//!   built from. Packs write theirs directly at install (they apply at
//!   once); a pack's fragment changes only with the pack.
//! * **Drafts** (`policy:draft:<id>`) are a user's pending edits: a new
//!   content, a disable, or a deletion. Saving a draft validates it (with
//!   line and column) against the active policy but changes nothing live.
//! * **Publish** applies every draft (or the named ones), validates the
//!   whole resulting policy, and in one atomic batch writes the live
//!   bundles, removes the drafts, stores the new **snapshot** (immutable,
//!   named by its content-derived id, the same id jobs record as
//!   `safety_snapshot`) and a **history** entry (who, when, what changed);
//!   then swaps the active policy. The batch is guarded by a
//!   compare-and-set on `policy:head`, so concurrent publishers (other
//!   replicas included) cannot interleave: one wins, the other retries on
//!   the new state.
//! * **Rollback** restores the user bundles of an earlier snapshot (pack
//!   fragments stay as the installed packs have them), with the same batch.
//!
//! History entries sort newest first (`policy:history:<inverted micros>`).

use super::{BUNDLE_PREFIX, Diagnostic, PolicyError, PolicyService, StoredBundle};
use crate::store::{BatchOutcome, Op, to_json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const DRAFT_PREFIX: &str = "policy:draft:";
pub const SNAPSHOT_PREFIX: &str = "policy:snapshot:";
pub const HISTORY_PREFIX: &str = "policy:history:";
pub const HEAD_KEY: &str = "policy:head";

/// A pending edit of a user bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Draft {
    pub id: String,
    /// `None`: the bundle is to be deleted.
    pub content: Option<String>,
    pub enabled: bool,
    pub author: String,
    #[serde(default)]
    pub message: String,
    pub updated_at: DateTime<Utc>,
}

/// One bundle as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotBundle {
    pub id: String,
    pub content: String,
    pub source: String,
    pub sha256: String,
}

/// An immutable policy as it was active.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub snapshot_id: String,
    /// Enabled bundles in merge order (the base policy file is not included).
    pub bundles: Vec<SnapshotBundle>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// One change of the active policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub snapshot_id: String,
    #[serde(default)]
    pub previous: Option<String>,
    /// `publish`, `rollback`, `pack_install`, `pack_uninstall`, `startup`.
    pub action: String,
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub message: String,
    pub changes: Changes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
}

/// A bundle as an author sees it: live state plus any pending draft.
#[derive(Debug, Clone, Serialize)]
pub struct BundleView {
    pub id: String,
    /// `pack` or `user`.
    pub source: String,
    /// `rules` (safety-policy YAML) or `component` (names a policy component).
    pub kind: &'static str,
    /// The content an editor should show: the draft's when there is one.
    pub content: Option<String>,
    pub enabled: bool,
    pub sha256: String,
    /// Live and without pending edits.
    pub published: bool,
    /// Live at all (in the active policy when enabled).
    pub live: bool,
    pub draft: Option<String>,
    pub pack_id: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub author: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle not found")]
    NotFound,
    #[error("snapshot not found")]
    SnapshotNotFound,
    #[error("{0}")]
    InvalidId(String),
    #[error("bundle {id} belongs to pack {pack}; it changes only with the pack")]
    OwnedByPack { id: String, pack: String },
    #[error("policy bundle invalid")]
    Invalid(Vec<Diagnostic>),
    #[error("the policy changed concurrently; try again")]
    Busy,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl From<crate::store::StoreError> for BundleError {
    fn from(e: crate::store::StoreError) -> Self {
        BundleError::Policy(PolicyError::Store(e))
    }
}

/// What a publish or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub changed: bool,
    pub snapshot_id: String,
    pub snapshot_before: String,
    pub snapshot_after: String,
    pub published: Vec<String>,
    pub changes: Changes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
}

/// Bundle ids: path-like, `[A-Za-z0-9._-]` segments joined by `/`.
pub fn validate_id(id: &str) -> Result<(), BundleError> {
    let bad = |why: &str| Err(BundleError::InvalidId(format!("invalid bundle id {id:?}: {why}")));
    if id.is_empty() || id.len() > 200 {
        return bad("1 to 200 characters");
    }
    if id == "snapshots" || id.starts_with("snapshots/") {
        return bad("`snapshots` is reserved");
    }
    for seg in id.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, `.` or `..` segment");
        }
        if !seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad("letters, digits, `.`, `_`, `-` and `/` only");
        }
    }
    Ok(())
}

fn sha_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn history_key(at: DateTime<Utc>) -> String {
    let micros = at.timestamp_micros().max(0) as u64;
    let salt: u16 = rand::random();
    format!("{HISTORY_PREFIX}{:020}-{salt:04x}", u64::MAX - micros)
}

/// The pack owning a live bundle (`<pack>/...` fragments of source `pack`).
fn owner(bundle: &StoredBundle) -> Option<String> {
    (bundle.source == "pack").then(|| bundle.id.split('/').next().unwrap_or(&bundle.id).to_string())
}

fn diff(before: &[SnapshotBundle], after: &[SnapshotBundle]) -> Changes {
    let old: BTreeMap<&str, &str> = before.iter().map(|b| (b.id.as_str(), b.sha256.as_str())).collect();
    let new: BTreeMap<&str, &str> = after.iter().map(|b| (b.id.as_str(), b.sha256.as_str())).collect();
    let mut changes = Changes::default();
    for (id, sha) in &new {
        match old.get(id) {
            None => changes.added.push(id.to_string()),
            Some(s) if s != sha => changes.changed.push(id.to_string()),
            _ => {}
        }
    }
    changes.removed = old.keys().filter(|id| !new.contains_key(*id)).map(|s| s.to_string()).collect();
    changes
}

/// Enabled live bundles as a snapshot lists them (merge order).
fn snapshot_bundles(live: &BTreeMap<String, StoredBundle>) -> Vec<SnapshotBundle> {
    live.values()
        .filter(|b| b.enabled)
        .map(|b| SnapshotBundle {
            id: b.id.clone(),
            content: b.content.clone(),
            source: b.source.clone(),
            sha256: b.sha256.clone(),
        })
        .collect()
}

impl PolicyService {
    async fn live_map(&self) -> Result<BTreeMap<String, (u64, StoredBundle)>, BundleError> {
        Ok(self.stored_bundles().await?.into_iter().map(|(rev, b)| (b.id.clone(), (rev, b))).collect())
    }

    async fn drafts(&self) -> Result<BTreeMap<String, (u64, Draft)>, BundleError> {
        let mut out = BTreeMap::new();
        for (_, entry) in self.store().scan(DRAFT_PREFIX, None, 100_000).await? {
            let draft: Draft = entry.json()?;
            out.insert(draft.id.clone(), (entry.revision, draft));
        }
        Ok(out)
    }

    /// Every bundle, live or drafted, sorted by id.
    pub async fn list_bundles(&self) -> Result<Vec<BundleView>, BundleError> {
        let live = self.live_map().await?;
        let drafts = self.drafts().await?;
        let mut ids: Vec<&String> = live.keys().chain(drafts.keys()).collect();
        ids.sort();
        ids.dedup();
        Ok(ids.into_iter().map(|id| view(id, live.get(id).map(|(_, b)| b), drafts.get(id).map(|(_, d)| d))).collect())
    }

    pub async fn get_bundle(&self, id: &str) -> Result<BundleView, BundleError> {
        let live = self.store().get(&format!("{BUNDLE_PREFIX}{id}")).await?.map(|e| e.json::<StoredBundle>());
        let draft = self.store().get(&format!("{DRAFT_PREFIX}{id}")).await?.map(|e| e.json::<Draft>());
        let live = live.transpose()?;
        let draft = draft.transpose()?;
        if live.is_none() && draft.is_none() {
            return Err(BundleError::NotFound);
        }
        Ok(view(id, live.as_ref(), draft.as_ref()))
    }

    /// Save a draft of a user bundle: validated against the active policy
    /// (diagnostics carry line and column), nothing live changes.
    pub async fn save_draft(
        &self,
        id: &str,
        content: &str,
        enabled: Option<bool>,
        author: &str,
        message: &str,
    ) -> Result<BundleView, BundleError> {
        validate_id(id)?;
        self.refuse_pack_bundle(id).await?;
        // Not named: the bundle keeps its state (a new one is enabled).
        let enabled = match enabled {
            Some(e) => e,
            None => match self.get_bundle(id).await {
                Ok(v) => v.enabled || v.content.is_none(),
                Err(_) => true,
            },
        };
        if content.trim().is_empty() {
            return Err(BundleError::Invalid(vec![Diagnostic {
                bundle_id: id.to_string(),
                line: 0,
                column: 0,
                message: "content required".into(),
            }]));
        }
        let diags: Vec<Diagnostic> = self.check_with(&[(id.to_string(), content.to_string())])?;
        if !diags.is_empty() {
            return Err(BundleError::Invalid(diags));
        }
        let draft = Draft {
            id: id.to_string(),
            content: Some(content.to_string()),
            enabled,
            author: author.to_string(),
            message: message.to_string(),
            updated_at: Utc::now(),
        };
        self.store().apply(vec![Op::put_json(format!("{DRAFT_PREFIX}{id}"), &draft)]).await?;
        self.get_bundle(id).await
    }

    /// Delete a user bundle: a live one gets a deletion draft (it goes at
    /// the next publish); a draft-only one is dropped at once.
    pub async fn delete_bundle(&self, id: &str, author: &str) -> Result<(), BundleError> {
        self.refuse_pack_bundle(id).await?;
        let live = self.store().get(&format!("{BUNDLE_PREFIX}{id}")).await?;
        let draft = self.store().get(&format!("{DRAFT_PREFIX}{id}")).await?;
        match (live, draft) {
            (None, None) => Err(BundleError::NotFound),
            (None, Some(_)) => {
                self.store().apply(vec![Op::Delete { key: format!("{DRAFT_PREFIX}{id}") }]).await?;
                Ok(())
            }
            (Some(_), _) => {
                let draft = Draft {
                    id: id.to_string(),
                    content: None,
                    enabled: false,
                    author: author.to_string(),
                    message: String::new(),
                    updated_at: Utc::now(),
                };
                self.store().apply(vec![Op::put_json(format!("{DRAFT_PREFIX}{id}"), &draft)]).await?;
                Ok(())
            }
        }
    }

    async fn refuse_pack_bundle(&self, id: &str) -> Result<(), BundleError> {
        if let Some(entry) = self.store().get(&format!("{BUNDLE_PREFIX}{id}")).await? {
            let bundle: StoredBundle = entry.json()?;
            if let Some(pack) = owner(&bundle) {
                return Err(BundleError::OwnedByPack { id: id.to_string(), pack });
            }
        }
        Ok(())
    }

    /// The stored drafts as an overlay for dry runs (`None` = removed).
    pub async fn draft_overlay(&self) -> Result<Vec<(String, Option<String>)>, BundleError> {
        Ok(self
            .drafts()
            .await?
            .into_values()
            .map(|(_, d)| {
                let content = if d.enabled { d.content } else { None };
                (d.id, content)
            })
            .collect())
    }

    /// Publish the drafts (all, or those named): see the module doc.
    pub async fn publish(&self, only: &[String], by: &str, message: &str) -> Result<Published, BundleError> {
        let _one_at_a_time = self.publishing.lock().await;
        for _ in 0..5 {
            // The head first: the compare-and-set then covers everything read after it.
            let head = self.store().get(HEAD_KEY).await?.map(|h| h.revision).unwrap_or(0);
            let live = self.live_map().await?;
            let drafts = self.drafts().await?;
            // A named bundle that is neither live nor drafted is a mistake, not a no-op.
            if only.iter().any(|id| !live.contains_key(id) && !drafts.iter().any(|(d, _)| d == id)) {
                return Err(BundleError::NotFound);
            }
            let targets: Vec<&(u64, Draft)> =
                drafts.iter().filter(|(id, _)| only.is_empty() || only.contains(id)).map(|(_, d)| d).collect();
            let before: BTreeMap<String, StoredBundle> =
                live.iter().map(|(k, (_, b))| (k.clone(), b.clone())).collect();
            let mut after = before.clone();
            let mut ops = Vec::new();
            let now = Utc::now();
            let mut published = Vec::new();
            for (rev, draft) in &targets {
                if let Some(pack) = before.get(&draft.id).and_then(owner) {
                    // A pack was installed with this id after the draft was saved.
                    return Err(BundleError::OwnedByPack { id: draft.id.clone(), pack });
                }
                published.push(draft.id.clone());
                ops.push(Op::DeleteIfRevision { key: format!("{DRAFT_PREFIX}{}", draft.id), expected: *rev });
                match &draft.content {
                    None => {
                        after.remove(&draft.id);
                        ops.push(Op::Delete { key: format!("{BUNDLE_PREFIX}{}", draft.id) });
                    }
                    Some(content) => {
                        let bundle = StoredBundle {
                            id: draft.id.clone(),
                            content: content.clone(),
                            source: "user".into(),
                            enabled: draft.enabled,
                            sha256: sha_hex(content),
                            updated_at: now,
                        };
                        ops.push(Op::put_json(format!("{BUNDLE_PREFIX}{}", draft.id), &bundle));
                        after.insert(draft.id.clone(), bundle);
                    }
                }
            }
            match self.commit(head, &before, &after, ops, "publish", by, message, None).await? {
                Some(mut out) => {
                    out.published = published;
                    return Ok(out);
                }
                None => continue,
            }
        }
        Err(BundleError::Busy)
    }

    /// Restore the user bundles of snapshot `target` (pack fragments stay
    /// as installed).
    pub async fn rollback(&self, target: &str, by: &str, message: &str) -> Result<Published, BundleError> {
        let record = self.snapshot(target).await?;
        let _one_at_a_time = self.publishing.lock().await;
        for _ in 0..5 {
            let head = self.store().get(HEAD_KEY).await?.map(|h| h.revision).unwrap_or(0);
            let live = self.live_map().await?;
            let before: BTreeMap<String, StoredBundle> =
                live.iter().map(|(k, (_, b))| (k.clone(), b.clone())).collect();
            let wanted: BTreeMap<&str, &SnapshotBundle> =
                record.bundles.iter().filter(|b| b.source != "pack").map(|b| (b.id.as_str(), b)).collect();
            let mut after = before.clone();
            let mut ops = Vec::new();
            let now = Utc::now();
            // Enabled user bundles the snapshot did not have go.
            for (id, bundle) in &before {
                if bundle.source != "pack" && bundle.enabled && !wanted.contains_key(id.as_str()) {
                    after.remove(id);
                    ops.push(Op::Delete { key: format!("{BUNDLE_PREFIX}{id}") });
                }
            }
            for (id, b) in &wanted {
                if before.get(*id).is_some_and(|cur| cur.source == "pack") {
                    continue; // a pack owns this id now
                }
                if before.get(*id).is_some_and(|cur| cur.enabled && cur.sha256 == b.sha256) {
                    continue;
                }
                let bundle = StoredBundle {
                    id: id.to_string(),
                    content: b.content.clone(),
                    source: "user".into(),
                    enabled: true,
                    sha256: b.sha256.clone(),
                    updated_at: now,
                };
                ops.push(Op::put_json(format!("{BUNDLE_PREFIX}{id}"), &bundle));
                after.insert(id.to_string(), bundle);
            }
            if let Some(out) = self.commit(head, &before, &after, ops, "rollback", by, message, Some(target)).await? {
                return Ok(out);
            }
        }
        Err(BundleError::Busy)
    }

    /// Validate `after`, write `ops` with the snapshot, history entry and
    /// head CAS in one batch, then activate. `None`: the head moved (retry).
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        head_revision: u64,
        before: &BTreeMap<String, StoredBundle>,
        after: &BTreeMap<String, StoredBundle>,
        mut ops: Vec<Op>,
        action: &str,
        by: &str,
        message: &str,
        rollback_to: Option<&str>,
    ) -> Result<Option<Published>, BundleError> {
        let old = snapshot_bundles(before);
        let new = snapshot_bundles(after);
        let pairs = |bs: &[SnapshotBundle]| bs.iter().map(|b| (b.id.clone(), b.content.clone())).collect::<Vec<_>>();
        let old_id = self.snapshot_id_of(&pairs(&old));
        let new_id = self.snapshot_id_of(&pairs(&new));
        let changes = diff(&old, &new);
        if new_id == old_id {
            // The policy stays as it is (drafts equal to what is live, or
            // edits of disabled bundles): write them, no new snapshot.
            ops.push(Op::PutIfRevision {
                key: HEAD_KEY.into(),
                value: to_json(&serde_json::json!({"snapshot_id": new_id, "at": Utc::now()})),
                expected: head_revision,
                ttl: None,
            });
            if matches!(self.store().apply(ops).await?, BatchOutcome::Conflict { .. }) {
                return Ok(None);
            }
            return Ok(Some(Published {
                changed: false,
                snapshot_id: old_id.clone(),
                snapshot_before: old_id.clone(),
                snapshot_after: old_id,
                published: Vec::new(),
                changes,
                rollback_to: rollback_to.map(str::to_string),
            }));
        }
        let diags = self.check_loadable(&self.with_base(pairs(&new)))?;
        if !diags.is_empty() {
            return Err(BundleError::Invalid(diags));
        }
        let now = Utc::now();
        ops.extend(self.record_ops(
            &new_id,
            &new,
            Some(&old_id),
            action,
            by,
            message,
            changes.clone(),
            rollback_to,
            now,
        ));
        self.without_existing_snapshot(&new_id, &mut ops).await?;
        ops.push(Op::PutIfRevision {
            key: HEAD_KEY.into(),
            value: to_json(&serde_json::json!({"snapshot_id": new_id, "at": now})),
            expected: head_revision,
            ttl: None,
        });
        match self.store().apply(ops).await? {
            BatchOutcome::Applied(_) => {}
            BatchOutcome::Conflict { .. } => return Ok(None),
        }
        let active = self.reload().await?;
        Ok(Some(Published {
            changed: true,
            snapshot_id: active.id.clone(),
            snapshot_before: old_id,
            snapshot_after: active.id.clone(),
            published: Vec::new(),
            changes,
            rollback_to: rollback_to.map(str::to_string),
        }))
    }

    /// The base policy followed by `bundles` (component bundles included).
    pub(crate) fn with_base(&self, bundles: Vec<(String, String)>) -> Vec<(String, String)> {
        self.base.clone().into_iter().chain(bundles).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn record_ops(
        &self,
        id: &str,
        bundles: &[SnapshotBundle],
        previous: Option<&str>,
        action: &str,
        by: &str,
        message: &str,
        changes: Changes,
        rollback_to: Option<&str>,
        at: DateTime<Utc>,
    ) -> Vec<Op> {
        let snapshot = SnapshotRecord {
            snapshot_id: id.to_string(),
            bundles: bundles.to_vec(),
            created_at: at,
            created_by: by.into(),
        };
        let entry = HistoryEntry {
            snapshot_id: id.to_string(),
            previous: previous.map(str::to_string),
            action: action.to_string(),
            by: by.to_string(),
            at,
            message: message.to_string(),
            changes,
            rollback_to: rollback_to.map(str::to_string),
        };
        vec![
            // Content-addressed: an existing record already says the same
            // (`without_existing_snapshot` drops this op then).
            Op::PutIfAbsent { key: format!("{SNAPSHOT_PREFIX}{id}"), value: to_json(&snapshot), ttl: None },
            Op::put_json(history_key(at), &entry),
        ]
    }

    /// Drop the snapshot write of `ops` when that snapshot is stored already
    /// (returning to an earlier policy re-uses its record).
    async fn without_existing_snapshot(&self, id: &str, ops: &mut Vec<Op>) -> Result<(), BundleError> {
        let key = format!("{SNAPSHOT_PREFIX}{id}");
        if self.store().get(&key).await?.is_some() {
            ops.retain(|op| !matches!(op, Op::PutIfAbsent { key: k, .. } if *k == key));
        }
        Ok(())
    }

    /// Record the active policy in the history if it is not the head yet
    /// (after a pack install or uninstall, or a start with a new base file).
    pub async fn record_active(&self, action: &str, by: &str, message: &str) -> Result<(), BundleError> {
        for _ in 0..5 {
            let active = self.active();
            let head = self.store().get(HEAD_KEY).await?;
            let head_id = match &head {
                Some(h) => {
                    h.json::<serde_json::Value>()?.get("snapshot_id").and_then(|v| v.as_str()).map(str::to_string)
                }
                None => None,
            };
            if head_id.as_deref() == Some(active.id.as_str()) {
                return Ok(());
            }
            let live: BTreeMap<String, StoredBundle> =
                self.live_map().await?.into_iter().map(|(k, (_, b))| (k, b)).collect();
            let new = snapshot_bundles(&live);
            let old = match &head_id {
                Some(id) => self.snapshot(id).await.map(|s| s.bundles).unwrap_or_default(),
                None => Vec::new(),
            };
            let now = Utc::now();
            let mut ops =
                self.record_ops(&active.id, &new, head_id.as_deref(), action, by, message, diff(&old, &new), None, now);
            self.without_existing_snapshot(&active.id, &mut ops).await?;
            ops.push(Op::PutIfRevision {
                key: HEAD_KEY.into(),
                value: to_json(&serde_json::json!({"snapshot_id": active.id, "at": now})),
                expected: head.map(|h| h.revision).unwrap_or(0),
                ttl: None,
            });
            if let BatchOutcome::Applied(_) = self.store().apply(ops).await? {
                return Ok(());
            }
        }
        Err(BundleError::Busy)
    }

    pub async fn snapshot(&self, id: &str) -> Result<SnapshotRecord, BundleError> {
        match self.store().get(&format!("{SNAPSHOT_PREFIX}{id}")).await? {
            Some(entry) => Ok(entry.json()?),
            None => Err(BundleError::SnapshotNotFound),
        }
    }

    /// History, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, BundleError> {
        Ok(self.history_page(None, limit).await?.0)
    }

    /// One page of the history, newest first, strictly older than `cursor`
    /// (a page's `next` cursor); `next` is set when older entries follow.
    pub async fn history_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), BundleError> {
        let after = cursor.map(|c| format!("{HISTORY_PREFIX}{c}"));
        let mut page = self.store().scan(HISTORY_PREFIX, after.as_deref(), limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|(k, _)| k[HISTORY_PREFIX.len()..].to_string()) } else { None };
        let items = page
            .into_iter()
            .map(|(_, e)| e.json::<HistoryEntry>().map_err(BundleError::from))
            .collect::<Result<_, _>>()?;
        Ok((items, next))
    }
}

fn view(id: &str, live: Option<&StoredBundle>, draft: Option<&Draft>) -> BundleView {
    let source = live.map(|b| b.source.clone()).unwrap_or_else(|| "user".into());
    let content = match (draft, live) {
        (Some(d), _) => d.content.clone(),
        (None, Some(b)) => Some(b.content.clone()),
        (None, None) => None,
    };
    let is_component = content.as_deref().is_some_and(|c| super::component_ref::parse(id, c).is_some());
    BundleView {
        id: id.to_string(),
        kind: if is_component { "component" } else { "rules" },
        pack_id: live.and_then(owner),
        sha256: content.as_deref().map(sha_hex).unwrap_or_default(),
        content,
        enabled: draft.map(|d| d.enabled).or(live.map(|b| b.enabled)).unwrap_or(false),
        published: live.is_some() && draft.is_none(),
        live: live.is_some(),
        draft: draft.map(|d| if d.content.is_none() { "delete".into() } else { "edit".into() }),
        updated_at: draft.map(|d| d.updated_at).or(live.map(|b| b.updated_at)),
        author: draft.map(|d| d.author.clone()),
        message: draft.map(|d| d.message.clone()).filter(|m| !m.is_empty()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_like() {
        assert!(validate_id("secops/invariants").is_ok());
        assert!(validate_id("team-a/rules.v2").is_ok());
        for bad in ["", "a//b", "../x", "a/./b", "a b", "x/"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_keys_sort_newest_first() {
        let older = history_key(DateTime::from_timestamp(1_000, 0).unwrap());
        let newer = history_key(DateTime::from_timestamp(2_000, 0).unwrap());
        assert!(newer < older);
    }

    #[test]
    fn diff_names_added_changed_removed() {
        let b = |id: &str, sha: &str| SnapshotBundle {
            id: id.into(),
            content: String::new(),
            source: "user".into(),
            sha256: sha.into(),
        };
        let changes = diff(&[b("a", "1"), b("b", "1")], &[b("a", "2"), b("c", "1")]);
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.changed, ["a"]);
        assert_eq!(changes.removed, ["b"]);
    }
}
