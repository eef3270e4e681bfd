//! Observing the cluster: what is live, and what the server says an apply
//! would produce. The result is a [`World`]: plain data for the planner.
//!
//! Cost matters: a no-op plan of a large stack must not make one request per
//! resource. Objects rayform owns are found with one labelled LIST per kind
//! and namespace; when an object's desired and live fingerprints both match
//! the state, no dry run is needed. Only resources that may change cost a
//! server-side dry run (which is also how API defaults and admission show in
//! the diff, as `kubectl diff --server-side` does).
//!
//! Secret data never enters the world: live and dry-run Secrets have their
//! values replaced by keyed fingerprints as soon as they arrive.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use serde_json::Value;

use crate::cluster::{Cluster, ClusterError, Kind, Ssa};
use crate::desired::{self, Desired, DesiredObject, LABEL_STACK};
use crate::karpenter::{
    self, ChangedField, ClassApi, KarpenterPatch, PoolApi, Served, Wanted, automode,
};
use crate::stack::{Address, ResourceType, Stack};
use crate::state::{ResourceState, State};
use crate::target::ClusterId;

mod gpu_nodes;
mod objects;
mod patches;
pub use gpu_nodes::complete_classes;
use objects::{Group, Route, observe_objects, route};
use patches::*;
pub use patches::{api_holding, decide_patch, served, served_stored_first};

/// Everything the planner needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct World {
    pub cluster: ClusterId,
    /// The Karpenter APIs the cluster serves.
    pub karpenter: Served,
    pub resources: BTreeMap<Address, Observed>,
    /// Asked only when a RayService is to be created: why no KubeRay
    /// operator will act on it, if none will.
    pub kuberay_operator_missing: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Observed {
    Object(ObservedObject),
    Patch(Box<ObservedPatch>),
    Wait,
}

/// An object rayform creates (Secret, RayService, manifest).
#[derive(Debug, Clone, Default)]
pub struct ObservedObject {
    pub namespaced: bool,
    /// The live object, secret data as fingerprints.
    pub live: Option<Value>,
    /// The live object carries this stack's label.
    pub owned: bool,
    /// What the server would store after the apply (dry run), secret data as fingerprints.
    pub after: Option<Value>,
    /// Fingerprints matched the state: no dry run was needed.
    pub unchanged: bool,
    /// Fields the apply would take from other field managers: (field, message).
    pub conflicts: Vec<(String, String)>,
    /// Why this resource cannot be planned (CRD missing, rejected by the server...).
    pub problem: Option<String>,
    /// The problem is that the kind is not served at all: nothing to delete.
    pub gone: bool,
    /// Why no dry run could be made though nothing is wrong (e.g. its namespace comes first).
    pub note: Option<String>,
    /// Not dry-run by choice (a bulk change): the plan computes the diff itself.
    pub local: bool,
    /// Found by name without this stack's label: was it the object rayform made?
    pub unlabelled: Option<Unlabelled>,
    /// Labelled for this stack, but made by a state of another lineage.
    pub other_lineage: Option<String>,
    /// For a RayService: the KubeRay version that built that RayCluster.
    pub kuberay_version: Option<String>,
    /// For a RayService: what KubeRay recorded of the spec it built the
    /// RayCluster it compares changes with (the serving one, or the one it
    /// is preparing during an upgrade).
    pub built_from: Option<Box<BuiltFrom>>,
}

/// The annotation KubeRay writes its hash to on the RayClusters it builds.
pub const HASH_ANNOTATION: &str = "ray.io/hash-without-replicas-and-workers-to-delete";
/// The annotation with the number of worker groups the hash was made from.
pub const WORKER_GROUPS_ANNOTATION: &str = "ray.io/num-worker-groups";

/// KubeRay's record, on a RayCluster it built, of the spec it built it from.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltFrom {
    /// `ray.io/hash-without-replicas-and-workers-to-delete`.
    pub hash: String,
    /// `ray.io/num-worker-groups`: how many groups the hash covers.
    pub worker_groups: Option<usize>,
    /// Which RayCluster this is, the one KubeRay compares a new spec with.
    pub cluster: Compared,
}

/// The RayCluster KubeRay compares a changed RayService with: the one it
/// is preparing while an upgrade is in progress, else the serving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    Serving,
    /// The pending cluster of an upgrade in progress (`pendingServiceStatus`).
    Preparing,
}

/// An object the state records, found by name though it lost this stack's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlabelled {
    /// Its uid is the one rayform recorded: the same object, label removed.
    SameUid,
    /// Another object of that name (recreated by someone): not ours.
    OtherUid,
    /// The state predates recorded uids: it cannot be told.
    Unknown,
}

/// A Karpenter object rayform patches (or reverts).
#[derive(Debug, Clone, Default)]
pub struct ObservedPatch {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub live: Option<Value>,
    pub patch: Option<KarpenterPatch>,
    pub after: Option<Value>,
    pub problem: Option<String>,
    /// The problem is that the object or its API is gone: nothing to revert.
    pub gone: bool,
    /// For a revert: fields changed since rayform wrote them.
    pub changed_outside: Vec<ChangedField>,
    /// How the intent became these fields ("kept …, already satisfied: ...").
    pub notes: Vec<String>,
    /// A value set since this stack wrote its own that meets the intent
    /// too, left as it is: why.
    pub kept: Option<String>,
    /// What else changes for the user while the patch holds.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Destroy,
}

#[derive(Debug, Clone, Default)]
pub struct ObserveOptions {
    /// Destroy: overwrite Karpenter fields changed outside rayform.
    pub force: bool,
    pub dry_run: DryRun,
    /// Objects the user allows rayform to take over (`--adopt`): dry-run
    /// like rayform's own, so the plan shows what taking them changes.
    pub adopt: BTreeSet<Address>,
}

/// Where the fingerprint shortcut can skip the dry run.
fn unchanged(state: Option<&ResourceState>, desired: &DesiredObject, live: &Value) -> bool {
    state.is_some_and(|s| {
        s.desired_fingerprint == desired.fingerprint
            && s.live_fingerprint
                == crate::util::sha256_json(&desired::project(live, &desired.masked_body()))
    })
}

/// Looks at the cluster for every resource in the stack or the state.
/// For an apply, first completes the desired objects made from live ones
/// (the `[gpu_nodes]` NodeClass), so the plan holds what apply will send.
pub async fn observe(
    cluster: &Cluster,
    stack: &Stack,
    desired: &mut BTreeMap<Address, Desired>,
    state: &State,
    mode: Mode,
    options: &ObserveOptions,
) -> Result<World, ClusterError> {
    let incomplete = match mode {
        Mode::Apply => gpu_nodes::complete_classes(cluster, desired).await?,
        Mode::Destroy => BTreeMap::new(),
    };
    let desired = &*desired;
    let served = served_stored_first(cluster).await;
    let mut resources = BTreeMap::new();
    // Objects, grouped so that each kind costs one LIST per namespace;
    // Karpenter objects one by one, as each is patched on its own.
    let mut groups: BTreeMap<Group, Vec<Address>> = BTreeMap::new();
    // The Provisioners that may stand beside the NodePools are looked for too.
    let beside: Vec<Address> = desired.keys().filter_map(Address::beside).collect();
    let addresses: BTreeSet<&Address> = desired
        .keys()
        .chain(state.resources.keys())
        .chain(&beside)
        .collect();
    for address in addresses {
        match route(address, desired, state, mode, &stack.namespace) {
            Route::Object(group) => groups.entry(group).or_default().push(address.clone()),
            Route::Wait => {
                resources.insert(address.clone(), Observed::Wait);
            }
            Route::Nothing => {}
            patch => {
                let o = observe_patch(cluster, stack, address, &served, patch, options).await?;
                resources.extend(o.map(|o| (address.clone(), Observed::Patch(Box::new(o)))));
            }
        }
    }
    let (objects, server) =
        observe_objects(cluster, stack, groups, desired, state, mode, options).await?;
    resources.extend(objects);
    for (address, why) in incomplete {
        if let Some(Observed::Object(o)) = resources.get_mut(&address) {
            o.problem = Some(why);
            o.after = None;
        }
    }
    tracing::debug!(
        resources = resources.len(),
        requests = cluster.requests(),
        server_dry_run = server,
        "observed"
    );
    let creates_rayservice = resources.iter().any(|(a, o)| {
        a.kind == ResourceType::RayService
            && matches!(o, Observed::Object(o) if o.live.is_none() && o.problem.is_none())
    });
    let kuberay_operator_missing = if mode == Mode::Apply && creates_rayservice {
        crate::cluster::kuberay::operator_missing(cluster).await
    } else {
        None
    };
    Ok(World {
        cluster: cluster.id.clone(),
        karpenter: served,
        resources,
        kuberay_operator_missing,
    })
}

/// Which objects that may change get a server-side dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Every one, however many (`--server-dry-run=all`).
    All,
    /// All of them if there are at most this many, else none: a small plan
    /// is checked by the server, a bulk change does not cost twice the requests.
    UpTo(usize),
    /// None: diffs are computed from the state and the live objects.
    Never,
}

impl Default for DryRun {
    fn default() -> DryRun {
        DryRun::UpTo(50)
    }
}

impl DryRun {
    fn allows(self, may_change: usize) -> bool {
        match self {
            DryRun::All => true,
            DryRun::UpTo(limit) => may_change <= limit,
            DryRun::Never => false,
        }
    }
}
