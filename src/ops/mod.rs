//! Operations: the pipeline joined into what a user asks for (plan, apply,
//! destroy, import, and the state commands in [`state`]), so that any
//! caller can run one: the CLI, the integration tests, another tool. cargo
//! keeps its commands thin over its `ops` for the same reason: a command
//! parses arguments, calls one operation and renders its outcome;
//! everything between the stack file and the outcome is here, where it can
//! be driven without a terminal.
//!
//! An operation starts from a [`Session`]: the stack and its graph, the
//! state under its lock, and a connection to the cluster the state belongs
//! to. What the caller must show along the way (a held lock being waited
//! out, a damaged journal, the secret values to mask from here on) reaches it
//! through [`Notes`].
//!
//! Help lines name the stack `STACK` in their backticked `rayform …`
//! commands (the CLI fills in the path as it was given).

mod import;
mod saved;
pub mod state;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use import::import;
pub use saved::{PlanFileError, read_plan, save_plan, saved_session};

use crate::apply::{self, ApplyError, ApplyOptions, ApplyReport, SecretValues};
use crate::backend::{Backend, BackendError, Lock};
use crate::cluster::{Cluster, ClusterError, ConnectOptions};
use crate::desired::{self, Secrets};
use crate::graph::{Graph, GraphError};
use crate::observe::{self, DryRun, Mode, ObserveOptions};
use crate::plan::{self, Plan, PlanOptions};
use crate::secret::{Redactor, SecretError};
use crate::stack::{self, Address, ResourceSpec, Stack, StackError, StateLocation, StateOverride};
use crate::state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    PlanFile(#[from] PlanFileError),
    #[error(
        "state is locked by {0}\n  help: wait for that run to finish; if it died, run `rayform force-unlock STACK {id}`",
        id = .0.id
    )]
    Locked(Box<crate::state::lock::LockInfo>),
    #[error(
        "the state at {location} belongs to stack `{found}`, not `{stack}`\n  help: give each stack its own state (--state, or `state` in [stack])"
    )]
    OtherStack {
        location: StateLocation,
        found: String,
        stack: String,
    },
    #[error(
        "the state was written against {recorded}, but this kubeconfig context points at {connected}\n  help: choose the right cluster with --context"
    )]
    OtherCluster { recorded: String, connected: String },
    #[error("{flag} {given}: not an address like secret.hf-token")]
    NotAnAddress { flag: &'static str, given: String },
    #[error(
        "--target {address}: no such resource in {} or its state\n  help: the stack file and `rayform state list STACK` list the addresses",
        file.display()
    )]
    UnknownTarget { address: Address, file: PathBuf },
    /// What an operation will not do, said with its reason (and help).
    #[error("{0}")]
    Refused(String),
}

impl OpsError {
    /// The state found at the stack's location belongs to stack `found`.
    fn other_stack(s: &Stack, found: String) -> OpsError {
        OpsError::OtherStack {
            location: s.state.clone(),
            found,
            stack: s.name.clone(),
        }
    }
}

/// What the caller shows of a run that is not its outcome.
pub trait Notes: Sync {
    /// Why the run waits (a Lease held by another run, watched before it is taken over).
    fn note(&self, message: &str);
    /// Something the user should know that does not stop the run.
    fn warn(&self, message: &str);
    /// Secret values read by the run: to be masked in all that is printed from now on.
    fn mask(&self, values: &Redactor);
    /// `text` with every value masked so far replaced, for what rayform writes out.
    fn redact(&self, text: &str) -> String;
}

/// Where an operation works: the stack file, the state flags that override
/// the stack's own setting, and the kubeconfig to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct Place {
    pub stack: PathBuf,
    pub state: StateOverride,
    pub connect: ConnectOptions,
}

/// What the lock is taken for (it tells another run who holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Plan,
    Apply,
    Destroy,
    Import,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Plan => "plan",
            Operation::Apply => "apply",
            Operation::Destroy => "destroy",
            Operation::Import => "import",
        }
    }
}

/// What a plan is for: the stack's wishes, or taking it all down (`force`:
/// over Karpenter fields changed outside rayform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Apply,
    Destroy { force: bool },
}

/// How to plan: the intent and the flags that shape what is observed and decided.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub intent: Intent,
    pub dry_run: DryRun,
    pub force_conflicts: bool,
    /// Addresses as given (`--adopt`), checked here for shape.
    pub adopt: Vec<String>,
    /// Addresses as given (`--target`), checked here for shape and existence.
    pub targets: Vec<String>,
    pub refresh_only: bool,
}

impl PlanRequest {
    pub fn new(intent: Intent) -> PlanRequest {
        PlanRequest {
            intent,
            dry_run: DryRun::default(),
            force_conflicts: false,
            adopt: Vec::new(),
            targets: Vec::new(),
            refresh_only: false,
        }
    }
}

/// What plan, apply, destroy and import all start from.
pub struct Session {
    pub stack: Stack,
    pub graph: Graph,
    pub backend: Backend,
    /// None only for a plan of a stack whose state file does not exist:
    /// locking it would create `state/` and a lock file, and plan writes nothing.
    lock: Option<Lock>,
    pub state: State,
    /// No state existed yet.
    pub new: bool,
    pub cluster: Cluster,
}

/// Reads and checks the stack, connects, and takes the state's lock.
pub async fn open(
    place: &Place,
    operation: Operation,
    notes: &dyn Notes,
) -> Result<Session, OpsError> {
    let stack = stack::load(&place.stack, &place.state)?;
    let graph = Graph::build(&stack)?;
    let cluster = connect(&place.connect).await?;
    let backend = Backend::open(&stack.state, Some(&cluster))?;
    let nothing_to_lock = match &stack.state {
        StateLocation::File { path } => operation == Operation::Plan && !path.exists(),
        StateLocation::Kubernetes { .. } => false,
    };
    let lock = if nothing_to_lock {
        None
    } else {
        Some(lock(&backend, operation.as_str(), notes).await?)
    };
    let (state, new) = load_state(&backend, &stack, notes).await?;
    check_cluster(&state, &cluster)?;
    Ok(Session {
        stack,
        graph,
        backend,
        lock,
        state,
        new,
        cluster,
    })
}

impl Session {
    /// The plan `request` asks for: rendered, observed, built, and checked
    /// against what the state's backend can keep.
    pub async fn plan(&self, request: &PlanRequest, notes: &dyn Notes) -> Result<Plan, OpsError> {
        let (s, state, cluster) = (&self.stack, &self.state, &self.cluster);
        let started = std::time::Instant::now();
        let (mode, force) = match request.intent {
            Intent::Apply => (Mode::Apply, false),
            Intent::Destroy { force } => (Mode::Destroy, force),
        };
        let secrets = match mode {
            Mode::Apply => Secrets::Require,
            Mode::Destroy => Secrets::Skip,
        };
        let mut desired = desired::render(s, &state.fingerprint_key, &state.lineage, secrets)?;
        // Before the first request: a refusal may quote a value, in a log line
        // too. Destroy needs no value, but masks those it can read all the same
        // (a policy on DELETE sees the Secret's data).
        notes.mask(&desired::redactor(&desired));
        if mode == Mode::Destroy {
            let _ = read_secrets(s, notes);
        }
        let adopt = addresses("--adopt", &request.adopt)?;
        let targets = addresses("--target", &request.targets)?;
        if let Some(unknown) = targets
            .iter()
            .find(|a| s.get(&a.declared()).is_none() && !state.resources.contains_key(a))
        {
            return Err(OpsError::UnknownTarget {
                address: unknown.clone(),
                file: s.file.clone(),
            });
        }
        let observing = ObserveOptions {
            force,
            dry_run: request.dry_run,
            adopt: adopt.clone(),
        };
        let world = observe::observe(cluster, s, &mut desired, state, mode, &observing).await?;
        tracing::debug!(
            "observed the cluster in {:?} with {} API requests (after discovery)",
            started.elapsed(),
            cluster.requests()
        );
        let options = PlanOptions {
            destroy: mode == Mode::Destroy,
            force_conflicts: request.force_conflicts,
            adopt,
            targets,
            refresh_only: request.refresh_only,
        };
        let mut plan = plan::build(s, &self.graph, &desired, state, self.new, &world, &options);
        if let Err(e) = self.backend.check_size(state, &plan) {
            plan.errors.push(e.to_string());
        }
        Ok(plan)
    }

    /// The session of a run that changes things: its lock is held.
    pub fn into_held(self) -> Result<Held, OpsError> {
        let lock = self.lock.ok_or_else(unlocked)?;
        Ok(Held {
            cluster: self.cluster,
            backend: self.backend,
            lock,
            state: self.state,
        })
    }
}

/// What carrying out a plan needs: the cluster, and the state under its lock.
pub struct Held {
    pub cluster: Cluster,
    pub backend: Backend,
    lock: Lock,
    pub state: State,
}

impl Held {
    /// Carries out `plan`, recording each finished resource in the state.
    /// A plan with errors was refused before this: the caller showed it.
    pub async fn execute(
        self,
        plan: &Plan,
        secrets: SecretValues,
        options: ApplyOptions,
    ) -> Result<ApplyReport, OpsError> {
        let store = (&self.backend, &self.lock);
        let (_state, result) =
            apply::apply(&self.cluster, plan, self.state, store, secrets, options).await;
        Ok(result?)
    }
}

fn unlocked() -> OpsError {
    OpsError::Backend(BackendError::Kubernetes(
        "internal: the state was opened without its lock".into(),
    ))
}

/// The lock of a run that changes things (always taken for those).
fn held(lock: &Option<Lock>) -> Result<&Lock, OpsError> {
    lock.as_ref().ok_or_else(unlocked)
}

/// The cluster the kubeconfig names, with the time discovery took (`-v`).
pub async fn connect(options: &ConnectOptions) -> Result<Cluster, OpsError> {
    let started = std::time::Instant::now();
    let cluster = Cluster::connect(options).await?;
    tracing::debug!(
        "connected to {} and read discovery in {:?}",
        cluster.id.server,
        started.elapsed()
    );
    Ok(cluster)
}

/// Takes the state lock; when another run holds it, says how to break it
/// should that run have died.
pub async fn lock(backend: &Backend, operation: &str, notes: &dyn Notes) -> Result<Lock, OpsError> {
    let notice = |m: &str| notes.note(m);
    backend.lock(operation, &notice).await.map_err(|e| match e {
        BackendError::State(StateError::Locked(holder)) => OpsError::Locked(holder),
        e => e.into(),
    })
}

/// The backend at `location`; connects to the cluster only if the state is kept there.
pub async fn backend_at(
    location: &StateLocation,
    connect: &ConnectOptions,
) -> Result<Backend, OpsError> {
    let cluster = match location {
        StateLocation::File { .. } => None,
        StateLocation::Kubernetes { .. } => Some(self::connect(connect).await?),
    };
    Ok(Backend::open(location, cluster.as_ref())?)
}

/// The state kept by `backend`, saying what of a killed run's journal was
/// damaged and left out.
pub async fn read_state(backend: &Backend, notes: &dyn Notes) -> Result<Option<State>, OpsError> {
    Ok(backend.load().await?.map(|loaded| {
        if let Some(cut) = &loaded.cut {
            notes.warn(&cut.to_string());
        }
        loaded.state
    }))
}

/// The stack's state, or a new one if it has none; a state of another stack is refused.
pub async fn load_state(
    backend: &Backend,
    s: &Stack,
    notes: &dyn Notes,
) -> Result<(State, bool), OpsError> {
    match read_state(backend, notes).await? {
        Some(st) if st.stack != s.name => Err(OpsError::other_stack(s, st.stack)),
        Some(st) => Ok((st, false)),
        None => Ok((State::new(&s.name).map_err(BackendError::from)?, true)),
    }
}

fn check_cluster(state: &State, cluster: &Cluster) -> Result<(), OpsError> {
    match &state.cluster {
        Some(c) if !state.resources.is_empty() && c.server != cluster.id.server => {
            Err(OpsError::OtherCluster {
                recorded: c.server.clone(),
                connected: cluster.id.server.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// The addresses given to a flag, each checked for shape.
fn addresses(flag: &'static str, given: &[String]) -> Result<BTreeSet<Address>, OpsError> {
    given
        .iter()
        .map(|a| {
            Address::parse(a).ok_or_else(|| OpsError::NotAnAddress {
                flag,
                given: a.clone(),
            })
        })
        .collect()
}

/// The stack's secret values, masked from here on in all that is shown
/// (those read before one that cannot be read, too).
pub fn read_secrets(s: &Stack, notes: &dyn Notes) -> Result<SecretValues, OpsError> {
    let mut values = SecretValues::new();
    for r in &s.resources {
        if let ResourceSpec::Secret(spec) = &r.spec {
            let read = crate::secret::read(&r.address, &spec.data)?;
            let mut masks = Redactor::new();
            masks.add(read.values().map(crate::secret::SecretValue::expose));
            notes.mask(&masks);
            values.insert(r.address.clone(), read);
        }
    }
    Ok(values)
}

/// Whether carrying out `plan` does anything: a change to the cluster, an
/// entry the state records or forgets, or (when waits run) a readiness wait.
pub fn has_work(plan: &Plan, waits_run: bool) -> bool {
    plan.has_changes()
        || plan.changes.iter().any(plan::Change::records_only)
        || (waits_run
            && plan
                .changes
                .iter()
                .any(|c| c.action() == plan::Action::Wait))
}
