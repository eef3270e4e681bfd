//! The scenario a decision test states: a stack (through the real parser,
//! graph and renderer), what the state recorded, and what observation found
//! in the cluster. Everything `observe` would put in the [`World`] is built
//! here, in one place, so a change to the observed types touches this file
//! and not the tests that read like the behaviour.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::desired::{self, Desired, DesiredObject, Secrets};
use crate::graph::Graph;
use crate::karpenter::{self, ClassApi, PoolApi, Served, floor};
use crate::observe::{Observed, ObservedObject, ObservedPatch, Unlabelled, World};
use crate::plan::{self, Change, Plan, PlanOptions};
use crate::stack::{Address, Stack, StateOverride};
use crate::state::{Applied, PatchState, ResourceState, State};
use crate::target::ClusterId;

pub const STACK: &str = "llm";
pub const NAMESPACE: &str = "serving";
pub const LINEAGE: &str = "lineage-of-this-state";
/// The secret value the stack reads from the file `token`: it must never
/// reach a plan.
pub const TOKEN: &str = "hf_never_shown_0123456789";

/// The stack's resources, as a user writes them.
pub const SECRET: &str = "[secret.hf-token.data]\nHF_TOKEN = { file = \"token\" }\n\n";
pub const CONFIGMAP: &str = "[manifest.settings]\nobject = { apiVersion = \"v1\", kind = \"ConfigMap\", data = { mode = \"fast\" } }\n\n";
pub const RAYSERVICE: &str = "[rayservice.llm]\nmanifest = \"llm.rayservice.yaml\"\n\n";
pub const WAIT: &str =
    "[wait.chat]\nrayservice = \"llm\"\npath = \"/v1/chat/completions\"\ntimeout = \"10m\"\n\n";
pub const NODEPOOL: &str = "[nodepool.default]\nempty_ttl = \"600s\"\n\n";
pub const NODECLASS: &str = "[nodeclass.default]\nstorage = \"200Gi\"\n\n";
pub const CLUSTER_ROLE: &str = "[manifest.reader]\nobject = { apiVersion = \"rbac.authorization.k8s.io/v1\", kind = \"ClusterRole\", rules = [] }\n\n";

/// A RayService whose GPU worker refers to the Secret.
const RAYSERVICE_YAML: &str = r#"apiVersion: ray.io/v1
kind: RayService
spec:
  serveConfigV2: |
    applications:
      - name: llm
        route_prefix: /
        import_path: echo_app:build
        args: {model: demo-echo}
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams: {}
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.60.0
    workerGroupSpecs:
      - groupName: gpu
        replicas: 1
        minReplicas: 1
        maxReplicas: 1
        rayStartParams: {}
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.60.0
                env:
                  - name: HF_TOKEN
                    valueFrom:
                      secretKeyRef: {name: hf-token, key: HF_TOKEN}
                resources:
                  limits: {cpu: "1", memory: 2Gi, nvidia.com/gpu: 1}
"#;

pub fn address(s: &str) -> Address {
    Address::parse(s).expect("an address")
}

/// One stack, state and observed cluster, planned with `options`.
pub struct Scenario {
    dir: TempDir,
    pub stack: Stack,
    graph: Graph,
    pub desired: BTreeMap<Address, Desired>,
    pub state: State,
    pub state_new: bool,
    pub world: World,
    pub options: PlanOptions,
}

impl Scenario {
    /// A stack `llm` in namespace `serving` with these resources, an empty
    /// state of a fixed lineage and key, and a cluster that serves
    /// Karpenter v1 and has been looked at for nothing yet.
    pub fn new(resources: &str) -> Scenario {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
        std::fs::write(dir.path().join("llm.rayservice.yaml"), RAYSERVICE_YAML).expect("manifest");
        let text =
            format!("[stack]\nname = \"{STACK}\"\nnamespace = \"{NAMESPACE}\"\n\n{resources}");
        let file = dir.path().join("llm.toml");
        let stack = crate::stack::parse_str(&file, &text, &StateOverride::default())
            .unwrap_or_else(|e| panic!("the stack parses: {e}"));
        let graph = Graph::build(&stack).expect("a graph");
        let mut state = State::new(STACK).expect("a state");
        state.lineage = LINEAGE.into();
        state.fingerprint_key = "fingerprint-key".into();
        state.serial = 7;
        let desired = desired::render(&stack, &state.fingerprint_key, LINEAGE, Secrets::Require)
            .expect("rendered");
        let world = World {
            cluster: ClusterId {
                server: "https://k8s.example:6443".into(),
                context: Some("test".into()),
            },
            karpenter: Served {
                pools: vec![PoolApi::V1],
                classes: vec![ClassApi::V1],
                auto_mode: false,
            },
            resources: BTreeMap::new(),
            kuberay_operator_missing: None,
        };
        Scenario {
            dir,
            stack,
            graph,
            desired,
            state,
            state_new: false,
            world,
            options: PlanOptions::default(),
        }
    }

    /// The plan, as `rayform plan` would make it of this world. Waits are
    /// observed as observe routes them: only when applying.
    pub fn plan(&mut self) -> Plan {
        if !self.options.destroy && !self.options.refresh_only {
            for (a, d) in &self.desired {
                if matches!(d, Desired::Wait(_)) {
                    self.world
                        .resources
                        .entry(a.clone())
                        .or_insert(Observed::Wait);
                }
            }
        }
        plan::build(
            &self.stack,
            &self.graph,
            &self.desired,
            &self.state,
            self.state_new,
            &self.world,
            &self.options,
        )
    }

    /// The plan's change of `address`, which must be in it.
    pub fn change(&mut self, at: &str) -> Change {
        let plan = self.plan();
        plan.change(&address(at))
            .unwrap_or_else(|| panic!("{at} is in the plan: {:?}", plan.changes))
            .clone()
    }

    /// The temp dir the stack lives in, as it reads in plans.
    pub fn dir(&self) -> String {
        let dir = std::fs::canonicalize(self.dir.path()).expect("the temp dir");
        dir.display().to_string()
    }

    pub fn want(&self, at: &str) -> &DesiredObject {
        match self.desired.get(&address(at)) {
            Some(Desired::Object(o)) => o,
            other => panic!("{at} is an object of the stack: {other:?}"),
        }
    }

    /// The stack's version of the object as the API server stores it once
    /// applied: the masked body (secret data as fingerprints, as observe
    /// reads every Secret) with the server's metadata.
    pub fn stored(&self, at: &str) -> Value {
        let mut body = self.want(at).masked_body();
        let meta = &mut body["metadata"];
        meta["uid"] = json!(format!("uid-{at}"));
        meta["resourceVersion"] = json!("100");
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        body
    }

    /// The state entry apply writes after applying the stack's version of
    /// the object and reading `live` back.
    pub fn record(&mut self, at: &str, live: &Value) {
        let want = self.want(at).clone();
        let masked = want.masked_body();
        let applied = desired::project(live, &masked);
        let meta = |field: &str| {
            live.pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let entry = ResourceState {
            api_version: want.api_version.clone(),
            kind: want.kind.clone(),
            name: want.name.clone(),
            namespace: (!want.namespace.is_empty()).then(|| want.namespace.clone()),
            uid: meta("uid"),
            resource_version: meta("resourceVersion"),
            desired_fingerprint: want.fingerprint.clone(),
            live_fingerprint: crate::util::sha256_json(&applied),
            applied: Applied::new(&applied),
            secret_fingerprints: want.secret_fingerprints.clone(),
            patch: None,
        };
        self.state.resources.insert(address(at), entry);
    }

    /// The state entry apply wrote for an older version of the stack's
    /// object, which read back as `live`.
    pub fn record_older(&mut self, at: &str, live: &Value) {
        self.record(at, live);
        self.recorded(at).desired_fingerprint = "sha256:an-older-version".into();
    }

    /// The state entry of an object a former version of the stack (with
    /// `before` as its resources) applied, and which the stack no longer
    /// has; returns the object as apply left it.
    pub fn record_removed(&mut self, before: &str, at: &str) -> Value {
        let mut old = Scenario::new(before);
        let live = old.stored(at);
        old.record(at, &live);
        let entry = old.state.resources.remove(&address(at)).expect("recorded");
        self.state.resources.insert(address(at), entry);
        live
    }

    /// Takes over the state entry `from` recorded for `at`: what an earlier
    /// version of the stack applied.
    pub fn recorded_by(&mut self, from: &mut Scenario, at: &str) {
        let entry = from.state.resources.remove(&address(at)).expect("recorded");
        self.state.resources.insert(address(at), entry);
    }

    /// The state entry of `at` (which must be recorded), to edit.
    pub fn recorded(&mut self, at: &str) -> &mut ResourceState {
        self.state
            .resources
            .get_mut(&address(at))
            .unwrap_or_else(|| panic!("{at} is recorded"))
    }

    /// What observation found of the object at `at`.
    pub fn sees(&mut self, at: &str, o: Obj) {
        self.world
            .resources
            .insert(address(at), Observed::Object(o.0));
    }

    /// The object as apply left it and nobody touched since: recorded, live,
    /// labelled, and both fingerprints matching (no dry run).
    pub fn applied(&mut self, at: &str) {
        let live = self.stored(at);
        self.record(at, &live);
        self.sees(at, Obj::live(live).owned().unchanged());
    }

    /// A new object: not live, and the server's dry run of its create.
    pub fn absent(&mut self, at: &str) {
        let after = without(&self.stored(at), "/metadata/resourceVersion");
        self.sees(at, Obj::absent().after(after));
    }

    pub fn sees_patch(&mut self, at: &str, o: ObservedPatch) {
        self.world
            .resources
            .insert(address(at), Observed::Patch(Box::new(o)));
    }

    /// What observe makes of the Karpenter object `live` for this stack's
    /// intent at `at` (`observe::patches::observe_karpenter`, minus the
    /// requests): the floor, the patch or its withdrawal, and the server's
    /// answer to the patch.
    pub fn observe_intent(&mut self, at: &str, live: Value) {
        // The Provisioner beside a NodePool is observed for the NodePool's intent.
        let intent = self.desired[&address(at).declared()].clone();
        let wanted = |live: &Value, original: &Value| match &intent {
            Desired::NodePool(i) => {
                let api = PoolApi::ALL
                    .into_iter()
                    .find(|a| live["apiVersion"] == a.api_version() && live["kind"] == a.kind())
                    .expect("a pool API");
                floor::pool(api, i, original)
            }
            Desired::NodeClass(i) => {
                let api = ClassApi::ALL
                    .into_iter()
                    .find(|a| live["apiVersion"] == a.api_version() && live["kind"] == a.kind())
                    .expect("a class API");
                floor::class(api, i, live, original)
            }
            other => panic!("{at} is a Karpenter intent: {other:?}"),
        };
        let mut out = identity(&live);
        let Some(patch) = crate::observe::decide_patch(STACK, &live, wanted, &mut out) else {
            out.live = Some(live);
            return self.sees_patch(at, out);
        };
        out.after = patch.needed.then(|| merged(&live, &patch.merge));
        out.patch = Some(patch);
        out.live = Some(live);
        self.sees_patch(at, out);
    }

    /// What observe makes of `live` for a patch the state records and the
    /// stack no longer wants (`observe_revert`): the revert, or the fields
    /// changed outside rayform that stop it (unless `force`).
    /// Without a state entry (its write was lost), observe reverts what the
    /// object's own holder annotation says this stack wrote.
    pub fn observe_revert(&mut self, at: &str, live: Value, force: bool) {
        let recorded = self
            .state
            .resources
            .get(&address(at))
            .and_then(|st| st.patch.clone())
            .unwrap_or(PatchState {
                api_version: String::new(),
                fields: BTreeMap::new(),
            });
        let mut out = identity(&live);
        let patch = match karpenter::revert(STACK, &live, &recorded.fields) {
            Ok(p) => p,
            Err(changed) if !force => {
                out.changed_outside = changed;
                out.live = Some(live);
                return self.sees_patch(at, out);
            }
            Err(_) => karpenter::revert_forced(STACK, &live, &recorded.fields),
        };
        out.after = patch.needed.then(|| merged(&live, &patch.merge));
        out.patch = Some(patch);
        out.live = Some(live);
        self.sees_patch(at, out);
    }

    /// Applies this stack's intent to the Karpenter object `live` as apply
    /// would, records it, and returns the object as it then reads.
    pub fn patched(&mut self, at: &str, live: Value) -> Value {
        self.observe_intent(at, live.clone());
        let Some(Observed::Patch(o)) = self.world.resources.remove(&address(at)) else {
            panic!("{at} was observed as a patch");
        };
        let patch = o.patch.expect("a patch to write");
        let mut after = merged(&live, &patch.merge);
        after["metadata"]["resourceVersion"] = json!("201");
        self.record_patch(at, &o.api_version, &o.kind, &patch);
        after
    }

    /// The state entry apply writes for a patch (`apply::entry_for_patch`).
    pub fn record_patch(
        &mut self,
        at: &str,
        api_version: &str,
        kind: &str,
        p: &karpenter::KarpenterPatch,
    ) {
        let written: BTreeMap<&String, &Value> =
            p.fields.iter().map(|(k, f)| (k, &f.written)).collect();
        let applied = serde_json::to_value(&written).expect("json");
        let entry = ResourceState {
            api_version: api_version.into(),
            kind: kind.into(),
            name: address(at).name,
            namespace: None,
            uid: None,
            resource_version: None,
            desired_fingerprint: crate::util::sha256_json(&applied),
            live_fingerprint: crate::util::sha256_json(&applied),
            applied: Applied::new(&applied),
            secret_fingerprints: BTreeMap::new(),
            patch: Some(PatchState {
                api_version: api_version.into(),
                fields: p.fields.clone(),
            }),
        };
        self.state.resources.insert(address(at), entry);
    }
}

/// An [`ObservedPatch`] naming the object `live` is.
fn identity(live: &Value) -> ObservedPatch {
    let s = |p: &str| {
        live.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ObservedPatch {
        api_version: s("/apiVersion"),
        kind: s("/kind"),
        name: s("/metadata/name"),
        ..Default::default()
    }
}

/// An observed Karpenter object that could not be looked at: `problem`,
/// and whether the object (or its API) is gone.
pub fn patch_problem(live: &Value, problem: &str, gone: bool) -> ObservedPatch {
    ObservedPatch {
        problem: Some(problem.into()),
        gone,
        ..identity(live)
    }
}

/// What observation found of one object, said the way a test reads.
#[derive(Debug, Clone)]
pub struct Obj(ObservedObject);

impl Obj {
    /// Not in the cluster.
    pub fn absent() -> Obj {
        Obj(ObservedObject {
            namespaced: true,
            ..Default::default()
        })
    }

    /// In the cluster, as `live`; not (yet) known to be this stack's.
    pub fn live(live: Value) -> Obj {
        Obj(ObservedObject {
            namespaced: true,
            live: Some(live),
            ..Default::default()
        })
    }

    /// Carries this stack's label and lineage.
    pub fn owned(mut self) -> Obj {
        self.0.owned = true;
        self
    }

    /// Both fingerprints match the state: no dry run was made.
    pub fn unchanged(mut self) -> Obj {
        self.0.unchanged = true;
        self
    }

    /// The server's dry run says the apply makes this.
    pub fn after(mut self, after: Value) -> Obj {
        self.0.after = Some(after);
        self
    }

    /// The dry run without force met these fields of other managers.
    pub fn conflicts(mut self, fields: &[(&str, &str)]) -> Obj {
        self.0.conflicts = fields
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect();
        self
    }

    pub fn problem(mut self, problem: &str) -> Obj {
        self.0.problem = Some(problem.into());
        self
    }

    /// Its kind is not served at all.
    pub fn gone(mut self) -> Obj {
        self.0.gone = true;
        self
    }

    pub fn note(mut self, note: &str) -> Obj {
        self.0.note = Some(note.into());
        self
    }

    /// Not dry-run (a bulk change): diffed locally.
    pub fn local(mut self) -> Obj {
        self.0.local = true;
        self
    }

    /// Found by name without this stack's label.
    pub fn unlabelled(mut self, how: Unlabelled) -> Obj {
        self.0.owned = how == Unlabelled::SameUid;
        self.0.unlabelled = Some(how);
        self
    }

    /// Labelled for this stack by a state of another lineage.
    pub fn other_lineage(mut self, lineage: &str) -> Obj {
        self.0.owned = false;
        self.0.other_lineage = Some(lineage.into());
        self
    }

    pub fn cluster_scoped(mut self) -> Obj {
        self.0.namespaced = false;
        self
    }

    /// A RayService's serving RayCluster was built by this KubeRay.
    pub fn kuberay(mut self, version: &str) -> Obj {
        self.0.kuberay_version = Some(version.into());
        self
    }
}

/// `value` with `pointer` set (objects made on the way; list items must exist).
pub fn with(value: &Value, pointer: &str, to: Value) -> Value {
    let mut out = value.clone();
    if let Some(there) = out.pointer_mut(pointer) {
        *there = to;
        return out;
    }
    let mut cur = &mut out;
    for part in pointer.trim_start_matches('/').split('/') {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = &mut cur[part.replace("~1", "/").replace("~0", "~")];
    }
    *cur = to;
    out
}

/// `value` without what `pointer` names.
pub fn without(value: &Value, pointer: &str) -> Value {
    let mut out = value.clone();
    if let Some((parent, key)) = pointer.rsplit_once('/')
        && let Some(map) = out.pointer_mut(parent).and_then(Value::as_object_mut)
    {
        map.remove(&key.replace("~1", "/").replace("~0", "~"));
    }
    out
}

/// A JSON merge patch (RFC 7396) applied, as the API server applies
/// rayform's Karpenter patches and (near enough for these objects) its
/// server-side applies.
pub fn merged(live: &Value, patch: &Value) -> Value {
    let mut out = live.clone();
    merge_into(&mut out, patch);
    out
}

fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if !v.is_null() {
            merge_into(&mut target[k.as_str()], v);
        } else if let Some(map) = target.as_object_mut() {
            map.remove(k);
        }
    }
}

/// A Karpenter v1 NodePool `default` as its installer left it.
pub fn nodepool(consolidate_after: &str) -> Value {
    json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": "default", "resourceVersion": "200", "generation": 1},
        "spec": {
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": consolidate_after},
            "template": {"spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                                  "requirements": []}},
        },
    })
}

/// A Karpenter v1 EC2NodeClass `default` (AL2023) with a root volume of `size`.
pub fn nodeclass(size: &str) -> Value {
    json!({
        "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass",
        "metadata": {"name": "default", "resourceVersion": "300", "generation": 1},
        "spec": {
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": size, "volumeType": "gp3"}}],
        },
    })
}

/// Another stack's hold on a Karpenter object: it wrote `fields`.
pub fn held_by(live: &Value, stack: &str, fields: Value) -> Value {
    let mut out = live.clone();
    out["metadata"]["annotations"][format!("{}{stack}", karpenter::HOLDER_PREFIX)] =
        json!(fields.to_string());
    out
}

/// The resource types of the plan's changes, in plan order, with their actions.
pub fn actions(plan: &Plan) -> Vec<(String, plan::Action)> {
    plan.changes
        .iter()
        .map(|c| (c.address.to_string(), c.action()))
        .collect()
}
