//! The state in the cluster: a Secret holds it (gzip-compressed JSON, with
//! its lineage, serial and hash as annotations; past 1 MiB in parts, see
//! [`stored`]), a `coordination.k8s.io/v1` Lease ([`lease`]) is the lock.
//!
//! Two writers cannot lose each other's update: every write of the Secret
//! carries the resourceVersion this run last read or wrote, so the server
//! refuses it if anyone wrote in between. A write whose answer was lost is
//! read back: if the Secret holds exactly what this run wrote (lineage,
//! serial and hash), the write landed and the run goes on.
//!
//! Before its first write, a run copies the state as it found it to
//! `rayform-state-<stack>.backup` (`rayform state restore` puts it back).

mod lease;
pub mod stored;

pub use lease::{LEASE_DURATION, LeaseHandle, LeaseLock, RENEW_DEADLINE, settle};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;

use super::BackendError;
use crate::cluster::{Cluster, ClusterError};
use crate::stack::StateLocation;
use crate::state::State;
use crate::state::store::{Decoded, decode};
use stored::{EncodeError, Record};

/// During an apply, the Secret is rewritten at most this often (and at the end).
const WRITE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct SecretBackend {
    cluster: Cluster,
    namespace: String,
    stack: String,
    stored: Arc<Mutex<Stored>>,
}

/// What this run knows of the Secrets it keeps the state in.
#[derive(Default)]
struct Stored {
    /// The state Secret's resourceVersion as this run last read or wrote it.
    resource_version: Option<String>,
    /// Its record then, once read whole (`None`: no Secret, or one that
    /// does not read, which no backup replaces a good one with).
    record: Option<Record>,
    /// The parts the backup names: deleting stale parts keeps them.
    backup_parts: Vec<String>,
    /// The backup is written (or there was nothing to back up).
    backed_up: bool,
    /// Parts left by a killed run were looked for.
    swept: bool,
}

/// Compressing, or unpacking and parsing, a large state takes long enough
/// (seconds for 10 000 objects on a loaded machine) to starve the Lease's
/// renewals on the command line's single-threaded runtime, and so to lose
/// the lock: that work runs on the blocking pool instead.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackendError::Kubernetes(format!("internal: encoding the state failed: {e}")))
}

/// What `state restore` did.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// The serial the backup held.
    pub from: u64,
    /// The serial the state has now.
    pub serial: u64,
    pub resources: usize,
}

impl SecretBackend {
    pub fn new(cluster: Cluster, namespace: &str, stack: &str) -> SecretBackend {
        SecretBackend {
            cluster,
            namespace: namespace.to_string(),
            stack: stack.to_string(),
            stored: Arc::default(),
        }
    }

    fn secret_name(&self) -> String {
        StateLocation::secret_name(&self.stack)
    }

    fn backup_name(&self) -> String {
        format!("{}.backup", self.secret_name())
    }

    /// Where the backup is kept, as a user finds it.
    pub fn backup_location(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.backup_name())
    }

    fn describe(&self) -> String {
        format!("state Secret {}/{}", self.namespace, self.secret_name())
    }

    fn error(&self, e: ClusterError) -> BackendError {
        match e {
            ClusterError::NotFound { message, .. } if message.contains("namespaces") => {
                BackendError::Kubernetes(format!(
                    "the state namespace `{ns}` does not exist\n  help: create it (`kubectl create namespace {ns}`) or choose another with `state_namespace` in [stack]",
                    ns = self.namespace
                ))
            }
            e @ ClusterError::Forbidden { .. } => BackendError::Kubernetes(format!(
                "{e}\n  help: the kubernetes state backend needs get, create and update on secrets and leases.coordination.k8s.io in namespace `{}` (and list and delete on secrets once a state passes 1 MiB); or keep the state in a file (--backend file)",
                self.namespace
            )),
            other => BackendError::Cluster(other),
        }
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the state Secret's record, remembering its resourceVersion.
    async fn fetch(&self) -> Result<Option<Result<Record, String>>, BackendError> {
        let found = self
            .cluster
            .get_typed::<Secret>(&self.namespace, &self.secret_name())
            .await
            .map_err(|e| self.error(e))?;
        let mut stored = self.stored();
        stored.resource_version = found
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        stored.record = None;
        Ok(found.as_ref().map(Record::from_secret))
    }

    pub async fn load(&self) -> Result<Option<State>, BackendError> {
        let record = match self.fetch().await? {
            None => return Ok(None),
            Some(Err(message)) => return Err(self.corrupt(&self.describe(), message)),
            Some(Ok(record)) => record,
        };
        let state = self.read(&record, &self.describe()).await?;
        self.stored().record = Some(record);
        Ok(Some(state))
    }

    /// The state a record holds, its parts fetched and checked.
    async fn read(&self, record: &Record, what: &str) -> Result<State, BackendError> {
        let mut parts = Vec::new();
        for name in record.parts() {
            let part = self
                .cluster
                .get_typed::<Secret>(&self.namespace, name)
                .await
                .map_err(|e| self.error(e))?
                .and_then(stored::part_bytes)
                .ok_or_else(|| self.corrupt(what, format!("its part `{name}` is missing")))?;
            parts.push(part);
        }
        let record = record.clone();
        let decoded =
            off_the_runtime(move || record.decode(parts).map(|text| decode(&text))).await?;
        let decoded = decoded.map_err(|message| self.corrupt(what, message))?;
        decoded.map_err(|e| match e {
            Decoded::Corrupt(message) => self.corrupt(what, message),
            Decoded::Version(found) => BackendError::Kubernetes(format!(
                "{what} has format_version {found}; this rayform reads {}",
                crate::state::FORMAT_VERSION
            )),
        })
    }

    fn corrupt(&self, what: &str, message: String) -> BackendError {
        BackendError::Kubernetes(format!(
            "{what} is not a valid state: {message}\n  help: `rayform state restore STACK` puts back the state as it was before the last command that wrote it (Secret {}), or state push stores a copy you kept. rayform will not adopt the objects it lists",
            self.backup_name()
        ))
    }

    /// Whether `state` would fit; the same check every write makes.
    pub fn check_size(&self, state: &State) -> Result<(), BackendError> {
        stored::encode(state, &self.secret_name())
            .map(drop)
            .map_err(|e| self.encode_error(e))
    }

    fn encode_error(&self, e: EncodeError) -> BackendError {
        match e {
            EncodeError::TooLarge(too) => BackendError::TooLarge {
                stack: self.stack.clone(),
                bytes: too.bytes,
                limit: too.limit,
            },
            other => BackendError::Kubernetes(other.to_string()),
        }
    }

    /// Writes the state whole, serial bumped, if this run still holds `lease`.
    pub async fn save(&self, state: &mut State, lease: &LeaseHandle) -> Result<(), BackendError> {
        lease.check()?;
        self.back_up().await?;
        state.serial += 1;
        let (snapshot, base) = (state.clone(), self.secret_name());
        let encoded = off_the_runtime(move || stored::encode(&snapshot, &base))
            .await?
            .map_err(|e| self.encode_error(e))?;
        for (name, bytes) in &encoded.parts {
            self.write_part(name, state.serial, bytes).await?;
        }
        let previous = self.stored().record.clone();
        self.write_record(&encoded.record).await?;
        self.drop_stale(previous.as_ref(), &encoded.record).await;
        Ok(())
    }

    /// Stores one part; a part of that name holds those bytes already (the
    /// name carries their hash), so finding it is as good as writing it.
    async fn write_part(&self, name: &str, serial: u64, bytes: &[u8]) -> Result<(), BackendError> {
        let part = stored::part_secret(name, &self.namespace, &self.stack, serial, bytes);
        match self.cluster.create_typed(&self.namespace, &part).await {
            Ok(_) | Err(ClusterError::Conflict { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Switches the state Secret to `record`, guarded by its resourceVersion.
    async fn write_record(&self, record: &Record) -> Result<(), BackendError> {
        let rv = self.stored().resource_version.clone();
        let secret = record.to_secret(&self.secret_name(), &self.namespace, &self.stack, rv);
        let failure = match self.put(&secret).await {
            Ok(s) => {
                let mut stored = self.stored();
                stored.resource_version = s.metadata.resource_version;
                stored.record = Some(record.clone());
                return Ok(());
            }
            Err(e) => e,
        };
        // The answer may have been lost after the write landed (the
        // connection dropped), or this is the conflict of a retry of it.
        if matches!(
            failure,
            ClusterError::Conflict { .. }
                | ClusterError::Unreachable { .. }
                | ClusterError::Api { .. }
        ) && self.landed(record).await
        {
            tracing::debug!(
                serial = record.serial,
                "the state write landed; its answer was lost"
            );
            return Ok(());
        }
        match failure {
            ClusterError::Conflict { .. } => Err(BackendError::Kubernetes(format!(
                "{} was written by someone else since this run read it; nothing was overwritten\n  help: run the command again (it reads the new state)",
                self.describe()
            ))),
            e => Err(self.error(e)),
        }
    }

    /// Writes a Secret over the version it carries, or creates it when it
    /// carries none: the server refuses either if someone wrote in between.
    async fn put(&self, secret: &Secret) -> Result<Secret, ClusterError> {
        if secret.metadata.resource_version.is_some() {
            self.cluster.replace_typed(&self.namespace, secret).await
        } else {
            self.cluster.create_typed(&self.namespace, secret).await
        }
    }

    /// Whether the state Secret now holds exactly `record` (then its
    /// resourceVersion is this run's to carry on from).
    async fn landed(&self, record: &Record) -> bool {
        let Ok(Some(found)) = self
            .cluster
            .get_typed::<Secret>(&self.namespace, &self.secret_name())
            .await
        else {
            return false;
        };
        if !Record::from_secret(&found).is_ok_and(|r| r.same_write(record)) {
            return false;
        }
        let mut stored = self.stored();
        stored.resource_version = found.metadata.resource_version;
        stored.record = Some(record.clone());
        true
    }

    /// Deletes the parts nothing names any more. Best effort: a part left
    /// behind costs space, never correctness (no record names it).
    async fn drop_stale(&self, previous: Option<&Record>, now: &Record) {
        let keep: Vec<String> = {
            let stored = self.stored();
            now.parts()
                .iter()
                .chain(&stored.backup_parts)
                .cloned()
                .collect()
        };
        let mut stale: Vec<String> = previous.map(|p| p.parts().to_vec()).unwrap_or_default();
        let sweep = !self.stored().swept
            && (previous.is_some_and(|p| !p.parts().is_empty()) || !now.parts().is_empty());
        if sweep {
            // Once a run: the parts of a run killed before it switched the
            // state to them. Only those of older serials, never a newer writer's.
            self.stored().swept = true;
            let selector = format!("{}={}", stored::PART_OF, self.stack);
            match self
                .cluster
                .list_meta_typed::<Secret>(&self.namespace, &selector)
                .await
            {
                Ok(parts) => stale.extend(
                    parts
                        .into_iter()
                        .filter(|p| stored::part_serial(p) < now.serial)
                        .filter_map(|p| p.name),
                ),
                Err(e) => tracing::warn!("cannot list the state's parts to tidy them: {e}"),
            }
        }
        stale.sort();
        stale.dedup();
        for name in stale.iter().filter(|n| !keep.contains(n)) {
            if let Err(e) = self
                .cluster
                .delete_typed::<Secret>(&self.namespace, name)
                .await
            {
                tracing::warn!("cannot delete the stale state part {name}: {e}");
            }
        }
    }

    /// Before this run's first write: the state as it found it, copied to
    /// the backup Secret (its parts are then kept until the next backup).
    async fn back_up(&self) -> Result<(), BackendError> {
        if self.stored().backed_up {
            return Ok(());
        }
        let known = self.stored().record.clone();
        let current = match known {
            Some(r) => Some(r),
            None => {
                // Only a state that reads is worth keeping over the backup there.
                let readable = self.load().await.is_ok_and(|s| s.is_some());
                if readable {
                    self.stored().record.clone()
                } else {
                    None
                }
            }
        };
        // No state, or one that does not read: the backup there is better kept.
        if let Some(record) = current {
            let name = self.backup_name();
            let old = self
                .cluster
                .get_typed::<Secret>(&self.namespace, &name)
                .await
                .map_err(|e| self.error(e))?;
            let rv = old
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone());
            let secret = record.to_secret(&name, &self.namespace, &self.stack, rv);
            self.put(&secret).await.map_err(|e| self.error(e))?;
            let old_parts = old
                .as_ref()
                .and_then(|s| Record::from_secret(s).ok())
                .map(|r| r.parts().to_vec())
                .unwrap_or_default();
            self.stored().backup_parts = record.parts().to_vec();
            for part in old_parts.iter().filter(|p| !record.parts().contains(p)) {
                if let Err(e) = self
                    .cluster
                    .delete_typed::<Secret>(&self.namespace, part)
                    .await
                {
                    tracing::warn!("cannot delete the old backup's part {part}: {e}");
                }
            }
        }
        self.stored().backed_up = true;
        Ok(())
    }

    /// Puts the backup back as the state (serial above both), without
    /// touching the backup; `None` if there is none.
    pub async fn restore(&self, lease: &LeaseHandle) -> Result<Option<Restored>, BackendError> {
        let what = format!("backup Secret {}/{}", self.namespace, self.backup_name());
        let found = self
            .cluster
            .get_typed::<Secret>(&self.namespace, &self.backup_name())
            .await
            .map_err(|e| self.error(e))?;
        let Some(found) = found else {
            return Ok(None);
        };
        let record = Record::from_secret(&found).map_err(|m| self.corrupt(&what, m))?;
        let mut state = self.read(&record, &what).await?;
        let from = state.serial;
        // The state there may not read at all; then its serial is unknown.
        let current = match self.fetch().await? {
            Some(Ok(r)) => r.serial,
            _ => 0,
        };
        {
            let mut stored = self.stored();
            stored.backed_up = true;
            stored.backup_parts = record.parts().to_vec();
        }
        state.serial = state.serial.max(current);
        self.save(&mut state, lease).await?;
        Ok(Some(Restored {
            from,
            serial: state.serial,
            resources: state.resources.len(),
        }))
    }
}

/// The kubernetes backend's writer during an apply: the Secret is rewritten
/// at most every [`WRITE_EVERY`]; objects written in between carry the
/// state's lineage, so a run killed before the next write finds them.
pub struct Batched {
    backend: SecretBackend,
    lease: LeaseHandle,
    last: tokio::sync::Mutex<Instant>,
}

impl Batched {
    pub fn new(backend: SecretBackend, lease: LeaseHandle) -> Batched {
        Batched {
            backend,
            lease,
            last: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    pub async fn record(&self, state: &mut State) -> Result<(), BackendError> {
        self.lease.check()?;
        let mut last = self.last.lock().await;
        if last.elapsed() >= WRITE_EVERY {
            self.backend.save(state, &self.lease).await?;
            *last = Instant::now();
        }
        Ok(())
    }

    pub async fn finish(&self, state: &mut State) -> Result<(), BackendError> {
        self.backend.save(state, &self.lease).await
    }

    pub fn check(&self) -> Result<(), BackendError> {
        self.lease.check()
    }

    pub async fn lost(&self) -> BackendError {
        self.lease.lost().await
    }
}
