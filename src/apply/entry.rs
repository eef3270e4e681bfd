//! What the state records of a finished change: the object's identity and
//! the fields rayform set, as they read back, with the fingerprints the next
//! plan compares against. Apply writes these; `import` writes one for an
//! object it finds.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::desired;
use crate::karpenter;
use crate::plan::{Change, Payload};
use crate::state::{PatchState, ResourceState};

/// The entry of an object apply wrote from the stack.
pub(super) fn for_object(c: &Change, live: &Value, payload: &Payload) -> ResourceState {
    ResourceState {
        desired_fingerprint: payload.desired_fingerprint.clone(),
        secret_fingerprints: payload.secret_fingerprints.clone(),
        ..as_found(
            (&c.api_version, &c.kind, &c.name),
            c.namespace.as_deref(),
            live,
            &payload.body,
        )
    }
}

/// The state entry of a live object as it is: its identity, and the fields
/// `masked` sets as they read now. No desired fingerprint: nothing was
/// written from the stack yet.
pub(crate) fn as_found(
    (api_version, kind, name): (&str, &str, &str),
    namespace: Option<&str>,
    live: &Value,
    masked: &Value,
) -> ResourceState {
    let applied = desired::project(live, masked);
    let meta = |field: &str| {
        live.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ResourceState {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
        uid: meta("uid"),
        resource_version: meta("resourceVersion"),
        desired_fingerprint: String::new(),
        live_fingerprint: crate::util::sha256_json(&applied),
        applied: crate::state::Applied::new(&applied),
        secret_fingerprints: BTreeMap::new(),
        patch: None,
    }
}

/// The entry of a Karpenter object rayform patched: the fields it wrote and
/// the originals it must give back.
pub(super) fn for_patch(c: &Change, p: &karpenter::KarpenterPatch) -> ResourceState {
    let written: BTreeMap<&String, &Value> =
        p.fields.iter().map(|(k, f)| (k, &f.written)).collect();
    let applied = serde_json::to_value(&written).unwrap_or_default();
    ResourceState {
        api_version: c.api_version.clone(),
        kind: c.kind.clone(),
        name: c.name.clone(),
        namespace: None,
        uid: None,
        resource_version: None,
        desired_fingerprint: crate::util::sha256_json(&applied),
        live_fingerprint: crate::util::sha256_json(&applied),
        applied: crate::state::Applied::new(&applied),
        secret_fingerprints: BTreeMap::new(),
        patch: Some(PatchState {
            api_version: c.api_version.clone(),
            fields: p.fields.clone(),
        }),
    }
}
