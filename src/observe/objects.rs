//! The objects rayform owns, as the cluster has them: one labelled LIST per
//! kind and namespace, a GET only where the LIST cannot say, and a dry run
//! (or a local diff, for a bulk change) only for what may change.

use super::*;

/// Objects listed together: one kind, in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Group {
    api_version: String,
    kind: String,
    /// Where to look if the kind is namespaced: the stack's namespace for
    /// what it declares, the recorded one for what only the state has (so a
    /// stack moved to another namespace still finds, and deletes, what it
    /// left in the old one).
    namespace: String,
}

impl Group {
    fn wanted(o: &DesiredObject) -> Group {
        Group {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
        }
    }

    fn recorded(st: &ResourceState, stack_namespace: &str) -> Group {
        Group {
            api_version: st.api_version.clone(),
            kind: st.kind.clone(),
            // States from before namespaces were recorded: the stack's.
            namespace: st
                .namespace
                .clone()
                .unwrap_or_else(|| stack_namespace.to_string()),
        }
    }
}

/// How one address is looked at.
pub(super) enum Route<'a> {
    /// A Kubernetes object, listed with the others of its group.
    Object(Group),
    Wait,
    Pool(&'a crate::stack::NodePoolIntent),
    Class(&'a crate::stack::NodeClassIntent),
    /// A patch the state records and the stack (or a destroy) no longer wants.
    Revert(&'a ResourceState),
    /// Destroy of a partially applied stack: a patch whose state write was
    /// lost still carries this stack's holder annotation.
    Unrecorded(ResourceType),
    /// The Provisioner that may stand beside a wanted NodePool, with what
    /// the state recorded of it.
    Beside(&'a crate::stack::NodePoolIntent, Option<&'a ResourceState>),
    Nothing,
}

pub(super) fn route<'a>(
    address: &Address,
    desired: &'a BTreeMap<Address, Desired>,
    state: &'a State,
    mode: Mode,
    stack_namespace: &str,
) -> Route<'a> {
    if address.kind == ResourceType::Provisioner {
        return beside_route(address, desired, state, mode);
    }
    let wanted = if mode == Mode::Destroy {
        None
    } else {
        desired.get(address)
    };
    match (wanted, state.resources.get(address)) {
        (Some(Desired::Object(o)), _) => Route::Object(Group::wanted(o)),
        (Some(Desired::Wait(_)), _) => Route::Wait,
        (Some(Desired::NodePool(intent)), _) => Route::Pool(intent),
        (Some(Desired::NodeClass(intent)), _) => Route::Class(intent),
        (None, Some(st)) if st.patch.is_some() => Route::Revert(st),
        (None, Some(st)) => Route::Object(Group::recorded(st, stack_namespace)),
        // What was written before the state write was lost still carries our
        // label or our holder annotation.
        (None, None) => match desired.get(address) {
            Some(Desired::Object(o)) => Route::Object(Group::wanted(o)),
            Some(Desired::NodePool(_)) => Route::Unrecorded(ResourceType::NodePool),
            Some(Desired::NodeClass(_)) => Route::Unrecorded(ResourceType::NodeClass),
            _ => Route::Nothing,
        },
    }
}

/// The Provisioner beside a `[nodepool]` intent's NodePool follows the
/// intent: looked for while it is wanted, reverted once it is not.
fn beside_route<'a>(
    address: &Address,
    desired: &'a BTreeMap<Address, Desired>,
    state: &'a State,
    mode: Mode,
) -> Route<'a> {
    let intent = match desired.get(&address.declared()) {
        Some(Desired::NodePool(intent)) => Some(intent),
        _ => None,
    };
    match (mode, intent, state.resources.get(address)) {
        (Mode::Apply, Some(intent), recorded) => Route::Beside(intent, recorded),
        (_, _, Some(st)) if st.patch.is_some() => Route::Revert(st),
        (Mode::Destroy, Some(_), None) => Route::Unrecorded(ResourceType::Provisioner),
        _ => Route::Nothing,
    }
}

/// Every object, a LIST per kind first: only then is it known how many
/// may change, which decides whether they are dry-run on the server.
/// Returns them with whether the server dry-ran them.
pub(super) async fn observe_objects(
    cluster: &Cluster,
    stack: &Stack,
    groups: BTreeMap<Group, Vec<Address>>,
    desired: &BTreeMap<Address, Desired>,
    state: &State,
    mode: Mode,
    options: &ObserveOptions,
) -> Result<(Vec<(Address, Observed)>, bool), ClusterError> {
    let mut out = Vec::new();
    let mut listed_groups = Vec::new();
    for (group, members) in groups {
        let Some(kind) = cluster.kind(&group.api_version, &group.kind) else {
            let problem = crate::cluster::missing_kind_message(&group.api_version, &group.kind);
            out.extend(members.into_iter().map(|a| {
                let gone = ObservedObject {
                    problem: Some(problem.clone()),
                    gone: true,
                    ..Default::default()
                };
                (a, Observed::Object(gone))
            }));
            continue;
        };
        let namespace = kind.namespaced.then_some(group.namespace);
        let listed = Listing {
            stack,
            kind: &kind,
            namespace: namespace.as_deref(),
        };
        let members = list_members(cluster, &listed, members, desired, state, mode).await?;
        listed_groups.push((kind, namespace, members));
    }
    let may_change = listed_groups
        .iter()
        .flat_map(|(_, _, members)| members)
        .filter(|m| m.may_change(state))
        .count();
    let server = options.dry_run.allows(may_change);
    let manager = stack.field_manager();
    let jobs: Vec<_> = listed_groups
        .into_iter()
        .flat_map(|(kind, namespace, members)| {
            let group = std::sync::Arc::new((kind, namespace));
            members.into_iter().map(move |m| (group.clone(), m))
        })
        .map(|(group, member)| {
            let manager = &manager;
            async move {
                let context = MemberContext {
                    cluster,
                    namespace: group.1.as_deref(),
                    state,
                    manager,
                    dry_run: server,
                    adopt: &options.adopt,
                    may_change,
                };
                let (address, mut obs) = observe_member(&context, &group.0, member).await?;
                if let (ResourceType::RayService, Some(namespace)) = (address.kind, &group.1)
                    && let Some((raycluster, compared)) =
                        compared_cluster(cluster, namespace, &obs).await
                {
                    obs.kuberay_version = annotation(&raycluster, "ray.io/kuberay-version");
                    obs.built_from = built_from(&raycluster, compared).map(Box::new);
                }
                Ok::<_, ClusterError>((address, obs))
            }
        })
        .collect();
    // Requests for objects that may change go out side by side.
    let mut observed = futures::stream::iter(jobs).buffered(OBSERVE_PARALLELISM);
    while let Some(result) = observed.next().await {
        let (address, obs) = result?;
        out.push((address, Observed::Object(obs)));
    }
    Ok((out, server))
}

/// How many objects are looked at (GET, dry run) at once.
const OBSERVE_PARALLELISM: usize = 16;

/// Above this many objects missing from the labelled LIST of a kind, one
/// LIST of the whole kind in the namespace is cheaper than a GET each.
const LIST_INSTEAD_OF_GETS: usize = 8;

/// What the LIST of its kind said of one object.
enum Lookup {
    /// Found with this stack's label.
    Labelled(Value),
    /// Found with this stack's label, its fingerprints those of the state:
    /// kept as its identity only (apiVersion, kind, metadata).
    Unchanged(Value),
    /// Found by the LIST of the whole kind, without this stack's label.
    Unlabelled(Value),
    /// The LIST of the whole kind did not have it: it does not exist.
    Absent,
    /// Not among the labelled ones; whether it exists is not known yet.
    Unknown,
}

/// One object of a kind, with what the LIST found under its name.
struct Member<'a> {
    address: Address,
    name: String,
    want: Option<&'a DesiredObject>,
    recorded: Option<&'a ResourceState>,
    lookup: Lookup,
}

impl Member<'_> {
    /// Whether this object may need a write, so a dry run would tell something.
    fn may_change(&self, state: &State) -> bool {
        let Some(want) = self.want else { return false };
        match &self.lookup {
            Lookup::Labelled(live) => {
                state.is_released(&self.address, live) || !unchanged(self.recorded, want, live)
            }
            Lookup::Unchanged(live) => state.is_released(&self.address, live),
            Lookup::Unlabelled(_) => false,
            Lookup::Absent | Lookup::Unknown => true,
        }
    }
}

/// Where one group's LIST goes.
struct Listing<'a> {
    stack: &'a Stack,
    kind: &'a Kind,
    /// None for a cluster-scoped kind.
    namespace: Option<&'a str>,
}

/// Lists one kind: the objects carrying this stack's label, and, when many
/// wanted objects are not among them, the whole kind in the namespace.
/// Kept whole, as `observe_member` is: the LIST and its fallback share the
/// same members and counts.
async fn list_members<'a>(
    cluster: &Cluster,
    listing: &Listing<'_>,
    addresses: Vec<Address>,
    desired: &'a BTreeMap<Address, Desired>,
    state: &'a State,
    mode: Mode,
) -> Result<Vec<Member<'a>>, ClusterError> {
    let Listing {
        stack,
        kind,
        namespace,
    } = *listing;
    let key = &state.fingerprint_key;
    let mut members: Vec<Member<'a>> = addresses
        .into_iter()
        .map(|address| {
            let want = match (mode, desired.get(&address)) {
                (Mode::Apply, Some(Desired::Object(o))) => Some(o),
                _ => None,
            };
            let recorded = state.resources.get(&address);
            let name = want
                .map(|o| o.name.clone())
                .or_else(|| recorded.map(|s| s.name.clone()))
                .unwrap_or_else(|| address.name.clone());
            Member {
                address,
                name,
                want,
                recorded,
                lookup: Lookup::Unknown,
            }
        })
        .collect();
    let index: BTreeMap<String, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), i))
        .collect();
    let selector = format!("{LABEL_STACK}={}", stack.name);
    let listed = cluster
        .list_each(kind, namespace, &selector, |mut live| {
            let i = *index.get(live["metadata"]["name"].as_str()?)?;
            desired::fingerprint_secret_data(&mut live, key);
            let m = &members[i];
            let same = m
                .want
                .is_some_and(|w| unchanged(m.recorded, &for_kind(w, kind), &live));
            Some(if same {
                (i, Lookup::Unchanged(identity(live)))
            } else {
                (i, Lookup::Labelled(live))
            })
        })
        .await?;
    for (i, lookup) in listed {
        members[i].lookup = lookup;
    }
    let unknown = members
        .iter()
        .filter(|m| matches!(m.lookup, Lookup::Unknown))
        .count();
    // Never for Secrets: that LIST would read everybody's secret values.
    if unknown > LIST_INSTEAD_OF_GETS && kind.resource.kind != "Secret" {
        let found = cluster
            .list_each(kind, namespace, "", |live| {
                let i = *index.get(live["metadata"]["name"].as_str()?)?;
                matches!(members[i].lookup, Lookup::Unknown).then_some((i, live))
            })
            .await?;
        for m in members
            .iter_mut()
            .filter(|m| matches!(m.lookup, Lookup::Unknown))
        {
            m.lookup = Lookup::Absent;
        }
        for (i, live) in found {
            members[i].lookup = Lookup::Unlabelled(live);
        }
    }
    Ok(members)
}

/// The desired object as it is sent for this kind (cluster-scoped kinds carry no namespace).
/// Copied only for a cluster-scoped kind: this runs for every listed object.
fn for_kind<'a>(want: &'a DesiredObject, kind: &Kind) -> std::borrow::Cow<'a, DesiredObject> {
    if kind.namespaced {
        return std::borrow::Cow::Borrowed(want);
    }
    let mut want = want.clone();
    want.set_cluster_scoped();
    std::borrow::Cow::Owned(want)
}

/// What identifies a live object (what the planner reads of an unchanged
/// one), without its body.
fn identity(live: Value) -> Value {
    let Value::Object(mut map) = live else {
        return live;
    };
    map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.retain(|k, _| {
            matches!(
                k.as_str(),
                "name" | "namespace" | "uid" | "resourceVersion" | "annotations"
            )
        });
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.retain(|k, _| k == desired::ANNOTATION_LINEAGE);
        }
    }
    Value::Object(map)
}

/// GETs an object, its secret data as fingerprints.
async fn fetch(
    cx: &MemberContext<'_>,
    kind: &Kind,
    name: &str,
) -> Result<Option<Value>, ClusterError> {
    let mut live = cx.cluster.get(kind, cx.namespace, name).await?;
    if let Some(l) = &mut live {
        desired::fingerprint_secret_data(l, &cx.state.fingerprint_key);
    }
    Ok(live)
}

/// What every object's observation shares.
struct MemberContext<'a> {
    cluster: &'a Cluster,
    namespace: Option<&'a str>,
    state: &'a State,
    manager: &'a str,
    /// Dry-run what may change on the server (else diff locally).
    dry_run: bool,
    adopt: &'a BTreeSet<Address>,
    /// How many objects may change in this plan.
    may_change: usize,
}

/// One object, in the order requests go out: the identity its LIST found,
/// a GET only when that is not enough, then the dry run or the local diff.
/// Kept whole: split, each part would take the same half-dozen values.
async fn observe_member(
    cx: &MemberContext<'_>,
    kind: &Kind,
    member: Member<'_>,
) -> Result<(Address, ObservedObject), ClusterError> {
    let Member {
        address,
        name,
        want,
        recorded: st,
        lookup,
    } = member;
    let (cluster, namespace, state) = (cx.cluster, cx.namespace, cx.state);
    let key = &state.fingerprint_key;
    let mut obs = ObservedObject {
        namespaced: kind.namespaced,
        ..Default::default()
    };
    let listed_unchanged = matches!(lookup, Lookup::Unchanged(_));
    let labelled = matches!(lookup, Lookup::Labelled(_) | Lookup::Unchanged(_));
    // `known`: whether the object's existence is settled (found, or listed as absent).
    let (mut live, mut known) = match lookup {
        Lookup::Labelled(l) | Lookup::Unchanged(l) | Lookup::Unlabelled(l) => (Some(l), true),
        Lookup::Absent => (None, true),
        Lookup::Unknown => (None, false),
    };
    obs.other_lineage = live
        .as_ref()
        .filter(|_| labelled)
        .and_then(|l| desired::other_lineage(l, &state.lineage));
    obs.owned = labelled
        && live
            .as_ref()
            .is_some_and(|l| !state.is_released(&address, l))
        && obs.other_lineage.is_none();
    let lookup_needed = !labelled && (st.is_some() || (want.is_some() && !cx.dry_run));
    if lookup_needed && !known {
        // Recorded but not listed: gone, or ours with its label removed
        // (never to be forgotten while it runs), or replaced by someone.
        // Or new, and no dry run will say whether the name is taken.
        live = fetch(cx, kind, &name).await?;
        known = true;
    }
    // Relabelled for another stack (adopted by it) is not "label removed":
    // the uid rayform recorded no longer makes the object this stack's.
    let other_stack = live
        .as_ref()
        .and_then(|l| desired::other_stack(l, &state.stack));
    if let (Some(l), Some(st), false, None) = (&live, st, labelled, other_stack) {
        let uid = l.pointer("/metadata/uid").and_then(Value::as_str);
        let unlabelled = match st.uid.as_deref() {
            None => Unlabelled::Unknown,
            Some(recorded) if Some(recorded) == uid => Unlabelled::SameUid,
            Some(_) => Unlabelled::OtherUid,
        };
        obs.owned = unlabelled == Unlabelled::SameUid;
        obs.unlabelled = Some(unlabelled);
    }
    if let Some(want) = want {
        let want = for_kind(want, kind);
        match &live {
            Some(_) if obs.owned && listed_unchanged => obs.unchanged = true,
            Some(l) if obs.owned && unchanged(st, &want, l) => obs.unchanged = true,
            Some(_) if !obs.owned && !cx.adopt.contains(&address) => {}
            _ if !cx.dry_run => {
                obs.local = true;
                obs.note = Some(format!(
                    "not dry-run on the server: {} objects may change (see --server-dry-run)",
                    cx.may_change
                ));
            }
            _ => dry_run(cluster, kind, namespace, &want, cx.manager, key, &mut obs).await?,
        }
        if !known && (exists(obs.after.as_ref()) || obs.problem.is_some()) {
            // A new object's dry run says the name is taken (or failed, maybe
            // because it is), by an object without this stack's label:
            // someone else's, in the way. Asking only then saves a GET before
            // every create of a large stack's first plan.
            live = fetch(cx, kind, &name).await?;
            // Unless it is to be adopted, when the dry run is just what the plan shows.
            if live.is_some() && !cx.adopt.contains(&address) {
                obs = ObservedObject {
                    namespaced: kind.namespaced,
                    ..Default::default()
                };
            }
        }
    }
    obs.live = live;
    Ok((address, obs))
}

/// Whether a dry-run result is an object already stored: only a stored one
/// has a resourceVersion (a dry-run create gets none).
fn exists(after: Option<&Value>) -> bool {
    after
        .and_then(|a| a.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty())
}

/// Server-side dry run: first without force, to learn about conflicts; then
/// with force, to learn what the result would be.
async fn dry_run(
    cluster: &Cluster,
    kind: &Kind,
    namespace: Option<&str>,
    want: &DesiredObject,
    manager: &str,
    key: &str,
    obs: &mut ObservedObject,
) -> Result<(), ClusterError> {
    let ssa = |force| {
        let how = Ssa {
            manager,
            force,
            dry_run: true,
        };
        cluster.apply(kind, namespace, &want.name, want.body(), how)
    };
    let result = match ssa(false).await {
        Err(ClusterError::Conflict { causes, .. }) => {
            obs.conflicts = causes;
            ssa(true).await
        }
        other => other,
    };
    match result {
        Ok(mut after) => {
            desired::fingerprint_secret_data(&mut after, key);
            obs.after = Some(after);
        }
        Err(ClusterError::NotFound { message, .. }) if message.contains("namespace") => {
            obs.note = Some(format!("not dry-run: {message} (yet)"));
        }
        Err(
            e @ (ClusterError::Invalid { .. }
            | ClusterError::Forbidden { .. }
            | ClusterError::Api { .. }),
        ) => {
            obs.problem = Some(want.redact(&e.to_string()));
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The RayCluster KubeRay compares a changed RayService with, as its
/// status names them: the pending one while an upgrade is in progress,
/// else the serving one (KubeRay v1.5's `shouldPrepareNewCluster`). Its
/// annotations say which operator built it (whose rules apply) and from
/// what spec.
async fn compared_cluster(
    cluster: &Cluster,
    namespace: &str,
    o: &ObservedObject,
) -> Option<(Value, Compared)> {
    let status = o.live.as_ref()?.get("status")?;
    let named = |at: &str| {
        status
            .pointer(at)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    };
    // A pending cluster named but not made yet is about to be made from the
    // live spec: then none is compared, and the live spec stands for it.
    let (name, compared) = match named("/pendingServiceStatus/rayClusterName") {
        Some(name) => (name, Compared::Preparing),
        None => (
            named("/activeServiceStatus/rayClusterName")?,
            Compared::Serving,
        ),
    };
    let kind = cluster.kind("ray.io/v1", "RayCluster")?;
    let raycluster = cluster.get(&kind, Some(namespace), name).await.ok()??;
    Some((raycluster, compared))
}

fn annotation(object: &Value, key: &str) -> Option<String> {
    object
        .get("metadata")?
        .get("annotations")?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

fn built_from(raycluster: &Value, cluster: Compared) -> Option<BuiltFrom> {
    Some(BuiltFrom {
        hash: annotation(raycluster, HASH_ANNOTATION)?,
        worker_groups: annotation(raycluster, WORKER_GROUPS_ANNOTATION)
            .and_then(|n| n.parse().ok()),
        cluster,
    })
}
