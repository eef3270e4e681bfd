//! The validated stack: plain data that every later stage reads.
//!
//! Nothing here knows about TOML or about a cluster. A `Stack` is what the
//! user asked for, with every reference checked and every default filled in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A position in a stack file, for error messages that point at the cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line it points at with a caret under the column, as rustc shows
    /// code under an error; `None` when the file cannot be read again.
    pub fn snippet(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        let line = text.lines().nth(self.line.checked_sub(1)?)?;
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        let indent: String = line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        Some(format!(
            "{gutter} |\n{number} | {line}\n{gutter} | {indent}^"
        ))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// The kinds of resource in a graph, state and plan: those a stack declares,
/// named as in the stack file, and one that follows from a `[nodepool]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    NodePool,
    NodeClass,
    Secret,
    RayService,
    Manifest,
    Wait,
    /// The NodePool of a `[gpu_nodes]` table, created and owned by the stack.
    GpuPool,
    /// The NodeClass of a `[gpu_nodes]` table, created and owned by the stack.
    GpuClass,
    /// The Karpenter v0.32 Provisioner beside the NodePool of a `[nodepool]`
    /// table, of the same name: Karpenter launches from both, so the intent
    /// is patched into both. Never declared; see [`Address::declared`].
    Provisioner,
}

/// The table that declares a [`ResourceType::GpuPool`] and a
/// [`ResourceType::GpuClass`] of one name: one intent, two objects.
pub const GPU_NODES_TABLE: &str = "gpu_nodes";

impl ResourceType {
    pub const ALL: [ResourceType; 9] = [
        ResourceType::NodePool,
        ResourceType::NodeClass,
        ResourceType::Secret,
        ResourceType::RayService,
        ResourceType::Manifest,
        ResourceType::Wait,
        ResourceType::GpuPool,
        ResourceType::GpuClass,
        ResourceType::Provisioner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::NodePool => "nodepool",
            ResourceType::NodeClass => "nodeclass",
            ResourceType::Secret => "secret",
            ResourceType::RayService => "rayservice",
            ResourceType::Manifest => "manifest",
            ResourceType::Wait => "wait",
            ResourceType::GpuPool => "gpupool",
            ResourceType::GpuClass => "gpuclass",
            ResourceType::Provisioner => "provisioner",
        }
    }

    /// The table a stack declares it in (`[gpu_nodes.NAME]` for both owned
    /// Karpenter objects; the type's own name for the others), or none for
    /// what follows from another table.
    pub fn table(self) -> Option<&'static str> {
        match self {
            ResourceType::GpuPool | ResourceType::GpuClass => Some(GPU_NODES_TABLE),
            ResourceType::Provisioner => None,
            other => Some(other.as_str()),
        }
    }

    pub fn parse(s: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Karpenter objects belong to the cluster's installer; rayform only patches fields of them.
    pub fn is_patch(self) -> bool {
        matches!(
            self,
            ResourceType::NodePool | ResourceType::NodeClass | ResourceType::Provisioner
        )
    }

    /// Karpenter objects, patched or owned: they come before the workload
    /// whose nodes they shape.
    pub fn prepares_nodes(self) -> bool {
        self.is_patch() || matches!(self, ResourceType::GpuPool | ResourceType::GpuClass)
    }
}

/// `<type>.<name>`: the key of a resource in the graph, the state and the plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub kind: ResourceType,
    pub name: String,
}

impl Address {
    pub fn new(kind: ResourceType, name: impl Into<String>) -> Address {
        Address {
            kind,
            name: name.into(),
        }
    }

    pub fn parse(s: &str) -> Option<Address> {
        let (kind, name) = s.split_once('.')?;
        let kind = ResourceType::parse(kind)?;
        (!name.is_empty()).then(|| Address::new(kind, name))
    }

    /// The address the stack declares this one under: itself, but for the
    /// Provisioner beside a NodePool, which follows its `[nodepool]` table.
    pub fn declared(&self) -> Address {
        match self.kind {
            ResourceType::Provisioner => Address::new(ResourceType::NodePool, &self.name),
            _ => self.clone(),
        }
    }

    /// For a `[nodepool]` intent: the Provisioner that may stand beside its
    /// NodePool on Karpenter v0.32.
    pub fn beside(&self) -> Option<Address> {
        (self.kind == ResourceType::NodePool)
            .then(|| Address::new(ResourceType::Provisioner, &self.name))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.as_str(), self.name)
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad address `{s}`")))
    }
}

/// A whole stack file, validated.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub namespace: String,
    pub file: PathBuf,
    pub state: StateLocation,
    pub resources: Vec<Resource>,
}

/// Where the state is kept, as given on the command line (`--backend`,
/// `--state`, `--state-namespace`): each replaces the stack's own setting.
#[derive(Debug, Clone, Default)]
pub struct StateOverride {
    pub backend: Option<BackendKind>,
    pub path: Option<PathBuf>,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    File,
    Kubernetes,
}

/// Where a stack's state is kept: `backend` in `[stack]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StateLocation {
    /// A JSON file (the default), locked with an OS file lock.
    File { path: PathBuf },
    /// A Secret in the cluster, locked with a Lease, both named after the stack.
    Kubernetes { namespace: String, stack: String },
}

impl StateLocation {
    pub fn secret_name(stack: &str) -> String {
        format!("rayform-state-{stack}")
    }

    pub fn lease_name(stack: &str) -> String {
        format!("rayform-lock-{stack}")
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::File { path } => write!(f, "{}", path.display()),
            StateLocation::Kubernetes { namespace, stack } => write!(
                f,
                "Secret {namespace}/{} (kubernetes backend)",
                StateLocation::secret_name(stack)
            ),
        }
    }
}

impl Stack {
    pub fn get(&self, address: &Address) -> Option<&Resource> {
        self.resources.iter().find(|r| &r.address == address)
    }

    /// The field manager every write of this stack uses, so `managedFields` tell stacks apart.
    pub fn field_manager(&self) -> String {
        format!("rayform/{}", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Resource {
    pub address: Address,
    pub spec: ResourceSpec,
    /// Explicit `depends_on` entries, with where each was written.
    pub depends_on: Vec<(Address, Location)>,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum ResourceSpec {
    NodePool(NodePoolIntent),
    NodeClass(NodeClassIntent),
    Secret(SecretSpec),
    RayService(ObjectSpec),
    Manifest(ObjectSpec),
    Wait(WaitSpec),
    GpuPool(GpuNodesIntent),
    GpuClass(GpuNodesIntent),
}

/// "Keep empty nodes this long": the user's intent, whatever Karpenter API serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePoolIntent {
    pub empty_ttl: Duration,
}

/// "Give nodes this much disk": mapped onto `blockDeviceMappings` of the node class.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeClassIntent {
    /// A quantity in `Gi`, `G`, `Ti` or `T`, as Karpenter's schemas accept.
    pub storage: String,
    /// The device to size; by default the one Karpenter reads node storage
    /// from for the class's AMI family (see `karpenter::family`).
    pub device: Option<String>,
}

/// "GPU nodes of the stack's own" (EKS Auto Mode, `[gpu_nodes.NAME]`): a
/// NodeClass made from an existing one with this much storage, and a
/// NodePool of NVIDIA instances launching from it that keeps empty nodes
/// `empty_ttl`. Both are created, owned and deleted by the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuNodesIntent {
    pub empty_ttl: Duration,
    /// `ephemeralStorage.size` of the NodeClass, a quantity in `Gi`, `G`, `Ti` or `T`.
    pub storage: String,
    /// The NodeClass whose role, subnets and security groups the new one
    /// takes (Auto Mode's `default` unless the stack says otherwise).
    pub class_from: String,
}

#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub type_: String,
    pub data: BTreeMap<String, SecretSource>,
}

/// Where a secret value comes from; the stack never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A Kubernetes object written by the user (RayService or any manifest).
#[derive(Debug, Clone)]
pub struct ObjectSpec {
    /// The full object, with `metadata.name` and (for namespaced kinds) `metadata.namespace` set.
    pub object: serde_json::Value,
    pub source: Option<PathBuf>,
}

impl ObjectSpec {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// The terminal node: the RayService answers on its route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitSpec {
    /// Name of the `rayservice.<name>` resource this wait watches.
    pub rayservice: String,
    /// The path that must be served, e.g. `/v1/chat/completions`.
    pub path: String,
    /// A fixed endpoint (ingress, load balancer, local server) instead of a port-forward.
    pub url: Option<String>,
    #[serde(with = "crate::util::duration_serde")]
    pub timeout: Duration,
    #[serde(with = "crate::util::duration_serde")]
    pub interval: Duration,
    pub probe: ProbeSpec,
    /// The model id answers must come from; by default read from the app's args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Which real request proves the service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeSpec {
    /// A one-token chat completion, to the model the stack names.
    Default,
    /// `probe = false`: the route table is enough.
    Off,
    Custom(Probe),
}

/// A real request that must answer 2xx before the service counts as ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub method: String,
    pub path: String,
    pub body: Option<String>,
    #[serde(with = "crate::util::duration_serde")]
    pub timeout: Duration,
}

impl Probe {
    /// How long one probe may take: a first request to a fresh model can be slow.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}
