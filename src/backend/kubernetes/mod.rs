//! The state in the cluster: a Secret holds it (gzip-compressed JSON, with
//! its lineage and serial as annotations), a `coordination.k8s.io/v1` Lease
//! ([`lease`]) is the lock.
//!
//! Two writers cannot lose each other's update: every write of the Secret
//! carries the resourceVersion this run last read or wrote, so the server
//! refuses it if anyone wrote in between.

mod lease;

pub use lease::{LEASE_DURATION, LeaseHandle, LeaseLock, RENEW_DEADLINE, settle};

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::BackendError;
use crate::cluster::{Cluster, ClusterError};
use crate::stack::StateLocation;
use crate::state::State;
use crate::state::store::{Decoded, decode};

/// During an apply, the Secret is rewritten at most this often (and at the end).
const WRITE_EVERY: Duration = Duration::from_secs(1);

const DATA_KEY: &str = "state.json.gz";

#[derive(Clone)]
pub struct SecretBackend {
    cluster: Cluster,
    namespace: String,
    stack: String,
    /// The Secret's resourceVersion as this run last read or wrote it.
    resource_version: Arc<Mutex<Option<String>>>,
}

impl SecretBackend {
    pub fn new(cluster: Cluster, namespace: &str, stack: &str) -> SecretBackend {
        SecretBackend {
            cluster,
            namespace: namespace.to_string(),
            stack: stack.to_string(),
            resource_version: Arc::default(),
        }
    }

    fn secret_name(&self) -> String {
        StateLocation::secret_name(&self.stack)
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
                "{e}\n  help: the kubernetes state backend needs get, create and update on secrets and leases.coordination.k8s.io in namespace `{}`; or keep the state in a file (--backend file)",
                self.namespace
            )),
            other => BackendError::Cluster(other),
        }
    }

    pub async fn load(&self) -> Result<Option<State>, BackendError> {
        let found = self
            .cluster
            .get_typed::<Secret>(&self.namespace, &self.secret_name())
            .await
            .map_err(|e| self.error(e))?;
        let Some(secret) = found else {
            *self.rv() = None;
            return Ok(None);
        };
        *self.rv() = secret.metadata.resource_version.clone();
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .ok_or_else(|| self.corrupt(format!("it has no `{DATA_KEY}` key")))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.0.as_slice())
            .read_to_string(&mut text)
            .map_err(|e| self.corrupt(format!("`{DATA_KEY}` is not gzip-compressed text: {e}")))?;
        decode(&text).map(Some).map_err(|e| match e {
            Decoded::Corrupt(message) => self.corrupt(message),
            Decoded::Version(found) => BackendError::Kubernetes(format!(
                "{} has format_version {found}; this rayform reads {}",
                self.describe(),
                crate::state::FORMAT_VERSION
            )),
        })
    }

    fn corrupt(&self, message: String) -> BackendError {
        BackendError::Kubernetes(format!(
            "{} is not a valid state: {message}\n  help: restore it (`rayform state push`) from a copy; rayform will not adopt the objects it lists",
            self.describe()
        ))
    }

    fn rv(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.resource_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the state whole, serial bumped, if this run still holds `lease`.
    pub async fn save(&self, state: &mut State, lease: &LeaseHandle) -> Result<(), BackendError> {
        lease.check()?;
        state.serial += 1;
        let secret = self.encode(state)?;
        let written = if secret.metadata.resource_version.is_some() {
            self.cluster.replace_typed(&self.namespace, &secret).await
        } else {
            self.cluster.create_typed(&self.namespace, &secret).await
        };
        match written {
            Ok(s) => {
                *self.rv() = s.metadata.resource_version;
                Ok(())
            }
            Err(ClusterError::Conflict { .. }) => Err(BackendError::Kubernetes(format!(
                "{} was written by someone else since this run read it; nothing was overwritten\n  help: run the command again (it reads the new state)",
                self.describe()
            ))),
            Err(e) => Err(self.error(e)),
        }
    }

    fn encode(&self, state: &State) -> Result<Secret, BackendError> {
        let json = serde_json::to_vec(state)
            .map_err(|e| BackendError::Kubernetes(format!("cannot serialize the state: {e}")))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)
            .and_then(|()| gz.flush())
            .map_err(|e| BackendError::Kubernetes(format!("cannot compress the state: {e}")))?;
        let data = gz
            .finish()
            .map_err(|e| BackendError::Kubernetes(format!("cannot compress the state: {e}")))?;
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name()),
                namespace: Some(self.namespace.clone()),
                resource_version: self.rv().clone(),
                labels: Some(
                    [
                        ("app.kubernetes.io/managed-by", "rayform".to_string()),
                        ("rayform.io/state-of", self.stack.clone()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ),
                annotations: Some(
                    [
                        ("rayform.io/lineage", state.lineage.clone()),
                        ("rayform.io/serial", state.serial.to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ),
                ..Default::default()
            },
            type_: Some("rayform.io/state".into()),
            data: Some([(DATA_KEY.to_string(), ByteString(data))].into()),
            ..Default::default()
        })
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
