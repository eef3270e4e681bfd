//! The desired objects: a stack rendered into the exact bodies rayform will
//! send, with its labels, secret values and rollout annotations.
//!
//! This is the one place secret values are read. Everything leaving this
//! module carries them only inside [`DesiredObject::body`]; the masked body
//! and the fingerprints are what plans and state see.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::graph::referenced_secrets;
use crate::karpenter::gpu_nodes;
use crate::secret::{self, SecretError, SecretValue};
use crate::stack::serving::Target;
use crate::stack::{
    Address, GpuNodesIntent, NodeClassIntent, NodePoolIntent, ResourceSpec, ResourceType, Stack,
    WaitSpec,
};

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_STACK: &str = "rayform.io/stack";
pub const ANNOTATION_ADDRESS: &str = "rayform.io/address";
/// The lineage of the state that made the object: two state files of one
/// stack name must not claim each other's objects by the label alone.
pub const ANNOTATION_LINEAGE: &str = "rayform.io/lineage";
/// On RayService pod templates: changes when a referenced secret changes, so pods roll.
pub const ANNOTATION_SECRET_CHECKSUM: &str = "rayform.io/secret-checksum";

/// What the stack wants for one resource.
#[derive(Debug, Clone)]
pub enum Desired {
    Object(DesiredObject),
    NodePool(NodePoolIntent),
    NodeClass(NodeClassIntent),
    Wait(Target),
}

/// A Kubernetes object rayform creates and owns.
#[derive(Clone)]
pub struct DesiredObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The stack's namespace; dropped later if the kind is cluster-scoped.
    pub namespace: String,
    /// The body to apply. For Secrets this holds the values: never log or save it.
    body: Value,
    /// Secret data keys → keyed fingerprints (empty for other kinds).
    pub secret_fingerprints: BTreeMap<String, String>,
    /// Fingerprint of the masked body: equal fingerprints mean equal intent.
    pub fingerprint: String,
}

/// Debug shows the masked body: a stray `{:?}` must not print a token.
impl std::fmt::Debug for DesiredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredObject")
            .field("api_version", &self.api_version)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("body", &self.masked_body())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DesiredObject {
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// The body with secret data replaced by fingerprints: safe to print and save.
    pub fn masked_body(&self) -> Value {
        if self.is_secret() {
            mask_secret_data(&self.body, &self.secret_fingerprints)
        } else {
            // A ConfigMap's `data` is not secret: it must reach the server as written.
            self.body.clone()
        }
    }

    /// A server message about a Secret could quote its data; replace any value it holds.
    pub fn redact(&self, message: &str) -> String {
        redact_body(message, &self.body)
    }

    pub fn is_secret(&self) -> bool {
        self.api_version == "v1" && self.kind == "Secret"
    }

    /// Replaces a body `observe` completed from the cluster (the NodeClass
    /// made from another): the fingerprint follows, so a change of the source
    /// is a change of the plan. Never for Secrets, whose values live here.
    pub fn complete(&mut self, body: Value) {
        if !self.is_secret() {
            self.fingerprint = crate::util::sha256_json(&body);
            self.body = body;
        }
    }

    pub fn set_cluster_scoped(&mut self) {
        self.namespace.clear();
        if let Some(meta) = self.body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("namespace");
        }
    }

    /// Puts secret values back into a masked body (applying a saved plan),
    /// refusing if they no longer match the fingerprints the plan was made with.
    pub fn from_masked(
        masked: &Value,
        fingerprints: &BTreeMap<String, String>,
        values: Option<&BTreeMap<String, SecretValue>>,
        key: &str,
    ) -> Result<Value, String> {
        let mut body = masked.clone();
        if fingerprints.is_empty() {
            return Ok(body);
        }
        let values = values.ok_or("the secret's values are no longer declared")?;
        let mut data = serde_json::Map::new();
        for (k, fp) in fingerprints {
            let v = values
                .get(k)
                .ok_or_else(|| format!("key `{k}` is no longer declared"))?;
            if &secret::fingerprint(key, v.expose()) != fp {
                return Err(format!(
                    "the value of key `{k}` changed since the plan was made"
                ));
            }
            data.insert(
                k.clone(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v.expose())),
            );
        }
        body["data"] = Value::Object(data);
        Ok(body)
    }
}

/// Whether secret values must be readable. Destroy does not send bodies, so
/// it must work without the token in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Require,
    Skip,
}

/// Renders every resource of a stack. `key` is the state's fingerprint key,
/// `lineage` the state's identity, written on every object it owns.
pub fn render(
    stack: &Stack,
    key: &str,
    lineage: &str,
    secrets: Secrets,
) -> Result<BTreeMap<Address, Desired>, SecretError> {
    let mut out = BTreeMap::new();
    let mut secret_checksums: BTreeMap<String, String> = BTreeMap::new();
    for r in stack
        .resources
        .iter()
        .filter(|r| r.address.kind == ResourceType::Secret)
    {
        let ResourceSpec::Secret(s) = &r.spec else {
            continue;
        };
        let values = match secrets {
            Secrets::Require => secret::read(&r.address, &s.data)?,
            Secrets::Skip => BTreeMap::new(),
        };
        let object = render_secret(stack, &r.address, &s.type_, &values, (key, lineage));
        secret_checksums.insert(
            r.address.name.clone(),
            crate::util::sha256_json(&json!(object.secret_fingerprints)),
        );
        out.insert(r.address.clone(), Desired::Object(object));
    }
    for r in &stack.resources {
        let desired = match &r.spec {
            ResourceSpec::Secret(_) => continue,
            ResourceSpec::NodePool(i) => Desired::NodePool(i.clone()),
            ResourceSpec::NodeClass(i) => Desired::NodeClass(i.clone()),
            ResourceSpec::Wait(w) => Desired::Wait(wait_target(stack, w)),
            ResourceSpec::GpuPool(i) | ResourceSpec::GpuClass(i) => {
                let body = gpu_nodes_object(stack, &r.address, i);
                Desired::Object(owned_object(stack, &r.address, lineage, body))
            }
            ResourceSpec::RayService(o) | ResourceSpec::Manifest(o) => {
                let mut body = o.object.clone();
                label(&mut body, stack, &r.address, lineage);
                let refs: BTreeMap<&String, &String> = referenced_secrets(&body)
                    .iter()
                    .filter_map(|n| secret_checksums.get_key_value(n))
                    .collect();
                if r.address.kind == ResourceType::RayService && !refs.is_empty() {
                    let checksum = crate::util::sha256_json(&json!(refs));
                    annotate_pod_templates(&mut body, &checksum[7..23]);
                }
                let namespace = stack.namespace.clone();
                if let Some(meta) = body["metadata"].as_object_mut() {
                    meta.insert("namespace".into(), Value::String(namespace.clone()));
                }
                Desired::Object(DesiredObject {
                    api_version: o.api_version().to_string(),
                    kind: o.kind().to_string(),
                    name: o.name().to_string(),
                    namespace,
                    fingerprint: crate::util::sha256_json(&body),
                    body,
                    secret_fingerprints: BTreeMap::new(),
                })
            }
        };
        out.insert(r.address.clone(), desired);
    }
    Ok(out)
}

/// The NodePool or NodeClass of a `[gpu_nodes]` table, from its template;
/// the pool asks for what the stack's GPU workers need.
fn gpu_nodes_object(stack: &Stack, address: &Address, intent: &GpuNodesIntent) -> Value {
    if address.kind == ResourceType::GpuClass {
        return gpu_nodes::class(&address.name, intent);
    }
    gpu_nodes::pool(&address.name, intent, &gpu_nodes::workers_of(stack))
}

/// A cluster-scoped object the stack creates, labelled as its own. Its
/// namespace is the stack's, as for a manifest: `observe` drops it once
/// discovery says the kind is cluster-scoped.
fn owned_object(stack: &Stack, address: &Address, lineage: &str, mut body: Value) -> DesiredObject {
    label(&mut body, stack, address, lineage);
    DesiredObject {
        api_version: body["apiVersion"].as_str().unwrap_or_default().to_string(),
        kind: body["kind"].as_str().unwrap_or_default().to_string(),
        name: address.name.clone(),
        namespace: stack.namespace.clone(),
        fingerprint: crate::util::sha256_json(&body),
        body,
        secret_fingerprints: BTreeMap::new(),
    }
}

/// The wait resolved against its RayService.
pub fn wait_target(stack: &Stack, wait: &WaitSpec) -> Target {
    let rayservice = stack
        .get(&Address::new(ResourceType::RayService, &wait.rayservice))
        .and_then(|r| match &r.spec {
            ResourceSpec::RayService(o) => Some(&o.object),
            _ => None,
        });
    // Parsing already refused a stack whose serveConfigV2 does not resolve.
    rayservice
        .and_then(|o| Target::resolve(wait, o).ok())
        .unwrap_or_else(|| Target::without_config(wait))
}

fn render_secret(
    stack: &Stack,
    address: &Address,
    type_: &str,
    values: &BTreeMap<String, SecretValue>,
    (key, lineage): (&str, &str),
) -> DesiredObject {
    let engine = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = values
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(engine.encode(v.expose()))))
        .collect();
    let fingerprints: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.clone(), secret::fingerprint(key, v.expose())))
        .collect();
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": address.name, "namespace": stack.namespace},
        "type": type_,
        "data": data,
    });
    label(&mut body, stack, address, lineage);
    let fingerprint = crate::util::sha256_json(&mask_secret_data(&body, &fingerprints));
    DesiredObject {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: address.name.clone(),
        namespace: stack.namespace.clone(),
        body,
        secret_fingerprints: fingerprints,
        fingerprint,
    }
}

/// Marks an object as created by this stack: how rayform recognises its own
/// objects, and refuses to touch anyone else's.
fn label(body: &mut Value, stack: &Stack, address: &Address, lineage: &str) {
    let meta = &mut body["metadata"];
    meta["labels"][LABEL_MANAGED_BY] = json!("rayform");
    meta["labels"][LABEL_STACK] = json!(stack.name);
    meta["annotations"][ANNOTATION_ADDRESS] = json!(address.to_string());
    meta["annotations"][ANNOTATION_LINEAGE] = json!(lineage);
}

/// The lineage a live object names, when it is not `ours` (objects written
/// before rayform recorded lineages name none, and stay claimable).
/// The rayform stack a live object is labelled for, if it is another than
/// `ours`: two stacks that declare the same object meet here.
pub fn other_stack<'a>(live: &'a Value, ours: &str) -> Option<&'a str> {
    let theirs = live
        .pointer("/metadata/labels")?
        .get(LABEL_STACK)?
        .as_str()?;
    (theirs != ours).then_some(theirs)
}

pub fn other_lineage(live: &Value, ours: &str) -> Option<String> {
    let theirs = live
        .pointer("/metadata/annotations")?
        .get(ANNOTATION_LINEAGE)?
        .as_str()?;
    (theirs != ours).then(|| theirs.to_string())
}

fn annotate_pod_templates(body: &mut Value, checksum: &str) {
    let Some(spec) = body.pointer_mut("/spec/rayClusterConfig") else {
        return;
    };
    if let Some(t) = spec.pointer_mut("/headGroupSpec/template") {
        annotate_template(t, checksum);
    }
    if let Some(groups) = spec
        .pointer_mut("/workerGroupSpecs")
        .and_then(Value::as_array_mut)
    {
        for t in groups.iter_mut().filter_map(|g| g.get_mut("template")) {
            annotate_template(t, checksum);
        }
    }
}

/// Sets the checksum annotation on a pod template of the shape the API
/// expects; any other shape is left for the API server to reject by name.
fn annotate_template(template: &mut Value, checksum: &str) {
    let Some(meta) = template
        .as_object_mut()
        .map(|t| t.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if let Some(annotations) = meta
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        annotations.insert(ANNOTATION_SECRET_CHECKSUM.into(), json!(checksum));
    }
}

/// Replaces a Secret's `data` values by the given fingerprints (or drops
/// values it has no fingerprint for).
pub fn mask_secret_data(body: &Value, fingerprints: &BTreeMap<String, String>) -> Value {
    let mut masked = body.clone();
    if let Some(data) = masked.get_mut("data").and_then(Value::as_object_mut) {
        for (k, v) in data.iter_mut() {
            *v = fingerprints
                .get(k)
                .map_or(Value::Null, |f| Value::String(f.clone()));
        }
    }
    if let Some(obj) = masked.as_object_mut() {
        obj.remove("stringData");
    }
    masked
}

/// Replaces a Secret's data, as the API returned it, by keyed fingerprints:
/// done to every object as it arrives, so no value travels further.
pub fn fingerprint_secret_data(object: &mut Value, key: &str) {
    if object["kind"] != "Secret" || object["apiVersion"] != "v1" {
        return;
    }
    let fps = live_secret_fingerprints(object, key);
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        for (k, v) in data.iter_mut() {
            *v = Value::String(fps.get(k).cloned().unwrap_or_default());
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("stringData");
    }
}

/// Replaces every value of a Secret body (as sent) found in `message`, in
/// any of the forms [`secret::Redactor`] knows.
pub fn redact_body(message: &str, body: &Value) -> String {
    let mut redactor = secret::Redactor::new();
    add_values(&mut redactor, body);
    redactor.redact(message).into_owned()
}

/// A redactor for every secret value of a rendered stack: what the CLI
/// masks in all it prints, logs included.
pub fn redactor(desired: &BTreeMap<Address, Desired>) -> secret::Redactor {
    let mut redactor = secret::Redactor::new();
    for d in desired.values() {
        if let Desired::Object(o) = d {
            add_values(&mut redactor, &o.body);
        }
    }
    redactor
}

/// The values of a Secret body: `data` as it decodes, `stringData` as it is.
fn add_values(redactor: &mut secret::Redactor, body: &Value) {
    if body["kind"] != "Secret" {
        return;
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let strings = |field: &str| -> Vec<String> {
        body[field]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let data = strings("data");
    let decoded: Vec<Vec<u8>> = data.iter().filter_map(|v| engine.decode(v).ok()).collect();
    let string_data = strings("stringData");
    redactor.add(decoded.iter().map(Vec::as_slice));
    redactor.add(string_data.iter().map(String::as_bytes));
}

/// Fingerprints of a live Secret's data, decoding the base64 the API returns.
pub fn live_secret_fingerprints(live: &Value, key: &str) -> BTreeMap<String, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    live.get("data")
        .and_then(Value::as_object)
        .map(|data| {
            data.iter()
                .map(|(k, v)| {
                    let raw = v
                        .as_str()
                        .and_then(|s| engine.decode(s).ok())
                        .unwrap_or_default();
                    (k.clone(), secret::fingerprint(key, &raw))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The parts of `live` that `desired` sets: what rayform is answerable for.
/// Objects recurse; lists and scalars are taken whole.
pub fn project(live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => Value::Object(
            d.keys()
                .filter_map(|k| l.get(k).map(|lv| (k.clone(), project(lv, &d[k]))))
                .collect(),
        ),
        (l, _) => l.clone(),
    }
}
