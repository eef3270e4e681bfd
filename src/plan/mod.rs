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
use crate::stack::{Address, Stack};
use crate::state::{ResourceState, State};
use crate::target::ClusterId;
use diff::Sides;

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
    if !options.targets.is_empty() {
        let keep = scope::targeted(graph, &options.targets, options.destroy);
        order.retain(|a| keep.contains(a));
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
            let drift_off = world.karpenter.drift_off_by_default();
            plan_patch(address, o, wanted.is_some(), state, drift_off, warnings)
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
        c.depends_on = deps.into_iter().filter(|d| present.contains(d)).collect();
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

fn plan_patch(
    address: &Address,
    o: &ObservedPatch,
    wanted: bool,
    state: &State,
    drift_off: bool,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    let st = state.resources.get(address);
    let action = if wanted {
        Action::Patch
    } else {
        Action::Revert
    };
    // Forget is what is left when a revert finds nothing of ours to put back;
    // every other outcome replaces it below.
    let mut c = Change::new(address, (&o.api_version, &o.kind, &o.name), Op::Forget);
    if let Some(problem) = &o.problem {
        if o.gone && !wanted {
            // Nothing left to revert: say so, and let the rest of destroy go on.
            warnings.push(format!(
                "{address}: {problem}; nothing to revert, so it is dropped from the state"
            ));
        } else {
            c.op = Op::refused(action, problem.clone());
        }
        return Some(c);
    }
    if !o.changed_outside.is_empty() {
        c.op = Op::refused(action, changed_outside(&o.changed_outside));
        return Some(c);
    }
    let patch = o.patch.as_ref()?;
    let live = o.live.as_ref()?;
    if patch.needed || patch.fields.is_empty() {
        c.reasons.extend(o.notes.iter().cloned());
    }
    c.reasons.extend(o.kept.iter().cloned());
    if patch.needed {
        warnings.extend(o.warnings.iter().map(|w| format!("{address}: {w}")));
    }
    if !patch.needed {
        c.op = settled(st, patch, wanted);
        return Some(c);
    }
    if wanted
        && let Some(prev) = st.and_then(|s| s.patch.as_ref())
        && prev
            .fields
            .iter()
            .any(|(p, f)| live.pointer(p) != Some(&f.written))
    {
        c.reasons.push("changed outside rayform".into());
    }
    if o.kind == "EC2NodeClass" || o.kind == "AWSNodeTemplate" {
        warnings.push(format!(
            "{address}: {}",
            drift_warning(o, wanted, drift_off)
        ));
    }
    let edit = Edit {
        patch: patch.clone(),
        diff: o
            .after
            .as_ref()
            .and_then(|after| diff::unified(live, after, None, Sides::LivePlanned)),
        resource_version: resource_version(live),
    };
    c.op = if wanted {
        Op::Patch(edit)
    } else {
        Op::Revert(edit)
    };
    Some(c)
}

/// Nothing to write: for a revert, nothing of ours is left on the object, so
/// it is forgotten; for a patch, it is as the stack wants, and recorded if
/// the state does not say so already.
fn settled(st: Option<&ResourceState>, patch: &karpenter::KarpenterPatch, wanted: bool) -> Op {
    if !wanted {
        return Op::Forget;
    }
    let recorded = st.and_then(|s| s.patch.as_ref()).map(|p| &p.fields);
    Op::NoOp(if recorded == Some(&patch.fields) {
        Keep::Current
    } else {
        Keep::RecordPatch(patch.clone())
    })
}

/// Every object the API server returns has a resourceVersion; an empty one
/// here would only make a saved plan stale, never apply it over a change.
fn resource_version(live: &Value) -> String {
    live.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Fields a revert finds changed since rayform wrote them, with what to do.
fn changed_outside(fields: &[karpenter::ChangedField]) -> String {
    let lines: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{} changed since rayform wrote it: recorded original {}, written {}, live {}",
                karpenter::field_name(&f.pointer),
                f.recorded.display(),
                crate::util::compact_json(&f.written),
                f.live.display()
            )
        })
        .collect();
    format!(
        "{}\n  help: revert it by hand, or pass --force to restore the recorded original anyway",
        lines.join("\n  ")
    )
}

/// What a changed node class does to running nodes, by Karpenter generation.
fn drift_warning(o: &ObservedPatch, wanted: bool, drift_off: bool) -> String {
    let verb = if wanted { "patching" } else { "reverting" };
    if drift_off {
        format!(
            "{verb} blockDeviceMappings of {} `{}` reaches new nodes only: Karpenter up to v0.32 (this cluster serves karpenter.sh/v1alpha5) has drift off by default, so running nodes keep their disk until they are replaced",
            o.kind, o.name
        )
    } else {
        format!(
            "{verb} blockDeviceMappings of {} `{}` makes Karpenter treat the nodes launched from it as drifted and replace them (as disruption budgets allow)",
            o.kind, o.name
        )
    }
}

/// What KubeRay will do with a RayService created or changed by this plan.
fn assess_rollout(c: &Change, o: &ObservedObject) -> Option<rollout::Assessment> {
    if c.kind != "RayService" || !c.api_version.starts_with("ray.io/") {
        return None;
    }
    match &c.op {
        Op::Create(w) => Some(rollout::assess(
            None,
            o.after.as_ref().unwrap_or(&w.payload.body),
            None,
        )),
        Op::Update { write, .. } => {
            let planned = o.after.as_ref().unwrap_or(&write.payload.body);
            let live = o.live.as_ref()?;
            // Without a dry run, only the fields the stack sets are comparable.
            let live = match &o.after {
                Some(_) => live.clone(),
                None => desired::project(live, planned),
            };
            Some(rollout::assess(
                Some(rollout::Live {
                    spec: &live,
                    built_from: o.built_from.as_deref(),
                }),
                planned,
                o.kuberay_version.clone(),
            ))
        }
        _ => None,
    }
}

fn plan_object(
    address: &Address,
    o: &ObservedObject,
    wanted: Option<&Desired>,
    rendered: Option<&Desired>,
    state: &State,
    options: &PlanOptions,
) -> Option<Change> {
    let st = state.resources.get(address);
    // What is no longer wanted is where the state recorded it, whatever the
    // stack now says (its namespace may have been edited since).
    let identity = match (wanted, st) {
        (None, Some(_)) => None,
        _ => rendered,
    };
    let mut c = object_change(address, o, identity, st)?;
    if let Some(problem) = &o.problem {
        return Some(unplannable(c, o, problem, wanted.is_some()));
    }
    if o.unlabelled == Some(Unlabelled::SameUid) {
        c.reasons.push(match st {
            Some(s) if s.desired_fingerprint.is_empty() => {
                "imported: rayform adds its labels".to_string()
            }
            _ => format!("its {LABEL_STACK} label was removed; the uid is the one rayform created"),
        });
    }
    let Some(Desired::Object(want)) = wanted else {
        return Some(removed(c, o, &state.stack));
    };
    let mut want = want.clone();
    if !o.namespaced {
        want.set_cluster_scoped();
    }
    if let Some(error) = moved_namespace(&c, st, o, &want) {
        c.op = Op::refused(Action::Create, error);
        return Some(c);
    }
    let payload = Payload {
        body: want.masked_body(),
        secret_fingerprints: want.secret_fingerprints.clone(),
        desired_fingerprint: want.fingerprint.clone(),
    };
    let (Some(live), Some(seen)) = (&o.live, seen(o)) else {
        return Some(to_create(c, o, st, payload));
    };
    if let Some(error) = not_ours(&c, o, address, state, options) {
        c.op = Op::refused(Action::Update, error);
        return Some(c);
    }
    if !o.owned {
        c.reasons
            .push("adopting an object rayform did not create".into());
    }
    if o.unchanged {
        // The live fields rayform writes are as the state recorded them (and
        // `live` may hold only the object's identity).
        return Some(c);
    }
    let found = Found { live, seen, st };
    Some(to_update(c, o, found, payload, options))
}

/// Without a state, its lineage and fingerprint key are made up for this
/// plan alone: shown as they are, the lineage annotation and the secret
/// checksums (keyed by that key) would differ on every plan. The apply makes
/// the real ones, so the plan says so, as Terraform does.
fn unknown_until_applied(diff: &str, lineage: &str) -> String {
    let checksum = format!("{}: ", desired::ANNOTATION_SECRET_CHECKSUM);
    let mut out: String = diff
        .replace(lineage, "(known after apply)")
        .lines()
        .map(|line| match line.find(&checksum) {
            Some(at) => format!("{}(known after apply)", &line[..at + checksum.len()]),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    if diff.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The change's identity: what it is and where; nothing to do yet.
fn object_change(
    address: &Address,
    o: &ObservedObject,
    rendered: Option<&Desired>,
    st: Option<&ResourceState>,
) -> Option<Change> {
    let (api_version, kind, name) = match (rendered, st) {
        (Some(Desired::Object(d)), _) => (&d.api_version, &d.kind, &d.name),
        (_, Some(s)) => (&s.api_version, &s.kind, &s.name),
        _ => return None,
    };
    let mut c = Change::new(address, (api_version, kind, name), Op::NoOp(Keep::Current));
    if o.namespaced {
        c.namespace = match rendered {
            Some(Desired::Object(d)) => Some(d.namespace.clone()),
            _ => st.and_then(|s| s.namespace.clone()),
        };
    }
    Some(c)
}

/// The live object's version and uid, when there is one.
fn seen(o: &ObservedObject) -> Option<Seen> {
    let live = o.live.as_ref()?;
    Some(Seen {
        resource_version: resource_version(live),
        uid: live
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Observation found a problem: the change carries it as its error, unless
/// the object is gone with its API and has only to be forgotten.
fn unplannable(mut c: Change, o: &ObservedObject, problem: &str, wanted: bool) -> Change {
    if o.gone && !wanted {
        // Its API is gone (e.g. the operator was uninstalled), and so is the object.
        c.op = Op::Forget;
        c.reasons
            .push(problem.lines().next().unwrap_or_default().to_string());
        return c;
    }
    let action = match (wanted, &o.live) {
        // The server refused the new version of an object that exists:
        // an update that cannot be made, not a create.
        (true, Some(_)) => Action::Update,
        (true, None) => Action::Create,
        (false, _) => Action::Delete,
    };
    c.op = Op::refused(action, problem.to_string());
    c
}

/// Removed from the stack, or destroy: delete what is ours, leave the rest.
fn removed(mut c: Change, o: &ObservedObject, stack: &str) -> Change {
    let Some(seen) = seen(o) else {
        c.op = Op::Forget;
        return c;
    };
    c.op = match o.unlabelled {
        _ if o.owned => {
            let launched = crate::karpenter::nodes::Launched::of(&c.api_version, &c.kind);
            c.reasons
                .extend(launched.map(|l| l.plan_note().to_string()));
            Op::Delete(seen)
        }
        Some(Unlabelled::Unknown) => Op::refused(
            Action::Delete,
            format!(
                "{} `{}` is still there but lost its {LABEL_STACK} label, and this state (older than recorded uids) cannot prove it is the one rayform created; it is not forgotten while it runs\n  \
                 help: put the {LABEL_STACK} label back on it and run again, or delete it yourself",
                c.kind, c.name
            ),
        ),
        _ => {
            let other_stack = o
                .live
                .as_ref()
                .and_then(|live| desired::other_stack(live, stack));
            c.reasons.push(match (&o.other_lineage, other_stack) {
                (_, Some(other)) => {
                    format!("it belongs to rayform stack `{other}` now; left alone")
                }
                (Some(l), None) => {
                    format!("made by another state of this stack name (lineage {l}); left alone")
                }
                (None, None) => "not created by rayform; left alone".into(),
            });
            Op::Forget
        }
    };
    c
}

/// A namespaced object the state recorded in another namespace than the stack's.
fn moved_namespace(
    c: &Change,
    st: Option<&ResourceState>,
    o: &ObservedObject,
    want: &DesiredObject,
) -> Option<String> {
    let old = st.and_then(|s| s.namespace.as_deref())?;
    (o.namespaced && old != want.namespace).then(|| {
        format!(
            "{} `{}` lives in namespace `{old}`, but the stack's namespace is now `{}`; moving it would leave the old one running unmanaged\n  help: destroy the stack with its old namespace first, or change the namespace back",
            c.kind, c.name, want.namespace
        )
    })
}

fn to_create(
    mut c: Change,
    o: &ObservedObject,
    st: Option<&ResourceState>,
    payload: Payload,
) -> Change {
    if st.is_some() {
        c.reasons.push("deleted outside rayform".into());
    }
    if let Some(note) = &o.note {
        c.reasons.push(note.clone());
    }
    let diff = diff::unified(
        &Value::Null,
        o.after.as_ref().unwrap_or(&payload.body),
        Some(&payload.secret_fingerprints),
        Sides::LivePlanned,
    );
    c.op = Op::Create(Write::new(payload, diff, false));
    c
}

/// Why an existing object is not this state's to change, unless adopted.
fn not_ours(
    c: &Change,
    o: &ObservedObject,
    address: &Address,
    state: &State,
    options: &PlanOptions,
) -> Option<String> {
    if o.owned || options.adopt.contains(address) {
        return None;
    }
    let (kind, name) = (&c.kind, &c.name);
    let other_stack = o
        .live
        .as_ref()
        .and_then(|live| desired::other_stack(live, &state.stack));
    if let Some(other) = other_stack {
        return Some(format!(
            "{kind} `{name}` belongs to rayform stack `{other}` (label {LABEL_STACK}={other}), which declares it too\n  \
             help: change it through stack `{other}`, rename it in one of the stacks, or take it from stack `{other}` (which then no longer manages it): `rayform plan STACK --adopt {address}` shows what that changes"
        ));
    }
    Some(match &o.other_lineage {
        Some(l) => format!(
            "{kind} `{name}` was made by another rayform state of this stack name (lineage {l}; this state is {}), so it is not this state's to change\n  help: run with the state that made it, or take it over: `rayform plan STACK --adopt {address}` shows what that changes",
            state.lineage
        ),
        None => format!(
            "{kind} `{name}` already exists and was not created by rayform\n  help: rayform will not take it over unless told to: `rayform plan STACK --adopt {address}` shows what taking it changes"
        ),
    })
}

/// An existing object as observation found it, with its state entry.
struct Found<'a> {
    live: &'a Value,
    seen: Seen,
    st: Option<&'a ResourceState>,
}

/// An existing object of ours: what changed outside rayform, the diff to the
/// server's answer (or the local one), and fields other managers own.
fn to_update(
    mut c: Change,
    o: &ObservedObject,
    found: Found,
    payload: Payload,
    options: &PlanOptions,
) -> Change {
    let Found { live, seen, st } = found;
    let projection = desired::project(live, &payload.body);
    let live_fp = crate::util::sha256_json(&projection);
    let outside_diff = st
        .filter(|s| s.live_fingerprint != live_fp && !s.applied.is_null())
        .and_then(|s| {
            c.reasons.push("changed outside rayform".into());
            diff::unified(&s.applied.value(), &projection, None, Sides::AppliedLive)
        });
    let Some(after) = &o.after else {
        if let Some(note) = &o.note {
            c.reasons.push(note.clone());
        }
        // No server answer: the fields rayform writes, as they are and as they will be.
        let diff = o.local.then(|| {
            diff::unified(
                &projection,
                &payload.body,
                Some(&payload.secret_fingerprints),
                Sides::LiveDesired,
            )
        });
        let force = !o.owned;
        let write = Write::new(payload, diff.flatten(), force);
        c.op = Op::Update {
            write,
            seen,
            outside_diff,
        };
        return c;
    };
    let diff = diff::unified(
        live,
        after,
        Some(&payload.secret_fingerprints),
        Sides::LivePlanned,
    );
    let recorded = st.is_some_and(|s| {
        s.desired_fingerprint == payload.desired_fingerprint && s.live_fingerprint == live_fp
    });
    c.op = match (force_needed(o, st, options), diff) {
        (Err(error), diff) => Op::Refused(Refusal {
            action: if diff.is_some() {
                Action::Update
            } else {
                Action::NoOp
            },
            error,
            diff,
            outside_diff,
        }),
        (Ok(force), Some(diff)) => Op::Update {
            write: Write::new(payload, Some(diff), force),
            seen,
            outside_diff,
        },
        (Ok(_), None) if recorded => Op::NoOp(Keep::Current),
        (Ok(_), None) => Op::NoOp(Keep::Record {
            payload,
            outside_diff,
        }),
    };
    c
}

/// Whether apply must take fields from other managers. A field rayform
/// wrote before and someone else changed is drift: restoring it is the
/// point of apply. A field rayform never wrote is someone else's: taking it
/// needs --force-conflicts (or adoption, which takes the object whole).
fn force_needed(
    o: &ObservedObject,
    st: Option<&ResourceState>,
    options: &PlanOptions,
) -> Result<bool, String> {
    let adopting = !o.owned;
    if o.conflicts.is_empty() {
        return Ok(adopting);
    }
    let foreign: Vec<&(String, String)> = o
        .conflicts
        .iter()
        .filter(|(field, _)| st.is_none_or(|s| !field_in(&s.applied.value(), field)))
        .collect();
    if !foreign.is_empty() && !options.force_conflicts && !adopting {
        let list: Vec<String> = foreign.iter().map(|(f, m)| format!("{f} ({m})")).collect();
        return Err(format!(
            "applying would take fields owned by another field manager: {}\n  help: pass --force-conflicts to take them, or drop them from the stack",
            list.join(", ")
        ));
    }
    Ok(true)
}

/// Whether a conflict path from the server (`.spec.a.b[name="x"].c`,
/// `.metadata.labels.app.kubernetes.io/name`) lies in `applied`. Keys may
/// contain dots, so each step takes the longest key of `applied` that the
/// rest of the path starts with.
fn field_in(applied: &Value, field: &str) -> bool {
    let mut cur = applied;
    let mut rest = field.strip_prefix('.').unwrap_or(field);
    while !rest.is_empty() {
        let Some(map) = cur.as_object() else {
            // A list or scalar rayform wrote whole: the path is inside it.
            return true;
        };
        let key = map
            .keys()
            .filter(|k| {
                rest.strip_prefix(k.as_str())
                    .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
            })
            .max_by_key(|k| k.len());
        let Some(key) = key else { return false };
        cur = &map[key];
        rest = &rest[key.len()..];
        if rest.starts_with('[') {
            return true;
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    true
}

#[cfg(test)]
mod tests;
