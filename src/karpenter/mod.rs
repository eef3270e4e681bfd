//! Karpenter intents mapped onto whichever Karpenter API the cluster serves,
//! and the bookkeeping that makes the patch exactly reversible.
//!
//! A user says "keep empty nodes 600s" and "give nodes 200Gi". Which fields
//! that means depends on the API generation (v1alpha5 Provisioner, v1beta1 or
//! v1 NodePool; AWSNodeTemplate or EC2NodeClass). The values a field had
//! before any rayform stack touched it are recorded once, on the object
//! itself, so that every stack sharing a NodePool sees the same original and
//! only the last one to let go restores it.
//!
//! Everything here is pure: it reads live objects and returns patches.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::state::{FieldValue, PatchedField};

pub mod automode;
pub mod family;
pub mod fit;
pub mod floor;
pub mod gpu_nodes;
pub mod nodes;

pub use floor::Wanted;

/// Annotation holding the values fields had before the first stack patched them.
pub const ANNOTATION_ORIGINAL: &str = "rayform.io/karpenter-original";
/// Prefix of the per-stack annotation holding what that stack wrote.
pub const HOLDER_PREFIX: &str = "patch.rayform.io/";

/// The NodePool-like kind a cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolApi {
    V1,
    V1beta1,
    V1alpha5,
}

/// The node-class kind a cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassApi {
    V1,
    V1beta1,
    V1alpha1,
}

impl PoolApi {
    /// In order of preference: a Karpenter 1.0 cluster serves v1 and v1beta1.
    pub const ALL: [PoolApi; 3] = [PoolApi::V1, PoolApi::V1beta1, PoolApi::V1alpha5];

    pub fn api_version(self) -> &'static str {
        match self {
            PoolApi::V1 => "karpenter.sh/v1",
            PoolApi::V1beta1 => "karpenter.sh/v1beta1",
            PoolApi::V1alpha5 => "karpenter.sh/v1alpha5",
        }
    }

    pub fn from_api_version(api_version: &str) -> Option<PoolApi> {
        PoolApi::ALL
            .into_iter()
            .find(|api| api.api_version() == api_version)
    }

    pub fn kind(self) -> &'static str {
        match self {
            PoolApi::V1alpha5 => "Provisioner",
            _ => "NodePool",
        }
    }
}

impl ClassApi {
    pub const ALL: [ClassApi; 3] = [ClassApi::V1, ClassApi::V1beta1, ClassApi::V1alpha1];

    pub fn api_version(self) -> &'static str {
        match self {
            ClassApi::V1 => "karpenter.k8s.aws/v1",
            ClassApi::V1beta1 => "karpenter.k8s.aws/v1beta1",
            ClassApi::V1alpha1 => "karpenter.k8s.aws/v1alpha1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            ClassApi::V1alpha1 => "AWSNodeTemplate",
            _ => "EC2NodeClass",
        }
    }
}

/// The Karpenter APIs a cluster serves, most preferred first. Together they
/// say which releases it may run: only v0.32 serves v1alpha5 and v1beta1 at
/// once, v0.33.6-v0.37 serve v1 beside a stored v1beta1, v1.0 serves v1beta1
/// beside a stored v1, v0.31 and older v1alpha5 alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    pub pools: Vec<PoolApi>,
    pub classes: Vec<ClassApi>,
    /// EKS Auto Mode: its NodeClass API is served (see [`automode`]).
    pub auto_mode: bool,
}

impl Served {
    /// The same APIs with the version each CRD stores first, where the
    /// cluster serves several (`None`: unknown, the order stays). An object
    /// is what its stored version holds: Karpenter v0.33.6-v0.37 convert a
    /// v1beta1 NodePool to v1 with loss (`WhenUnderutilized` with
    /// `consolidateAfter: Never` reads as `WhenEmptyOrUnderutilized`, `0s`),
    /// so reading or patching it through v1 would judge and write values
    /// that are not the pool's.
    pub fn stored_first(mut self, pool: Option<&str>, class: Option<&str>) -> Served {
        if let Some(stored) = pool.and_then(|v| {
            PoolApi::ALL
                .into_iter()
                .find(|a| a.kind() == "NodePool" && a.api_version() == format!("karpenter.sh/{v}"))
        }) && let Some(at) = self.pools.iter().position(|a| *a == stored)
        {
            let api = self.pools.remove(at);
            self.pools.insert(0, api);
        }
        if let Some(stored) = class.and_then(|v| {
            ClassApi::ALL.into_iter().find(|a| {
                a.kind() == "EC2NodeClass" && a.api_version() == format!("karpenter.k8s.aws/{v}")
            })
        }) && let Some(at) = self.classes.iter().position(|a| *a == stored)
        {
            let api = self.classes.remove(at);
            self.classes.insert(0, api);
        }
        self
    }

    pub fn pool(&self) -> Option<PoolApi> {
        self.pools.first().copied()
    }

    pub fn class(&self) -> Option<ClassApi> {
        self.classes.first().copied()
    }

    /// Drift was alpha and off by default up to v0.32, the last release
    /// serving v1alpha5: a changed class then leaves running nodes alone.
    pub fn drift_off_by_default(&self) -> bool {
        self.pools.contains(&PoolApi::V1alpha5)
    }

    /// Why a pod annotation meant to keep Karpenter off a node may do nothing here.
    pub fn ignored_annotation(&self, annotation: &str) -> Option<String> {
        match annotation {
            // v0.33.6-v0.37 serve v1 too, but store v1beta1 and still
            // honour do-not-evict; from v1.0, where v1 is stored, only
            // do-not-disrupt counts.
            "karpenter.sh/do-not-evict" if self.pool() == Some(PoolApi::V1) => Some(
                "the cluster stores karpenter.sh/v1 NodePools (Karpenter 1.x), and Karpenter 1.x honours only karpenter.sh/do-not-disrupt (do-not-evict was dropped in v1.0)".into(),
            ),
            "karpenter.sh/do-not-disrupt" if self.pools == [PoolApi::V1alpha5] => Some(
                "the cluster serves only karpenter.sh/v1alpha5 (Karpenter v0.31 or older), which honours karpenter.sh/do-not-evict, not do-not-disrupt".into(),
            ),
            _ => None,
        }
    }
}

/// A merge patch for a Karpenter object, with what to verify afterwards.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KarpenterPatch {
    /// The JSON merge patch body (fields, bookkeeping annotations, resourceVersion precondition).
    pub merge: Value,
    /// Field pointer → original and written value, as state records it.
    pub fields: BTreeMap<String, PatchedField>,
    /// Field pointer → value expected after the patch (`None`: absent).
    pub expect: BTreeMap<String, Option<Value>>,
    /// Whether anything would change.
    pub needed: bool,
    /// For a revert: the other stacks that still hold the object, so only
    /// this stack's hold is released and their values stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_by: Vec<String>,
    /// What the patch was computed from ([`basis`]); another write that
    /// leaves it alone (Karpenter's own status updates) does not void it.
    #[serde(default)]
    pub basis: String,
}

fn annotations(live: &Value) -> BTreeMap<String, String> {
    live.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Originals recorded on the object by whichever stack patched first.
pub fn recorded_originals(live: &Value) -> BTreeMap<String, FieldValue> {
    annotations(live)
        .get(ANNOTATION_ORIGINAL)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Why the object's originals annotation cannot be read, if it is there and
/// broken. A patch must then stop: the live fields may already hold patched
/// values, and recording those as "original" would make the last destroy
/// restore the patch.
pub fn unreadable_originals(live: &Value) -> Option<String> {
    let text = annotations(live).remove(ANNOTATION_ORIGINAL)?;
    serde_json::from_str::<BTreeMap<String, FieldValue>>(&text)
        .err()
        .map(|e| e.to_string())
}

/// Stacks holding a patch on this object → the values each wrote.
pub fn holders(live: &Value) -> BTreeMap<String, BTreeMap<String, Value>> {
    annotations(live)
        .into_iter()
        .filter_map(|(k, v)| {
            let stack = k.strip_prefix(HOLDER_PREFIX)?.to_string();
            Some((stack, serde_json::from_str(&v).ok()?))
        })
        .collect()
}

/// Patch `fields` onto `live` for `stack`, recording originals not yet recorded.
pub fn patch(stack: &str, live: &Value, fields: &BTreeMap<String, Value>) -> KarpenterPatch {
    let mut originals = recorded_originals(live);
    let mut recorded = BTreeMap::new();
    for (ptr, value) in fields {
        let original = originals
            .entry(ptr.clone())
            .or_insert_with(|| FieldValue::from_option(live.pointer(ptr)))
            .clone();
        recorded.insert(
            ptr.clone(),
            PatchedField {
                original,
                written: value.clone(),
            },
        );
    }
    let mut expect: BTreeMap<String, Option<Value>> = fields
        .iter()
        .map(|(p, v)| (p.clone(), Some(v.clone())))
        .collect();
    expect.extend(release_dropped(stack, live, fields, &mut originals));
    let holder_key = format!("{HOLDER_PREFIX}{stack}");
    let written = serde_json::to_string(fields).unwrap_or_default();
    let ann = annotations(live);
    let needed = expect.iter().any(|(p, v)| live.pointer(p) != v.as_ref())
        || ann.get(&holder_key) != Some(&written)
        || ann.get(ANNOTATION_ORIGINAL).map(String::as_str)
            != Some(&serde_json::to_string(&originals).unwrap_or_default());
    let mut merge = json!({"metadata": {"annotations": {
        ANNOTATION_ORIGINAL: serde_json::to_string(&originals).unwrap_or_default(),
        holder_key: written,
    }}});
    for (ptr, value) in &expect {
        set_pointer(&mut merge, ptr, value.clone().unwrap_or(Value::Null));
    }
    precondition(&mut merge, live);
    KarpenterPatch {
        merge,
        expect,
        fields: recorded,
        needed,
        held_by: Vec::new(),
        basis: basis(live),
    }
}

/// Fields this stack wrote before but its intent no longer asks for (an
/// older rayform switched v1 pools to `WhenEmpty`): each goes back as a
/// revert would give it back, to another holder's value or the original,
/// so the stack's later destroy has nothing of it left to restore. A value
/// changed since by someone else stays as they set it. Returns the values
/// to write.
fn release_dropped(
    stack: &str,
    live: &Value,
    fields: &BTreeMap<String, Value>,
    originals: &mut BTreeMap<String, FieldValue>,
) -> BTreeMap<String, Option<Value>> {
    let mut all = holders(live);
    let ours = all.remove(stack).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (ptr, written) in ours.iter().filter(|(p, _)| !fields.contains_key(*p)) {
        let theirs = all.values().find_map(|w| w.get(ptr));
        let ours_is_live = live.pointer(ptr) == Some(written);
        match theirs {
            Some(theirs) if ours_is_live => {
                out.insert(ptr.clone(), Some(theirs.clone()));
            }
            Some(_) => {}
            None => {
                let original = originals.remove(ptr).unwrap_or(FieldValue::Absent);
                if ours_is_live {
                    out.insert(ptr.clone(), original.as_option().cloned());
                }
            }
        }
    }
    out
}

/// A field whose live value is neither what this stack wrote nor what another stack holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedField {
    pub pointer: String,
    pub recorded: FieldValue,
    pub written: Value,
    pub live: FieldValue,
}

/// Undo `stack`'s patch: hand the field to another holder if any, else restore the original.
/// `recorded` is the state's copy, used when the object's annotations are gone.
/// Fails with the fields whose live value no rayform stack wrote.
pub fn revert(
    stack: &str,
    live: &Value,
    recorded: &BTreeMap<String, PatchedField>,
) -> Result<KarpenterPatch, Vec<ChangedField>> {
    let (patch, changed) = revert_with(stack, live, recorded);
    if changed.is_empty() {
        Ok(patch)
    } else {
        Err(changed)
    }
}

/// Like [`revert`], but overwrites fields changed outside rayform (`destroy --force`).
pub fn revert_forced(
    stack: &str,
    live: &Value,
    recorded: &BTreeMap<String, PatchedField>,
) -> KarpenterPatch {
    let (mut patch, changed) = revert_with(stack, live, recorded);
    patch.needed |= !changed.is_empty();
    patch
}

/// Whether a field `stack` wrote now holds a value no rayform stack wrote
/// (someone changed it since).
pub fn changed_since_written(stack: &str, live: &Value) -> bool {
    holders(live).contains_key(stack) && revert(stack, live, &BTreeMap::new()).is_err()
}

/// Takes back `stack`'s patch because the original values already satisfy
/// its intent; a stack holding nothing has nothing to take back.
pub fn withdraw(stack: &str, live: &Value) -> Result<KarpenterPatch, Vec<ChangedField>> {
    if !holders(live).contains_key(stack) {
        return Ok(KarpenterPatch {
            merge: json!({}),
            fields: BTreeMap::new(),
            expect: BTreeMap::new(),
            needed: false,
            held_by: Vec::new(),
            basis: basis(live),
        });
    }
    let mut patch = revert(stack, live, &BTreeMap::new())?;
    // Nothing of this stack stays on the object: nothing for destroy to revert.
    patch.fields.clear();
    Ok(patch)
}

fn revert_with(
    stack: &str,
    live: &Value,
    recorded: &BTreeMap<String, PatchedField>,
) -> (KarpenterPatch, Vec<ChangedField>) {
    let all = holders(live);
    let ours: BTreeMap<String, Value> = all.get(stack).cloned().unwrap_or_else(|| {
        recorded
            .iter()
            .map(|(p, f)| (p.clone(), f.written.clone()))
            .collect()
    });
    let others: Vec<&BTreeMap<String, Value>> = all
        .iter()
        .filter(|(s, _)| s.as_str() != stack)
        .map(|(_, w)| w)
        .collect();
    let mut originals = recorded_originals(live);
    for (p, f) in recorded {
        originals
            .entry(p.clone())
            .or_insert_with(|| f.original.clone());
    }
    let mut merge = json!({"metadata": {"annotations": {format!("{HOLDER_PREFIX}{stack}"): null}}});
    if others.is_empty() {
        merge["metadata"]["annotations"][ANNOTATION_ORIGINAL] = Value::Null;
    }
    let mut expect = BTreeMap::new();
    let mut changed = Vec::new();
    let mut fields = BTreeMap::new();
    for (ptr, written) in &ours {
        let live_value = live.pointer(ptr);
        let original = originals.get(ptr).cloned().unwrap_or(FieldValue::Absent);
        let theirs: Vec<&Value> = others.iter().filter_map(|w| w.get(ptr)).collect();
        // Whoever's value is live keeps the field: another stack's value
        // stays; ours goes to another holder, else back to the original.
        let handover = theirs
            .first()
            .map(|v| (*v).clone())
            .or_else(|| original.as_option().cloned());
        let target = if theirs.iter().any(|v| Some(*v) == live_value) {
            live_value.cloned()
        } else {
            if live_value != Some(written) && live_value != handover.as_ref() {
                changed.push(ChangedField {
                    pointer: ptr.clone(),
                    recorded: original.clone(),
                    written: written.clone(),
                    live: FieldValue::from_option(live_value),
                });
            }
            handover
        };
        set_pointer(&mut merge, ptr, target.clone().unwrap_or(Value::Null));
        fields.insert(
            ptr.clone(),
            PatchedField {
                original,
                written: written.clone(),
            },
        );
        expect.insert(ptr.clone(), target);
    }
    precondition(&mut merge, live);
    let needed = expect.iter().any(|(p, v)| live.pointer(p) != v.as_ref())
        || annotations(live).contains_key(&format!("{HOLDER_PREFIX}{stack}"));
    let patch = KarpenterPatch {
        basis: basis(live),
        merge,
        fields,
        expect,
        needed,
        held_by: all
            .keys()
            .filter(|s| s.as_str() != stack)
            .cloned()
            .collect(),
    };
    (patch, changed)
}

/// Fields whose live value differs from what was expected after a patch.
pub fn verify(
    live: &Value,
    expect: &BTreeMap<String, Option<Value>>,
) -> Vec<(String, Option<Value>, Option<Value>)> {
    expect
        .iter()
        .filter(|(p, v)| live.pointer(p) != v.as_ref())
        .map(|(p, v)| (p.clone(), v.clone(), live.pointer(p).cloned()))
        .collect()
}

/// What a patch is computed from: the object's spec (its `generation`, which
/// a status write leaves alone) and rayform's own annotations. Karpenter
/// writes a NodePool's status every few seconds; a patch planned before
/// such a write still holds after it.
pub fn basis(live: &Value) -> String {
    let ours: BTreeMap<String, String> = annotations(live)
        .into_iter()
        .filter(|(k, _)| k.starts_with("rayform.io/"))
        .collect();
    crate::util::sha256_json(&json!({
        "generation": live.pointer("/metadata/generation"),
        "annotations": ours,
    }))
}

/// The same patch against a newer read of an object whose [`basis`] has
/// not changed: only its precondition moves.
pub fn rebased(patch: &KarpenterPatch, live: &Value) -> Option<KarpenterPatch> {
    if patch.basis.is_empty() || basis(live) != patch.basis {
        return None;
    }
    let mut rebased = patch.clone();
    precondition(&mut rebased.merge, live);
    Some(rebased)
}

/// Optimistic concurrency: the patch fails if the object changed since it was read.
fn precondition(merge: &mut Value, live: &Value) {
    if let Some(rv) = live.pointer("/metadata/resourceVersion") {
        merge["metadata"]["resourceVersion"] = rv.clone();
    }
}

/// Sets `/a/b/c` in a merge-patch body, creating objects on the way.
fn set_pointer(body: &mut Value, ptr: &str, value: Value) {
    let mut cur = body;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let part = part.replace("~1", "/").replace("~0", "~");
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[part.as_str()] = value;
            return;
        }
        cur = &mut cur[part.as_str()];
    }
}

/// `spec.disruption.consolidateAfter` for a pointer, as users read fields.
pub fn field_name(ptr: &str) -> String {
    ptr.trim_start_matches('/').replace('/', ".")
}

#[cfg(test)]
mod tests;
