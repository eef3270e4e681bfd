//! The plan: desired vs state vs live, decided per resource. Pure: it reads
//! a [`World`] and makes no cluster calls, so it can be shown, saved, and
//! applied later exactly as reviewed.
//!
//! Each resource gets one [`Action`]. "Changed outside rayform" is detected
//! by comparing the live fields rayform writes with the fingerprint the state
//! recorded right after rayform last wrote them.

mod checks;
mod diff;
mod render;
pub mod rollout;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::{self, Desired, DesiredObject, LABEL_STACK};
use crate::graph::Graph;
use crate::karpenter::{self, KarpenterPatch};
use crate::observe::{Observed, ObservedObject, ObservedPatch, Unlabelled, World};
use crate::stack::{Address, ResourceType, Stack};
use crate::state::{ResourceState, State};
use crate::target::ClusterId;
use diff::Sides;

pub use render::{RenderOptions, render_json, render_text};

/// Version of the saved-plan and `--json` format.
pub const FORMAT_VERSION: &str = "1.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    NoOp,
    Delete,
    Patch,
    Revert,
    Wait,
    /// In state but gone from both the stack and the cluster: drop from state.
    Forget,
}

impl Action {
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Action::Create | Action::Update | Action::Delete | Action::Patch | Action::Revert
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Why this action, beyond the obvious ("changed outside rayform", "adopting").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Unified YAML diff, live → planned; secret values masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// What changed outside rayform since it last wrote the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_diff: Option<String>,
    /// The body to apply, secret data as fingerprints (values are re-read at apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_fingerprints: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_fingerprint: Option<String>,
    /// Take fields from other managers (drift correction, adoption, --force-conflicts).
    #[serde(default)]
    pub force: bool,
    /// resourceVersion the plan saw; a saved plan is stale once it moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<KarpenterPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<crate::readiness::Target>,
    /// For a RayService: what KubeRay will do with the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Assessment>,
    /// The state entry is missing or stale though the cluster is right: apply refreshes it.
    #[serde(default)]
    pub refresh_state: bool,
    /// Resources in this plan that must finish first.
    #[serde(default)]
    pub depends_on: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Change {
    fn new(address: &Address, action: Action, api_version: &str, kind: &str, name: &str) -> Change {
        Change {
            address: address.clone(),
            action,
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: None,
            reasons: Vec::new(),
            diff: None,
            outside_diff: None,
            body: None,
            secret_fingerprints: BTreeMap::new(),
            desired_fingerprint: None,
            force: false,
            live_resource_version: None,
            live_uid: None,
            patch: None,
            wait: None,
            rollout: None,
            refresh_state: false,
            depends_on: Vec::new(),
            error: None,
        }
    }
}

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
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Delete => s.destroy += 1,
                Action::Patch => s.patch += 1,
                Action::Revert => s.revert += 1,
                Action::NoOp | Action::Wait | Action::Forget => {}
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.is_change())
    }

    pub fn change(&self, address: &Address) -> Option<&Change> {
        self.changes.iter().find(|c| &c.address == address)
    }
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub destroy: bool,
    pub force_conflicts: bool,
    /// Objects the user allows rayform to take over though it did not create them.
    pub adopt: BTreeSet<Address>,
}

/// Decides what to do with every resource.
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
        if let Some(mut c) = change {
            if c.action == Action::NoOp && !c.refresh_state {
                // Nothing will be sent: a large no-op plan need not carry every body.
                c.body = None;
            }
            if let Some(e) = &c.error {
                plan.errors.push(format!("{}: {e}", c.address));
            }
            plan.changes.push(c);
        }
    }
    if !options.destroy {
        plan.warnings.extend(checks::warnings(desired, world));
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
    let wanted = if options.destroy {
        None
    } else {
        desired.get(address)
    };
    match observed {
        Observed::Wait => match wanted {
            Some(Desired::Wait(w)) => {
                let mut c = Change::new(address, Action::Wait, "", "", &w.wait.rayservice);
                c.wait = Some(w.clone());
                Some(c)
            }
            _ => None,
        },
        Observed::Patch(o) => {
            let drift_off = world.karpenter.drift_off_by_default();
            plan_patch(address, o, wanted.is_some(), state, drift_off, warnings)
        }
        Observed::Object(o) => {
            let mut c = plan_object(address, o, wanted, desired.get(address), state, options)?;
            c.rollout = assess_rollout(&c, o);
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
        .filter(|c| c.action == Action::Delete)
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
    match (pools.is_empty(), classes.is_empty()) {
        (true, true) => None,
        (false, false) => Some(format!("{pools} + {classes}")),
        _ => Some(format!("{pools}{classes}")),
    }
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
    let mut c = Change::new(address, action, &o.api_version, &o.kind, &o.name);
    if let Some(problem) = &o.problem {
        if o.gone && !wanted {
            // Nothing left to revert: say so, and let the rest of destroy go on.
            c.action = Action::Forget;
            warnings.push(format!(
                "{address}: {problem}; nothing to revert, so it is dropped from the state"
            ));
        } else {
            c.error = Some(problem.clone());
        }
        return Some(c);
    }
    if !o.changed_outside.is_empty() {
        c.error = Some(changed_outside(&o.changed_outside));
        return Some(c);
    }
    let patch = o.patch.as_ref()?;
    let live = o.live.as_ref()?;
    if patch.needed || patch.fields.is_empty() {
        c.reasons.extend(o.notes.iter().cloned());
    }
    if patch.needed {
        warnings.extend(o.warnings.iter().map(|w| format!("{address}: {w}")));
    }
    c.live_resource_version = live
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    if !patch.needed {
        if !wanted {
            // Nothing of ours is on the object any more: just forget it.
            c.action = Action::Forget;
            return Some(c);
        }
        c.action = Action::NoOp;
        c.refresh_state =
            st.and_then(|s| s.patch.as_ref()).map(|p| &p.fields) != Some(&patch.fields);
        c.patch = Some(patch.clone());
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
    if let Some(after) = &o.after {
        c.diff = diff::unified(live, after, None, Sides::LivePlanned);
    }
    c.patch = Some(patch.clone());
    Some(c)
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
    if c.kind != "RayService" || !c.api_version.starts_with("ray.io/") || c.error.is_some() {
        return None;
    }
    let planned = o.after.as_ref().or(c.body.as_ref())?;
    match c.action {
        Action::Create => Some(rollout::assess(None, planned, None)),
        Action::Update => {
            let live = o.live.as_ref()?;
            // Without a dry run, only the fields the stack sets are comparable.
            let live = match &o.after {
                Some(_) => live.clone(),
                None => desired::project(live, planned),
            };
            Some(rollout::assess(
                Some(&live),
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
    let mut c = object_change(address, o, rendered, st)?;
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
        return Some(removed(c, o));
    };
    let mut want = want.clone();
    if !o.namespaced {
        want.set_cluster_scoped();
    }
    if let Some(error) = moved_namespace(&c, st, o, &want) {
        c.action = Action::Create;
        c.error = Some(error);
        return Some(c);
    }
    let masked = want.masked_body();
    c.body = Some(masked.clone());
    c.secret_fingerprints = want.secret_fingerprints.clone();
    c.desired_fingerprint = Some(want.fingerprint.clone());
    let Some(live) = &o.live else {
        return Some(to_create(c, o, st, &want, &masked));
    };
    if let Some(error) = not_ours(&c, o, address, state, options) {
        c.action = Action::Update;
        c.error = Some(error);
        return Some(c);
    }
    if !o.owned {
        c.reasons
            .push("adopting an object rayform did not create".into());
        c.force = true;
    }
    if o.unchanged {
        // The live fields rayform writes are as the state recorded them (and
        // `live` may hold only the object's identity).
        return Some(c);
    }
    Some(to_update(c, o, st, live, &want, &masked, options))
}

/// The change's identity: what it is, where, and the live version it saw.
fn object_change(
    address: &Address,
    o: &ObservedObject,
    rendered: Option<&Desired>,
    st: Option<&ResourceState>,
) -> Option<Change> {
    let (api_version, kind, name) = match (rendered, st) {
        (Some(Desired::Object(d)), _) => (d.api_version.clone(), d.kind.clone(), d.name.clone()),
        (_, Some(s)) => (s.api_version.clone(), s.kind.clone(), s.name.clone()),
        _ => return None,
    };
    let mut c = Change::new(address, Action::NoOp, &api_version, &kind, &name);
    if o.namespaced {
        c.namespace = match rendered {
            Some(Desired::Object(d)) => Some(d.namespace.clone()),
            _ => st.and_then(|s| s.namespace.clone()),
        };
    }
    if let Some(live) = &o.live {
        c.live_resource_version = live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        c.live_uid = live
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Some(c)
}

/// Observation found a problem: the change carries it as its error, unless
/// the object is gone with its API and has only to be forgotten.
fn unplannable(mut c: Change, o: &ObservedObject, problem: &str, wanted: bool) -> Change {
    if o.gone && !wanted {
        // Its API is gone (e.g. the operator was uninstalled), and so is the object.
        c.action = Action::Forget;
        c.reasons
            .push(problem.lines().next().unwrap_or_default().to_string());
        return c;
    }
    c.action = if wanted {
        Action::Create
    } else {
        Action::Delete
    };
    c.error = Some(problem.to_string());
    c
}

/// Removed from the stack, or destroy: delete what is ours, leave the rest.
fn removed(mut c: Change, o: &ObservedObject) -> Change {
    let (kind, name) = (c.kind.clone(), c.name.clone());
    c.action = match (&o.live, o.unlabelled) {
        (Some(_), _) if o.owned => Action::Delete,
        (Some(_), Some(Unlabelled::Unknown)) => {
            c.error = Some(format!(
                "{kind} `{name}` is still there but lost its {LABEL_STACK} label, and this state (older than recorded uids) cannot prove it is the one rayform created; it is not forgotten while it runs\n  \
                 help: put the {LABEL_STACK} label back on it and run again, or delete it yourself"
            ));
            Action::Delete
        }
        (Some(_), _) => {
            c.reasons.push(match &o.other_lineage {
                Some(l) => {
                    format!("made by another state of this stack name (lineage {l}); left alone")
                }
                None => "not created by rayform; left alone".into(),
            });
            Action::Forget
        }
        (None, _) => Action::Forget,
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
    want: &DesiredObject,
    masked: &Value,
) -> Change {
    c.action = Action::Create;
    if st.is_some() {
        c.reasons.push("deleted outside rayform".into());
    }
    if let Some(note) = &o.note {
        c.reasons.push(note.clone());
    }
    c.diff = diff::unified(
        &Value::Null,
        o.after.as_ref().unwrap_or(masked),
        Some(&want.secret_fingerprints),
        Sides::LivePlanned,
    );
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
    Some(match &o.other_lineage {
        Some(l) => format!(
            "{kind} `{name}` was made by another rayform state of this stack name (lineage {l}; this state is {}), so it is not this state's to change\n  help: run with the state that made it, or pass --adopt {address} to take it over",
            state.lineage
        ),
        None => format!(
            "{kind} `{name}` already exists and was not created by rayform\n  help: rayform will not take it over unless told to: pass --adopt {address}"
        ),
    })
}

/// An existing object of ours: what changed outside rayform, the diff to the
/// server's answer (or the local one), and fields other managers own.
fn to_update(
    mut c: Change,
    o: &ObservedObject,
    st: Option<&ResourceState>,
    live: &Value,
    want: &DesiredObject,
    masked: &Value,
    options: &PlanOptions,
) -> Change {
    let projection = desired::project(live, masked);
    let live_fp = crate::util::sha256_json(&projection);
    if let Some(s) = st
        && s.live_fingerprint != live_fp
        && !s.applied.is_null()
    {
        c.reasons.push("changed outside rayform".into());
        c.outside_diff = diff::unified(&s.applied.value(), &projection, None, Sides::AppliedLive);
    }
    let Some(after) = &o.after else {
        c.action = Action::Update;
        if let Some(note) = &o.note {
            c.reasons.push(note.clone());
        }
        if o.local {
            // No server answer: the fields rayform writes, as they are and as they will be.
            c.diff = diff::unified(
                &projection,
                masked,
                Some(&want.secret_fingerprints),
                Sides::LiveDesired,
            );
        }
        return c;
    };
    c.diff = diff::unified(
        live,
        after,
        Some(&want.secret_fingerprints),
        Sides::LivePlanned,
    );
    c.action = if c.diff.is_some() {
        Action::Update
    } else {
        Action::NoOp
    };
    if c.action == Action::NoOp {
        c.refresh_state = st.is_none_or(|s| {
            s.desired_fingerprint != want.fingerprint || s.live_fingerprint != live_fp
        });
    }
    take_conflicts(&mut c, o, st, options);
    if c.action == Action::NoOp && c.address.kind == ResourceType::Secret {
        c.force = false;
    }
    c
}

/// A field rayform wrote before and someone else changed is drift:
/// restoring it is the point of apply. A field rayform never wrote is
/// someone else's: taking it needs --force-conflicts.
fn take_conflicts(
    c: &mut Change,
    o: &ObservedObject,
    st: Option<&ResourceState>,
    options: &PlanOptions,
) {
    if o.conflicts.is_empty() {
        return;
    }
    let foreign: Vec<&(String, String)> = o
        .conflicts
        .iter()
        .filter(|(field, _)| st.is_none_or(|s| !field_in(&s.applied.value(), field)))
        .collect();
    if !foreign.is_empty()
        && !options.force_conflicts
        && !c.reasons.iter().any(|r| r.starts_with("adopting"))
    {
        let list: Vec<String> = foreign.iter().map(|(f, m)| format!("{f} ({m})")).collect();
        c.error = Some(format!(
            "applying would take fields owned by another field manager: {}\n  help: pass --force-conflicts to take them, or drop them from the stack",
            list.join(", ")
        ));
    } else {
        c.force = true;
    }
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
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflict_paths_with_dotted_keys_are_found() {
        let applied = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "rayform"}},
                             "data": {".dockerconfigjson": "x"}, "spec": {"a": [1]}});
        assert!(field_in(
            &applied,
            ".metadata.labels.app.kubernetes.io/managed-by"
        ));
        assert!(field_in(&applied, ".data..dockerconfigjson"));
        assert!(field_in(&applied, ".spec.a[0]"));
        assert!(!field_in(&applied, ".spec.b"));
        assert!(!field_in(&applied, ".metadata.labels.other"));
    }
}
