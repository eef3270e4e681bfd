//! Where the state is kept, and how one run at a time is ensured: a file
//! beside the stack (the default), or a Secret and a Lease in the cluster, so
//! a team (and its CI) share one state the way Terraform's `kubernetes`
//! backend, Helm and kapp do.
//!
//! The engine sees one interface whichever backend the stack names: take the
//! lock, load, save, and, during an apply, a [`Writer`] that records each
//! finished resource cheaply (a journal line for a file; for the cluster, the
//! Secret rewritten at most about once a second) and writes the state whole
//! at the end. [`crate::state`] stays the plain data and the file format.
//!
//! Before a run first overwrites the state, each backend keeps the state as
//! the run found it (Terraform's `.backup`): [`Backend::restore`] puts it back.

pub mod kubernetes;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::{Cluster, ClusterError};
use crate::plan::{Keep, Op, Payload, Plan};
use crate::stack::StateLocation;
use crate::state::journal::{Change, Journal};
use crate::state::lock::{LockInfo, StateLock};
use crate::state::store::Loaded;
use crate::state::{Applied, ResourceState, State, StateError, store};

pub use kubernetes::Restored;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state backend: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Kubernetes(String),
    #[error(
        "the state lock was lost: {0}\n  help: from that moment this run wrote nothing more, neither objects nor state; the next run finds what it wrote before"
    )]
    LockLost(String),
    /// The state would pass what the kubernetes backend keeps (compressed bytes).
    #[error(
        "the state of stack `{stack}` would take {} compressed, more than the kubernetes backend keeps ({} in {} Secrets of 1 MiB)\n  help: split the stack in two (each stack has its own state), or keep this one's state in a file (--backend file)",
        mib(*.bytes), mib(*.limit), .limit / kubernetes::stored::PART_BYTES
    )]
    TooLarge {
        stack: String,
        bytes: usize,
        limit: usize,
    },
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// How a backend tells the user why it is waiting (a held Lease it
/// watches before taking it over): one line each time.
pub type Notice<'a> = &'a (dyn Fn(&str) + Sync);

/// An opened backend: where a stack's state lives.
pub enum Backend {
    File(FileBackend),
    Kubernetes(Box<kubernetes::SecretBackend>),
}

/// The state file, and whether this run has kept its backup yet.
pub struct FileBackend {
    path: PathBuf,
    backed_up: AtomicBool,
}

impl FileBackend {
    /// Before this run's first write: the state as it found it, to
    /// `<state>.backup`. Later writes of the same run keep that backup.
    fn back_up(&self) -> Result<(), StateError> {
        if !self.backed_up.swap(true, Ordering::SeqCst) {
            store::back_up(&self.path)?;
        }
        Ok(())
    }
}

/// The lock of a run, released when dropped (a file lock also goes with its
/// process; a Lease expires). See [`kubernetes::settle`].
pub enum Lock {
    File(StateLock),
    Lease(Box<kubernetes::LeaseLock>),
}

impl Backend {
    /// `cluster` is needed (and used) only by the kubernetes backend.
    pub fn open(
        location: &StateLocation,
        cluster: Option<&Cluster>,
    ) -> Result<Backend, BackendError> {
        match (location, cluster) {
            (StateLocation::File { path }, _) => Ok(Backend::File(FileBackend {
                path: path.clone(),
                backed_up: AtomicBool::new(false),
            })),
            (StateLocation::Kubernetes { namespace, stack }, Some(cluster)) => {
                Ok(Backend::Kubernetes(Box::new(
                    kubernetes::SecretBackend::new(cluster.clone(), namespace, stack),
                )))
            }
            (StateLocation::Kubernetes { .. }, None) => Err(BackendError::Kubernetes(
                "the kubernetes state backend needs a connection to the cluster".into(),
            )),
        }
    }

    pub async fn lock(&self, operation: &str, notice: Notice<'_>) -> Result<Lock, BackendError> {
        match self {
            Backend::File(f) => Ok(Lock::File(StateLock::acquire(&f.path, operation)?)),
            Backend::Kubernetes(b) => Ok(Lock::Lease(Box::new(b.lock(operation, notice).await?))),
        }
    }

    /// The state, with what of a killed run's journal could not be read
    /// (the caller says so: the library prints nothing).
    pub async fn load(&self) -> Result<Option<Loaded>, BackendError> {
        match self {
            Backend::File(f) => Ok(store::load(&f.path)?),
            Backend::Kubernetes(b) => Ok(b.load().await?.map(|state| Loaded { state, cut: None })),
        }
    }

    /// Writes the state whole (serial bumped); the caller holds the lock.
    pub async fn save(&self, state: &mut State, lock: &Lock) -> Result<(), BackendError> {
        match (self, lock) {
            (Backend::File(f), _) => {
                f.back_up()?;
                Ok(store::save(&f.path, state)?)
            }
            (Backend::Kubernetes(b), Lock::Lease(lease)) => b.save(state, &lease.handle()).await,
            (Backend::Kubernetes(_), Lock::File(_)) => Err(BackendError::Kubernetes(
                "internal: the kubernetes backend was given a file lock".into(),
            )),
        }
    }

    /// Starts an apply: the state is written whole first (so its lineage,
    /// which every object written next carries, is durable), then each
    /// finished resource is recorded through the returned writer.
    pub async fn begin(&self, state: &mut State, lock: &Lock) -> Result<Writer, BackendError> {
        match (self, lock) {
            (Backend::File(f), _) => {
                f.back_up()?;
                Ok(Writer::File(Journal::begin(&f.path, state)?))
            }
            (Backend::Kubernetes(b), Lock::Lease(lease)) => {
                let handle = lease.handle();
                b.save(state, &handle).await?;
                Ok(Writer::Kubernetes(Box::new(kubernetes::Batched::new(
                    (**b).clone(),
                    handle,
                ))))
            }
            (Backend::Kubernetes(_), Lock::File(_)) => Err(BackendError::Kubernetes(
                "internal: the kubernetes backend was given a file lock".into(),
            )),
        }
    }

    /// Breaks the lock of a holder that is gone (`rayform force-unlock`).
    pub async fn force_unlock(
        &self,
        id: &str,
        notice: Notice<'_>,
    ) -> Result<LockInfo, BackendError> {
        match self {
            Backend::File(f) => Ok(crate::state::lock::force_unlock(&f.path, id)?),
            Backend::Kubernetes(b) => b.force_unlock(id, notice).await,
        }
    }

    /// Puts back the state as it was before the last command that wrote it
    /// (the caller holds the lock); `None` if no backup was kept.
    pub async fn restore(&self, lock: &Lock) -> Result<Option<Restored>, BackendError> {
        match (self, lock) {
            (Backend::File(f), _) => Ok(store::restore(&f.path)?.map(|(from, state)| Restored {
                from,
                serial: state.serial,
                resources: state.resources.len(),
            })),
            (Backend::Kubernetes(b), Lock::Lease(lease)) => b.restore(&lease.handle()).await,
            (Backend::Kubernetes(_), Lock::File(_)) => Err(BackendError::Kubernetes(
                "internal: the kubernetes backend was given a file lock".into(),
            )),
        }
    }

    /// Where the backup is kept, as a user finds it.
    pub fn backup_location(&self) -> String {
        match self {
            Backend::File(f) => store::backup_path(&f.path).display().to_string(),
            Backend::Kubernetes(b) => b.backup_location(),
        }
    }

    /// Refuses, before anything is written, a plan whose state would not
    /// fit the backend (only the kubernetes backend has a limit).
    pub fn check_size(&self, state: &State, plan: &Plan) -> Result<(), BackendError> {
        match self {
            Backend::File(_) => Ok(()),
            Backend::Kubernetes(b) => b.check_size(&projected(state, plan)),
        }
    }
}

/// The state as it will be once `plan` is applied, near enough to size it:
/// each object written recorded with its body as the fields it applied.
fn projected(state: &State, plan: &Plan) -> State {
    let mut after = state.clone();
    for change in &plan.changes {
        let address = change.address.clone();
        match &change.op {
            Op::Create(w) | Op::Update { write: w, .. } => {
                after
                    .resources
                    .insert(address, recorded(change, &w.payload));
            }
            Op::NoOp(Keep::Record { payload, .. }) => {
                after.resources.insert(address, recorded(change, payload));
            }
            Op::Delete(_) | Op::Forget => {
                after.resources.remove(&address);
            }
            // A Karpenter patch records a few fields; the rest records nothing.
            Op::NoOp(_) | Op::Patch(_) | Op::Revert(_) | Op::Wait(_) | Op::Refused(_) => {}
        }
    }
    after
}

/// What the state will record of an object written with `payload`.
fn recorded(change: &crate::plan::Change, payload: &Payload) -> ResourceState {
    ResourceState {
        api_version: change.api_version.clone(),
        kind: change.kind.clone(),
        name: change.name.clone(),
        namespace: change.namespace.clone(),
        // What the server adds: a uid and a resourceVersion.
        uid: Some("00000000-0000-0000-0000-000000000000".into()),
        resource_version: Some("0000000000".into()),
        desired_fingerprint: payload.desired_fingerprint.clone(),
        live_fingerprint: payload.desired_fingerprint.clone(),
        applied: Applied::new(&payload.body),
        secret_fingerprints: payload.secret_fingerprints.clone(),
        patch: None,
    }
}

/// Records an apply's progress; see [`Backend::begin`].
pub enum Writer {
    File(Journal),
    Kubernetes(Box<kubernetes::Batched>),
}

impl Writer {
    /// Records one finished resource; `state` already includes `change`.
    pub async fn record(&self, state: &mut State, change: &Change) -> Result<(), BackendError> {
        match self {
            Writer::File(journal) => Ok(journal.append(change)?),
            Writer::Kubernetes(batched) => batched.record(state).await,
        }
    }

    /// Fails once this run's lock is lost (a file lock never is): called
    /// before every write to the cluster, so a run that may no longer hold
    /// the lock changes nothing more.
    pub fn check(&self) -> Result<(), BackendError> {
        match self {
            Writer::File(_) => Ok(()),
            Writer::Kubernetes(batched) => batched.check(),
        }
    }

    /// Resolves if this run's lock is lost (a file lock never is).
    pub async fn lost(&self) -> BackendError {
        match self {
            Writer::File(_) => std::future::pending().await,
            Writer::Kubernetes(batched) => batched.lost().await,
        }
    }

    /// Writes the state whole; the run is over.
    pub async fn finish(&self, state: &mut State) -> Result<(), BackendError> {
        match self {
            Writer::File(journal) => Ok(journal.finish(state)?),
            Writer::Kubernetes(batched) => batched.finish(state).await,
        }
    }
}
