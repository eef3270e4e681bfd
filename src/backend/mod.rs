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

pub mod kubernetes;

use crate::cluster::{Cluster, ClusterError};
use crate::stack::StateLocation;
use crate::state::journal::{Change, Journal};
use crate::state::lock::{LockInfo, StateLock};
use crate::state::{State, StateError, store};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state backend: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Kubernetes(String),
    #[error(
        "the state lock was lost: {0}\n  help: from that moment this run wrote nothing more, neither objects nor state; the next run finds what it wrote before. Run the same command again (once a run that took over is done) to finish the rest"
    )]
    LockLost(String),
}

/// How a backend tells the user why it is waiting (a held Lease it
/// watches before taking it over): one line each time.
pub type Notice<'a> = &'a (dyn Fn(&str) + Sync);

/// An opened backend: where a stack's state lives.
pub enum Backend {
    File(std::path::PathBuf),
    Kubernetes(Box<kubernetes::SecretBackend>),
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
            (StateLocation::File { path }, _) => Ok(Backend::File(path.clone())),
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
            Backend::File(path) => Ok(Lock::File(StateLock::acquire(path, operation)?)),
            Backend::Kubernetes(b) => Ok(Lock::Lease(Box::new(b.lock(operation, notice).await?))),
        }
    }

    pub async fn load(&self) -> Result<Option<State>, BackendError> {
        match self {
            Backend::File(path) => Ok(store::load(path)?),
            Backend::Kubernetes(b) => b.load().await,
        }
    }

    /// Writes the state whole (serial bumped); the caller holds the lock.
    pub async fn save(&self, state: &mut State, lock: &Lock) -> Result<(), BackendError> {
        match (self, lock) {
            (Backend::File(path), _) => Ok(store::save(path, state)?),
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
            (Backend::File(path), _) => Ok(Writer::File(Journal::begin(path, state)?)),
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
            Backend::File(path) => Ok(crate::state::lock::force_unlock(path, id)?),
            Backend::Kubernetes(b) => b.force_unlock(id, notice).await,
        }
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
