//! `import`: an object the stack declares, made by hand before rayform ran,
//! recorded in the state as it is now (nothing is written to the cluster).
//! Its desired fingerprint is left empty, so the next plan compares it with
//! the stack and shows what apply would change.

use std::collections::BTreeMap;

use super::{OpsError, Session};
use crate::cluster::Cluster;
use crate::desired::{self, Desired, DesiredObject, Secrets};
use crate::stack::{Address, ResourceSpec};
use crate::state::{ResourceState, State};

/// Records `address` in the state, under the session's lock; returns the
/// uid of the object found.
pub async fn import(session: &mut Session, address: &str) -> Result<String, OpsError> {
    let fail = |m: String| Err(OpsError::Refused(m));
    let Some(address) = Address::parse(address) else {
        return fail(format!(
            "`{address}` is not an address like secret.hf-token"
        ));
    };
    let (s, state) = (&session.stack, &session.state);
    if state.resources.contains_key(&address) {
        return fail(format!(
            "{address} is already in the state; nothing to import"
        ));
    }
    let mut desired = desired::render(s, &state.fingerprint_key, &state.lineage, Secrets::Skip)?;
    // A class made from another is recorded as apply would write it, so
    // the next plan does not show the copied fields as a change.
    let incomplete = crate::observe::complete_classes(&session.cluster, &mut desired).await?;
    if let Some(why) = incomplete.get(&address) {
        return fail(format!("{address}: {why}"));
    }
    // The Provisioner beside a NodePool is the NodePool's intent's: patched,
    // like the NodePool, so nothing to import.
    let want = match desired.get(&address.declared()) {
        Some(Desired::Object(o)) => o,
        Some(_) => {
            return fail(format!(
                "{address}: only objects rayform creates (secret, rayservice, manifest, gpupool, gpuclass) can be imported; Karpenter objects are patched, not owned"
            ));
        }
        None => return fail(format!("{address} is not in {}", s.file.display())),
    };
    // The keys a Secret declares; their values are not needed to import it.
    let secret_keys: Vec<String> = s
        .resources
        .iter()
        .filter(|r| r.address == address)
        .filter_map(|r| match &r.spec {
            ResourceSpec::Secret(spec) => Some(spec.data.keys().cloned().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let entry = as_found(&session.cluster, &address, want, &secret_keys, state).await?;
    let uid = entry.uid.clone().unwrap_or_default();
    let state = &mut session.state;
    state.released.remove(&address);
    state.resources.insert(address, entry);
    if state.cluster.is_none() {
        state.cluster = Some(session.cluster.id.clone());
    }
    let lock = super::held(&session.lock)?;
    session.backend.save(&mut session.state, lock).await?;
    Ok(uid)
}

/// The state entry for the live object `want` names, as it is now.
async fn as_found(
    cluster: &Cluster,
    address: &Address,
    want: &DesiredObject,
    secret_keys: &[String],
    state: &State,
) -> Result<ResourceState, OpsError> {
    let fail = |message: String| OpsError::Refused(format!("{address}: {message}"));
    let kind = cluster.kind(&want.api_version, &want.kind).ok_or_else(|| {
        fail(crate::cluster::missing_kind_message(
            &want.api_version,
            &want.kind,
        ))
    })?;
    let mut want = want.clone();
    if !kind.namespaced {
        want.set_cluster_scoped();
    }
    let namespace = kind.namespaced.then_some(want.namespace.as_str());
    let found = cluster.get(&kind, namespace, &want.name).await;
    let found = found.map_err(|source| crate::apply::ApplyError::Cluster {
        address: address.clone(),
        source: Box::new(source),
    })?;
    let Some(mut live) = found else {
        let place = namespace
            .map(|n| format!(" in namespace {n}"))
            .unwrap_or_default();
        return Err(fail(format!(
            "{} `{}`{place} does not exist; there is nothing to import\n  help: `rayform apply STACK` creates it",
            want.kind, want.name
        )));
    };
    if let Some(other) = desired::other_stack(&live, &state.stack) {
        return Err(fail(format!(
            "{} `{}` belongs to rayform stack `{other}` (label {}={other}); import takes only objects no live stack manages\n  help: to take it from stack `{other}`, `rayform plan STACK --adopt {address}` shows what that changes",
            want.kind,
            want.name,
            desired::LABEL_STACK
        )));
    }
    if let Some(other) = desired::other_lineage(&live, &state.lineage) {
        return Err(fail(format!(
            "{} `{}` was made by another rayform state of this stack name (lineage {other}); import it with that state\n  help: or take it over: `rayform plan STACK --adopt {address}` shows what that changes",
            want.kind, want.name
        )));
    }
    desired::fingerprint_secret_data(&mut live, &state.fingerprint_key);
    // A Secret's data is recorded as found (keyed fingerprints of the keys
    // the stack declares), so the next plan compares values, not "{}".
    let found: BTreeMap<String, String> = secret_keys
        .iter()
        .filter_map(|k| Some((k.clone(), live["data"][k].as_str()?.to_string())))
        .collect();
    let mut masked = want.masked_body();
    if want.is_secret() {
        masked["data"] = serde_json::to_value(&found).unwrap_or_default();
    }
    Ok(ResourceState {
        secret_fingerprints: found,
        ..crate::apply::entry::as_found(
            (&want.api_version, &want.kind, &want.name),
            namespace,
            &live,
            &masked,
        )
    })
}
