//! The plan: desired vs state vs live, decided per resource. Pure: it reads
//! a [`World`] and makes no cluster calls, so it can be shown, saved, and
//! applied later exactly as reviewed.
//!
//! Each resource gets one [`Change`], whose [`Op`] holds what its action
//! needs (`change.rs`). "Changed outside rayform" is detected
//! by comparing the live fields rayform writes with the fingerprint the state
//! recorded right after rayform last wrote them.

mod change;
mod checks;
mod diff;
mod kuberay_hash;
mod object;
mod patch;
mod quantity;
mod render;
pub mod rollout;
mod scope;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::{self, Desired, DesiredObject, LABEL_STACK};
use crate::graph::Graph;
use crate::karpenter;
use crate::observe::{Observed, ObservedObject, ObservedPatch, Unlabelled, World};
use crate::stack::{Address, ResourceType, Stack};
use crate::state::{ResourceState, State};
use crate::target::ClusterId;
use diff::Sides;
use object::{assess_rollout, plan_object, unknown_until_applied};
use patch::{plan_patch, resource_version};

pub use change::{Action, Change, Edit, Keep, Op, Payload, Refusal, Seen, Write};
pub use render::{RenderOptions, render_json, render_text};

/// Version of the saved-plan and `--json` format.
pub const FORMAT_VERSION: &str = "1.1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: String,
    pub rayform_version: String,
    pub destroy: bool,
    pub stack: String,
    pub stack_file: PathBuf,
    pub namespace: String,
    /// Where the state this plan was made from is kept.
    pub state: crate::stack::StateLocation,
    pub state_lineage: String,
    pub state_serial: u64,
    /// The state had no file yet when this plan was made.
    pub state_new: bool,
    pub cluster: ClusterId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub karpenter: Option<String>,
    pub changes: Vec<Change>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub patch: usize,
    pub revert: usize,
    /// Reverts that only let go of a Karpenter object another stack still holds.
    pub release: usize,
    /// Entries the state stops tracking; the objects (if any) stay.
    pub forget: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action() {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Delete => s.destroy += 1,
                Action::Patch => s.patch += 1,
                Action::Revert if c.released_to().is_some() => s.release += 1,
                Action::Revert => s.revert += 1,
                Action::Forget => s.forget += 1,
                Action::NoOp | Action::Wait => {}
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action().is_change())
    }

    /// What a person is asked to approve: every change to the cluster, and
    /// every entry the state will stop tracking, as its object may still run.
    pub fn needs_approval(&self) -> bool {
        self.has_changes() || self.changes.iter().any(|c| c.action() == Action::Forget)
    }

    pub fn change(&self, address: &Address) -> Option<&Change> {
        self.changes.iter().find(|c| &c.address == address)
    }

    /// Refuses a saved plan whose changes do not hold together (see
    /// [`change::check_links`]); each change's own shape was checked as it
    /// was read.
    pub fn check_saved(&self) -> Result<(), String> {
        change::check_links(&self.changes)
    }
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub destroy: bool,
    pub force_conflicts: bool,
    /// Objects the user allows rayform to take over though it did not create them.
    pub adopt: BTreeSet<Address>,
    /// `--target`: only these and what they need (empty: everything).
    pub targets: BTreeSet<Address>,
    /// `--refresh-only`: change nothing, record what is live.
    pub refresh_only: bool,
}

/// Decides what to do with every resource. One function for the order
/// and the plan's header and footer, so the whole walk reads at once; the
/// decision per resource is `plan_one`.
pub fn build(
    stack: &Stack,
    graph: &Graph,
    desired: &BTreeMap<Address, Desired>,
    state: &State,
    state_new: bool,
    world: &World,
    options: &PlanOptions,
) -> Plan {
    let mut order = if options.destroy {
        graph.destroy_order()
    } else {
        graph.apply_order()
    };
    // Resources only the state knows (removed from the stack) go last.
    order.extend(
        state
            .resources
            .keys()
            .filter(|a| stack.get(a).is_none())
            .cloned(),
    );
    let mut order = next_to_their_pools(order, world);
    if !options.targets.is_empty() {
        // A target covers the Provisioner beside it, as Terraform's covers
        // every instance of a resource.
        let keep = scope::targeted(graph, &options.targets, options.destroy);
        order.retain(|a| keep.contains(a) || keep.contains(&a.declared()));
    }
    let mut plan = Plan {
        format_version: FORMAT_VERSION.into(),
        rayform_version: env!("CARGO_PKG_VERSION").into(),
        destroy: options.destroy,
        stack: stack.name.clone(),
        stack_file: stack.file.clone(),
        namespace: stack.namespace.clone(),
        state: stack.state.clone(),
        state_lineage: state.lineage.clone(),
        state_serial: state.serial,
        state_new,
        cluster: world.cluster.clone(),
        karpenter: karpenter_summary(world),
        changes: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    for address in order {
        let Some(observed) = world.resources.get(&address) else {
            continue;
        };
        let change = plan_one(
            &address,
            observed,
            desired,
            state,
            world,
            options,
            &mut plan.warnings,
        );
        // Forgetting what the state never had is nothing to do: a destroy of
        // a stack never applied (or destroyed already) lists nothing.
        let change = change
            .filter(|c| c.action() != Action::Forget || state.resources.contains_key(&c.address));
        if let Some(c) = change {
            if let Some(e) = c.error() {
                plan.errors.push(format!("{}: {e}", c.address));
            }
            plan.changes.push(c);
        }
    }
    if state_new {
        for diff in plan.changes.iter_mut().filter_map(Change::diff_mut) {
            *diff = unknown_until_applied(diff, &state.lineage);
        }
    }
    if !options.targets.is_empty() {
        plan.warnings
            .push(scope::targeting_warning(&options.targets));
    }
    if !options.destroy && !options.refresh_only {
        plan.warnings
            .extend(checks::warnings(desired, world, &plan.changes));
    }
    order_changes(&mut plan, graph, options.destroy);
    plan
}

/// Each Provisioner found beside a NodePool right after the NodePool's
/// intent. One the state records comes later in `order` (the state's
/// entries go last, a NodePool's before its Provisioner's), so it is
/// skipped where it was placed already.
fn next_to_their_pools(order: Vec<Address>, world: &World) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::with_capacity(order.len());
    for address in order {
        if address.kind == ResourceType::Provisioner && out.contains(&address) {
            continue;
        }
        let beside = address.beside().filter(|b| world.resources.contains_key(b));
        out.push(address);
        out.extend(beside);
    }
    out
}

/// The change for one resource, by what was observed of it.
fn plan_one(
    address: &Address,
    observed: &Observed,
    desired: &BTreeMap<Address, Desired>,
    state: &State,
    world: &World,
    options: &PlanOptions,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    if options.refresh_only {
        return scope::refresh(address, observed, state);
    }
    let wanted = if options.destroy {
        None
    } else {
        desired.get(address)
    };
    match observed {
        Observed::Wait => match wanted {
            Some(Desired::Wait(w)) => {
                let identity = ("", "", w.wait.rayservice.as_str());
                Some(Change::new(address, identity, Op::Wait(w.clone())))
            }
            _ => None,
        },
        Observed::Patch(o) => {
            // The Provisioner beside a NodePool is wanted with the intent,
            // while it stands there.
            let wanted = match address.kind {
                ResourceType::Provisioner => {
                    !options.destroy && desired.contains_key(&address.declared()) && !o.gone
                }
                _ => wanted.is_some(),
            };
            let drift_off = world.karpenter.drift_off_by_default();
            plan_patch(address, o, wanted, state, drift_off, warnings)
        }
        Observed::Object(o) => {
            let mut c = plan_object(address, o, wanted, desired.get(address), state, options)?;
            let rollout = assess_rollout(&c, o);
            if let Some(w) = c.write_mut() {
                w.rollout = rollout;
            }
            Some(c)
        }
    }
}

/// Ordering constraints between the changes actually in the plan.
fn order_changes(plan: &mut Plan, graph: &Graph, destroy: bool) {
    let present: BTreeSet<Address> = plan.changes.iter().map(|c| c.address.clone()).collect();
    for c in &mut plan.changes {
        let deps = if destroy {
            graph.dependents(&c.address)
        } else {
            graph.dependencies(&c.address)
        };
        // What waits for a NodePool's patch waits for its Provisioner's too.
        c.depends_on = deps
            .into_iter()
            .flat_map(|d| {
                let beside = d.beside();
                [Some(d), beside].into_iter().flatten()
            })
            .filter(|d| present.contains(d))
            .collect();
    }
    if !destroy {
        return;
    }
    // Reverting Karpenter while a workload still runs could let it remove
    // nodes mid-pull: reverts wait for every delete in the plan.
    let deletes: Vec<Address> = plan
        .changes
        .iter()
        .filter(|c| c.action() == Action::Delete)
        .map(|c| c.address.clone())
        .collect();
    for c in plan
        .changes
        .iter_mut()
        .filter(|c| c.address.kind.is_patch())
    {
        for d in &deletes {
            if !c.depends_on.contains(d) {
                c.depends_on.push(d.clone());
            }
        }
    }
}

fn karpenter_summary(world: &World) -> Option<String> {
    let served = &world.karpenter;
    let list = |apis: Vec<(&str, &str)>| {
        apis.iter()
            .map(|(v, k)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pools = list(
        served
            .pools
            .iter()
            .map(|a| (a.api_version(), a.kind()))
            .collect(),
    );
    let classes = list(
        served
            .classes
            .iter()
            .map(|a| (a.api_version(), a.kind()))
            .collect(),
    );
    let apis = match (pools.is_empty(), classes.is_empty()) {
        (true, true) => None,
        (false, false) => Some(format!("{pools} + {classes}")),
        _ => Some(format!("{pools}{classes}")),
    };
    // Auto Mode's NodeClass is not a Karpenter API rayform patches, but it
    // is why the built-in pools and class are refused below.
    apis.map(|apis| match served.auto_mode {
        true => format!("{apis} (EKS Auto Mode: eks.amazonaws.com/v1 NodeClass, built-in pools)"),
        false => apis,
    })
}

#[cfg(test)]
mod tests;
