//! Unified YAML diffs with the server's noise stripped and secrets masked.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::karpenter::{ANNOTATION_ORIGINAL, HOLDER_PREFIX};
use crate::secret::is_fingerprint;

/// What the diff leaves out: fields the server owns, and rayform's own bookkeeping.
fn normalize(object: &Value, secret_after: Option<(&BTreeMap<String, String>, &Value)>) -> Value {
    let mut o = object.clone();
    if let Some(obj) = o.as_object_mut() {
        obj.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "managedFields",
            "resourceVersion",
            "uid",
            "generation",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.retain(|k, _| {
                k != "kubectl.kubernetes.io/last-applied-configuration"
                    && k != ANNOTATION_ORIGINAL
                    && !k.starts_with(HOLDER_PREFIX)
            });
            if ann.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    // Secret data is compared by fingerprint and shown only as a mask. Any
    // value that is not a fingerprint is masked too: a diff must never be
    // where a token leaks, whatever went wrong upstream.
    let is_secret = o["kind"] == "Secret"
        || o.get("data").is_some_and(|d| {
            d.as_object()
                .is_some_and(|m| m.values().any(|v| v.as_str().is_some_and(is_fingerprint)))
        });
    if is_secret && let Some(data) = o.get_mut("data").and_then(Value::as_object_mut) {
        for (k, v) in data.iter_mut() {
            let changed = v.as_str().is_some_and(is_fingerprint)
                && secret_after.is_some_and(|(_, live)| {
                    live.pointer(&format!("/data/{k}"))
                        .is_some_and(|old| old != v)
                });
            *v = Value::String(
                if changed {
                    "(sensitive value changed)"
                } else {
                    "(sensitive value)"
                }
                .into(),
            );
        }
    }
    o
}

fn yaml(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    serde_saphyr::to_string(v)
        .unwrap_or_else(|_| serde_json::to_string_pretty(v).unwrap_or_default())
}

/// What the two sides of a diff are, for its `---`/`+++` header.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sides {
    /// The live object → what the server says the apply makes of it.
    LivePlanned,
    /// What rayform last applied → what is live now (changed outside rayform).
    AppliedLive,
    /// The fields rayform writes, live → desired, computed without a dry run.
    LiveDesired,
}

impl Sides {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Sides::LivePlanned => ("live", "planned"),
            Sides::AppliedLive => ("last applied by rayform", "live"),
            Sides::LiveDesired => ("live", "planned (computed locally, no server dry run)"),
        }
    }
}

/// Diff of `before` → `after`, or `None` if they are the same once normalized.
/// `secrets` marks `after` as carrying desired secret fingerprints to compare against `before`.
pub(super) fn unified(
    before: &Value,
    after: &Value,
    secrets: Option<&BTreeMap<String, String>>,
    sides: Sides,
) -> Option<String> {
    let b = normalize(before, None);
    let a = normalize(after, secrets.map(|s| (s, before)));
    let (b, a) = (yaml(&b), yaml(&a));
    if a == b {
        return None;
    }
    let diff = similar::TextDiff::from_lines(&b, &a);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(sides.labels().0, sides.labels().1)
            .to_string(),
    )
}
