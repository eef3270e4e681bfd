//! Plans narrower than the whole stack, as Terraform has them:
//!
//! - `--target ADDRESS`: only that resource and what it needs (its
//!   dependencies, transitively), or for a destroy, what needs it (its
//!   dependents), so an apply never creates a RayService before its Secret
//!   and a destroy never deletes a Secret under a running RayService;
//! - `--refresh-only`: nothing in the cluster changes; the state is brought
//!   up to date with what is live (fields changed outside rayform recorded as
//!   they are, objects deleted outside rayform forgotten).

use std::collections::BTreeSet;

use super::diff::{self, Sides};
use super::{Change, Keep, Op, Payload};
use crate::graph::Graph;
use crate::observe::{Observed, ObservedObject, Unlabelled};
use crate::stack::Address;
use crate::state::{ResourceState, State};

/// The targets and everything an apply of them needs (a destroy: everything
/// that needs them). Addresses only the state knows have no edges.
pub(super) fn targeted(
    graph: &Graph,
    targets: &BTreeSet<Address>,
    destroy: bool,
) -> BTreeSet<Address> {
    let mut keep = BTreeSet::new();
    let mut next: Vec<Address> = targets.iter().cloned().collect();
    while let Some(address) = next.pop() {
        if keep.insert(address.clone()) {
            next.extend(if destroy {
                graph.dependents(&address)
            } else {
                graph.dependencies(&address)
            });
        }
    }
    keep
}

/// The warning a targeted plan carries, as Terraform's does.
pub(super) fn targeting_warning(targets: &BTreeSet<Address>) -> String {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    format!(
        "resource targeting is in effect ({}): the plan covers only those and what they depend on, so it may not show every change the stack needs; use it for exceptional cases, then run a plan without --target",
        list.join(", ")
    )
}

/// The change a refresh-only plan makes of one tracked address: record it
/// as it is, forget it if it is gone or no longer this stack's, never
/// write to the cluster. Addresses the state does not track are left out.
pub(super) fn refresh(address: &Address, observed: &Observed, state: &State) -> Option<Change> {
    let st = state.resources.get(address)?;
    let identity = (st.api_version.as_str(), st.kind.as_str(), st.name.as_str());
    let mut c = Change::new(address, identity, Op::NoOp(Keep::Current));
    c.namespace = st.namespace.clone();
    match observed {
        Observed::Wait => return None,
        Observed::Patch(p) if p.gone => {
            c.op = Op::Forget;
            c.reasons.push("deleted outside rayform".into());
        }
        Observed::Patch(_) => {}
        Observed::Object(o) => refresh_object(&mut c, o, st),
    }
    Some(c)
}

fn refresh_object(c: &mut Change, o: &ObservedObject, st: &ResourceState) {
    let still_ours = o.owned || o.unlabelled == Some(Unlabelled::SameUid);
    let Some(live) = o.live.as_ref().filter(|_| still_ours) else {
        c.op = Op::Forget;
        c.reasons.push(if o.live.is_some() {
            "no longer this stack's object (another stack or owner has it)".into()
        } else {
            "deleted outside rayform".into()
        });
        return;
    };
    if o.unchanged || st.applied.is_null() {
        return;
    }
    let applied = st.applied.value();
    let projection = crate::desired::project(live, &applied);
    if crate::util::sha256_json(&projection) == st.live_fingerprint {
        return;
    }
    c.reasons
        .push("changed outside rayform: recorded as it is now".into());
    c.op = Op::NoOp(Keep::Record {
        payload: Payload {
            body: applied.clone(),
            secret_fingerprints: st.secret_fingerprints.clone(),
            // No longer what the stack last wrote: the next plan compares
            // the object with the stack again (and puts the stack's values back).
            desired_fingerprint: String::new(),
        },
        outside_diff: diff::unified(&applied, &projection, None, Sides::AppliedLive),
    });
}
