//! The Karpenter side of observing: which Karpenter APIs the cluster serves
//! (the stored version first when several are), and for each intent the
//! live object, what the floor wants of it, and the patch or revert a plan
//! would send, dry-run on the server. Kept apart from the objects rayform
//! owns, which are found by label and compared by fingerprint.

use super::*;

/// One Karpenter object: its patch, its revert, or nothing when the API is not served.
pub(super) async fn observe_patch(
    cluster: &Cluster,
    stack: &Stack,
    address: &Address,
    served: &Served,
    route: Route<'_>,
    options: &ObserveOptions,
) -> Result<Option<ObservedPatch>, ClusterError> {
    let api_of = |a: PoolApi| (a.api_version(), a.kind());
    let class_of = |a: ClassApi| (a.api_version(), a.kind());
    Ok(Some(match route {
        Route::Pool(intent) => {
            let api = api_holding(cluster, &served.pools, &address.name, api_of).await?;
            observe_pool(cluster, stack, address, api, intent).await?
        }
        Route::Class(intent) => {
            // Auto Mode beside a self-managed Karpenter still has EC2NodeClasses to patch.
            if served.auto_mode && served.classes.is_empty() {
                return Ok(Some(ObservedPatch {
                    problem: Some(automode::refusal(&automode::class_why(&address.name))),
                    ..Default::default()
                }));
            }
            let api = api_holding(cluster, &served.classes, &address.name, class_of).await?;
            observe_class(cluster, stack, address, api, intent).await?
        }
        Route::Revert(st) => observe_revert(cluster, stack, st, options.force).await?,
        Route::Beside(intent, recorded) => {
            return observe_beside(cluster, stack, address, served, intent, recorded, options)
                .await;
        }
        Route::Unrecorded(kind) => {
            let api = match kind {
                ResourceType::NodePool => {
                    api_holding(cluster, &served.pools, &address.name, api_of)
                        .await?
                        .map(api_of)
                }
                ResourceType::Provisioner => {
                    match provisioner_standing(cluster, served, &address.name).await? {
                        Standing::BesideNodePool => Some(api_of(PoolApi::V1alpha5)),
                        Standing::Alone | Standing::Absent => None,
                    }
                }
                _ => served.class().map(class_of),
            };
            let Some((api_version, kind_name)) = api else {
                return Ok(None);
            };
            let st = unrecorded_patch(api_version, kind_name, &address.name);
            observe_revert(cluster, stack, &st, options.force).await?
        }
        Route::Object(..) | Route::Wait | Route::Nothing => return Ok(None),
    }))
}

pub(super) async fn get_target(
    cluster: &Cluster,
    api_version: &str,
    kind_name: &str,
    name: &str,
    out: &mut ObservedPatch,
) -> Result<Option<(Kind, Value)>, ClusterError> {
    out.api_version = api_version.to_string();
    out.kind = kind_name.to_string();
    out.name = name.to_string();
    // A Karpenter upgrade may stop serving the version the state recorded;
    // the same kind at another version of its group is the same object.
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let served = cluster.kind(api_version, kind_name).or_else(|| {
        cluster
            .group_versions(group)
            .iter()
            .find_map(|v| cluster.kind(&format!("{group}/{v}"), kind_name))
    });
    let Some(kind) = served else {
        out.problem = Some(format!(
            "the cluster no longer serves {api_version} {kind_name}"
        ));
        out.gone = true;
        return Ok(None);
    };
    out.api_version = kind.resource.api_version.clone();
    match cluster.get(&kind, None, name).await? {
        Some(live) => Ok(Some((kind, live))),
        None => {
            let existing: Vec<String> = cluster
                .list(&kind, None, "")
                .await
                .map(|l| {
                    l.iter()
                        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.gone = true;
            out.problem = Some(format!(
                "{kind_name} `{name}` does not exist; the cluster has: {}",
                if existing.is_empty() {
                    "none".to_string()
                } else {
                    existing.join(", ")
                }
            ));
            Ok(None)
        }
    }
}

pub(super) async fn finish_patch(
    cluster: &Cluster,
    kind: &Kind,
    manager: &str,
    patch: KarpenterPatch,
    out: &mut ObservedPatch,
) -> Result<(), ClusterError> {
    if patch.needed {
        // A dry run only validates: its precondition would fail on any write
        // since the read, Karpenter's own status updates included.
        let mut body = patch.merge.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        match cluster
            .merge_patch(kind, &out.name, &body, manager, true)
            .await
        {
            Ok(after) => out.after = Some(after),
            Err(
                e @ (ClusterError::Invalid { .. }
                | ClusterError::Forbidden { .. }
                | ClusterError::Conflict { .. }),
            ) => {
                out.problem = Some(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    out.patch = Some(patch);
    Ok(())
}

/// The Karpenter APIs the cluster serves, most preferred first.
pub fn served(cluster: &Cluster) -> Served {
    Served {
        pools: PoolApi::ALL
            .into_iter()
            .filter(|a| cluster.kind(a.api_version(), a.kind()).is_some())
            .collect(),
        classes: ClassApi::ALL
            .into_iter()
            .filter(|a| cluster.kind(a.api_version(), a.kind()).is_some())
            .collect(),
        auto_mode: cluster
            .kind(automode::NODECLASS_API_VERSION, automode::NODECLASS_KIND)
            .is_some(),
    }
}

/// The Karpenter APIs the cluster serves, the version each CRD stores
/// first ([`Served::stored_first`]). The stored version is read from the
/// CRD; a cluster that does not let rayform read CRDs keeps discovery's order.
pub async fn served_stored_first(cluster: &Cluster) -> Served {
    let served = served(cluster);
    // Only a kind served in several versions has a stored one to find
    // (v0.32's Provisioner and NodePool are two kinds, not two versions).
    let pool_versions = served.pools.iter().filter(|a| a.kind() == "NodePool");
    let pool = match pool_versions.count() > 1 {
        true => stored_version(cluster, "nodepools.karpenter.sh").await,
        false => None,
    };
    let class_versions = served.classes.iter().filter(|a| a.kind() == "EC2NodeClass");
    let class = match class_versions.count() > 1 {
        true => stored_version(cluster, "ec2nodeclasses.karpenter.k8s.aws").await,
        false => None,
    };
    served.stored_first(pool.as_deref(), class.as_deref())
}

/// The version a CRD stores its objects in, if the CRD can be read.
pub(super) async fn stored_version(cluster: &Cluster, crd: &str) -> Option<String> {
    let kind = cluster.kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")?;
    let object = match cluster.get(&kind, None, crd).await {
        Ok(object) => object?,
        Err(e) => {
            tracing::debug!(crd, error = %e, "stored version unknown");
            return None;
        }
    };
    object
        .pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))?["name"]
        .as_str()
        .map(str::to_string)
}

/// Of the Karpenter generations served, the one holding the object named:
/// Karpenter v0.32 serves Provisioner and NodePool side by side, and the
/// user's object exists in one of them.
pub async fn api_holding<A: Copy>(
    cluster: &Cluster,
    apis: &[A],
    name: &str,
    id: impl Fn(A) -> (&'static str, &'static str),
) -> Result<Option<A>, ClusterError> {
    if apis.len() > 1 {
        for &api in apis {
            let (api_version, kind_name) = id(api);
            if let Some(kind) = cluster.kind(api_version, kind_name)
                && cluster.get(&kind, None, name).await?.is_some()
            {
                return Ok(Some(api));
            }
        }
    }
    Ok(apis.first().copied())
}

/// Reads one Karpenter object and computes this stack's patch of it;
/// `wanted` reads the live object and its original values (before any
/// stack patched it) and says what to write, or why it cannot be written.
pub(super) async fn observe_karpenter(
    cluster: &Cluster,
    stack: &Stack,
    address: &Address,
    (api_version, kind_name): (&str, &str),
    wanted: impl Fn(&Value, &Value) -> Result<Wanted, String>,
) -> Result<ObservedPatch, ClusterError> {
    let mut out = ObservedPatch::default();
    let Some((kind, live)) =
        get_target(cluster, api_version, kind_name, &address.name, &mut out).await?
    else {
        return Ok(out);
    };
    if let Some(error) = karpenter::unreadable_originals(&live) {
        out.problem = Some(format!(
            "the annotation {} on {kind_name} `{}` is not valid JSON ({error}); rayform cannot tell which values to restore on destroy, so it writes nothing\n  \
             help: put back the annotation's last good value, or remove it if the object's fields hold their original values",
            karpenter::ANNOTATION_ORIGINAL,
            address.name
        ));
        out.live = Some(live);
        return Ok(out);
    }
    let Some(patch) = decide_patch(&stack.name, &live, wanted, &mut out) else {
        out.live = Some(live);
        return Ok(out);
    };
    out.live = Some(live);
    finish_patch(cluster, &kind, &stack.field_manager(), patch, &mut out).await?;
    Ok(out)
}

/// This stack's patch of the Karpenter object `live`, decided without the
/// cluster: what `wanted` (the intent as a floor) says to write, kept as
/// it is where a value set since meets the intent too, or the stack's own
/// fields given back when the floor is met without them. None when nothing
/// can be written; `out` says why (a problem, fields changed outside).
pub fn decide_patch(
    stack: &str,
    live: &Value,
    wanted: impl Fn(&Value, &Value) -> Result<Wanted, String>,
    out: &mut ObservedPatch,
) -> Option<KarpenterPatch> {
    match wanted(live, &karpenter::floor::original_view(live)) {
        Err(problem) => {
            out.problem = Some(problem);
            None
        }
        Ok(Wanted::Write {
            fields,
            notes,
            warnings,
        }) => {
            let mut patch = karpenter::patch(stack, live, &fields);
            // Someone set a value since this stack wrote its own, and it
            // meets the intent as well (a longer TTL, a larger disk): the
            // floor holds, so it is kept, not "corrected" back down.
            if let (true, Ok(Wanted::Satisfied(why))) = (
                patch.needed && karpenter::changed_since_written(stack, live),
                wanted(live, live),
            ) {
                out.kept = Some(format!(
                    "kept (longer than the stack asks), set since the apply: {why}"
                ));
                patch.needed = false;
            } else {
                out.notes = notes;
                out.warnings = warnings;
            }
            Some(patch)
        }
        Ok(left) => {
            out.notes.extend(left.left_alone());
            match karpenter::withdraw(stack, live) {
                Ok(patch) => Some(patch),
                Err(changed) => {
                    out.changed_outside = changed;
                    None
                }
            }
        }
    }
}

pub(super) async fn observe_pool(
    cluster: &Cluster,
    stack: &Stack,
    address: &Address,
    api: Option<PoolApi>,
    intent: &crate::stack::NodePoolIntent,
) -> Result<ObservedPatch, ClusterError> {
    let Some(api) = api else {
        return Ok(ObservedPatch {
            problem: Some(format!(
                "{address}: the cluster serves no Karpenter NodePool (karpenter.sh/v1, v1beta1) or Provisioner (v1alpha5) API\n  \
                 help: is Karpenter installed on this cluster?"
            )),
            ..Default::default()
        });
    };
    observe_karpenter(
        cluster,
        stack,
        address,
        (api.api_version(), api.kind()),
        |live, original| {
            if automode::is_built_in_pool(live) {
                return Err(automode::refusal(&automode::built_in_pool_why(
                    &address.name,
                )));
            }
            karpenter::floor::pool(api, intent, original)
        },
    )
    .await
}

/// Karpenter v0.32 launches from a Provisioner and a NodePool alike, and a
/// cluster half-way through the migration has both under one name: the
/// intent holds for both, so the Provisioner is patched too. Once it no
/// longer stands beside the NodePool, what the state recorded of it is let
/// go: forgotten when nodepool.NAME patches the Provisioner itself (its
/// NodePool is gone), reverted or found gone otherwise.
pub(super) async fn observe_beside(
    cluster: &Cluster,
    stack: &Stack,
    address: &Address,
    served: &Served,
    intent: &crate::stack::NodePoolIntent,
    recorded: Option<&ResourceState>,
    options: &ObserveOptions,
) -> Result<Option<ObservedPatch>, ClusterError> {
    let standing = provisioner_standing(cluster, served, &address.name).await?;
    if standing == Standing::BesideNodePool {
        let api = Some(PoolApi::V1alpha5);
        return Ok(Some(
            observe_pool(cluster, stack, address, api, intent).await?,
        ));
    }
    let Some(st) = recorded else {
        return Ok(None);
    };
    if standing == Standing::Alone {
        return Ok(Some(ObservedPatch {
            api_version: st.api_version.clone(),
            kind: st.kind.clone(),
            name: st.name.clone(),
            problem: Some(format!(
                "the NodePool `{}` is gone, so {} patches the Provisioner itself",
                address.name,
                address.declared()
            )),
            gone: true,
            ..Default::default()
        }));
    }
    Ok(Some(
        observe_revert(cluster, stack, st, options.force).await?,
    ))
}

/// A Provisioner of a name, where a NodePool API is served too (v0.32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// None of that name, or no cluster serving both generations.
    Absent,
    /// No NodePool of its name: `nodepool.NAME` patches it itself.
    Alone,
    BesideNodePool,
}

async fn provisioner_standing(
    cluster: &Cluster,
    served: &Served,
    name: &str,
) -> Result<Standing, ClusterError> {
    let exists = async |api: PoolApi| -> Result<bool, ClusterError> {
        let Some(kind) = cluster.kind(api.api_version(), api.kind()) else {
            return Ok(false);
        };
        Ok(cluster.get(&kind, None, name).await?.is_some())
    };
    let both = served.pools.contains(&PoolApi::V1alpha5) && served.pools.len() > 1;
    if !both || !exists(PoolApi::V1alpha5).await? {
        return Ok(Standing::Absent);
    }
    let nodepool = served.pools.iter().find(|a| a.kind() == "NodePool");
    Ok(match nodepool {
        Some(&api) if exists(api).await? => Standing::BesideNodePool,
        _ => Standing::Alone,
    })
}

pub(super) async fn observe_class(
    cluster: &Cluster,
    stack: &Stack,
    address: &Address,
    api: Option<ClassApi>,
    intent: &crate::stack::NodeClassIntent,
) -> Result<ObservedPatch, ClusterError> {
    let Some(api) = api else {
        return Ok(ObservedPatch {
            problem: Some(format!(
                "{address}: the cluster serves no Karpenter EC2NodeClass (karpenter.k8s.aws/v1, v1beta1) or AWSNodeTemplate (v1alpha1) API\n  \
                 help: is Karpenter's AWS provider installed on this cluster?"
            )),
            ..Default::default()
        });
    };
    // The list is sized from the live one (possibly patched by another
    // stack); originals are recorded once on the object, so none is lost.
    observe_karpenter(
        cluster,
        stack,
        address,
        (api.api_version(), api.kind()),
        |live, original| karpenter::floor::class(api, intent, live, original),
    )
    .await
}

/// A state entry for a patch whose state write was lost; the object's own
/// annotations say what this stack wrote.
pub(super) fn unrecorded_patch(api_version: &str, kind: &str, name: &str) -> ResourceState {
    ResourceState {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
        uid: None,
        resource_version: None,
        desired_fingerprint: String::new(),
        live_fingerprint: String::new(),
        applied: crate::state::Applied::default(),
        secret_fingerprints: BTreeMap::new(),
        patch: Some(crate::state::PatchState {
            api_version: api_version.into(),
            fields: BTreeMap::new(),
        }),
    }
}

pub(super) async fn observe_revert(
    cluster: &Cluster,
    stack: &Stack,
    st: &ResourceState,
    force: bool,
) -> Result<ObservedPatch, ClusterError> {
    let mut out = ObservedPatch::default();
    let Some(recorded) = &st.patch else {
        return Ok(out);
    };
    let Some((kind, live)) =
        get_target(cluster, &st.api_version, &st.kind, &st.name, &mut out).await?
    else {
        return Ok(out);
    };
    let patch = match karpenter::revert(&stack.name, &live, &recorded.fields) {
        Ok(p) => p,
        Err(changed) if !force => {
            out.changed_outside = changed;
            out.live = Some(live);
            return Ok(out);
        }
        Err(_) => karpenter::revert_forced(&stack.name, &live, &recorded.fields),
    };
    out.live = Some(live);
    finish_patch(cluster, &kind, &stack.field_manager(), patch, &mut out).await?;
    Ok(out)
}
