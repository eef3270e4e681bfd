//! The lock of the kubernetes backend: a `coordination.k8s.io/v1` Lease
//! that names its holder (user, host, pid, lock ID, since) and is renewed
//! while the run lives. A holder killed with -9 stops renewing, and once the
//! Lease has expired the next run takes it over without `force-unlock`. A run
//! that finds its Lease taken (it could not renew in time, and someone else
//! took over) stops before it writes again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::super::BackendError;
use crate::cluster::{Cluster, ClusterError};
use crate::stack::StateLocation;
use crate::state::StateError;
use crate::state::lock::LockInfo;

/// How long a Lease outlives its last renewal: a killed holder blocks others this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Renewed three times per duration, so one slow renewal does not lose it.
const RENEW_EVERY: Duration = Duration::from_secs(5);

const ANNOTATION_LOCK: &str = "rayform.io/lock";

impl super::SecretBackend {
    fn lease_name(&self) -> String {
        StateLocation::lease_name(&self.stack)
    }

    /// Takes the Lease, or names who holds it.
    pub async fn lock(&self, operation: &str) -> Result<LeaseLock, BackendError> {
        let info = LockInfo::new(operation)?;
        let name = self.lease_name();
        let found = self
            .cluster
            .get_typed::<Lease>(&self.namespace, &name)
            .await
            .map_err(|e| self.error(e))?;
        let lease = match found {
            None => {
                let fresh = lease_for(&name, &self.namespace, &info, None, 0);
                self.cluster.create_typed(&self.namespace, &fresh).await
            }
            Some(current) => {
                if let Some(holder) = live_holder(&current) {
                    return Err(StateError::Locked(Box::new(holder)).into());
                }
                let transitions = current
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                let taken = lease_for(
                    &name,
                    &self.namespace,
                    &info,
                    current.metadata.resource_version.clone(),
                    transitions + 1,
                );
                self.cluster.replace_typed(&self.namespace, &taken).await
            }
        };
        let lease = match lease {
            Ok(l) => l,
            // Someone else took it between our read and our write.
            Err(ClusterError::Conflict { .. }) => {
                let holder = self
                    .cluster
                    .get_typed::<Lease>(&self.namespace, &name)
                    .await
                    .map_err(|e| self.error(e))?
                    .and_then(|l| live_holder(&l))
                    .unwrap_or_else(LockInfo::unknown);
                return Err(StateError::Locked(Box::new(holder)).into());
            }
            Err(e) => return Err(self.error(e)),
        };
        Ok(LeaseLock::start(
            self.cluster.clone(),
            self.namespace.clone(),
            lease,
        ))
    }

    pub async fn force_unlock(&self, id: &str) -> Result<LockInfo, BackendError> {
        let name = self.lease_name();
        let lease = self
            .cluster
            .get_typed::<Lease>(&self.namespace, &name)
            .await
            .map_err(|e| self.error(e))?;
        let not_locked = || {
            BackendError::from(StateError::NotLocked {
                path: format!("Lease {}/{name}", self.namespace).into(),
            })
        };
        let Some(lease) = lease else {
            return Err(not_locked());
        };
        let Some(info) = holder(&lease) else {
            return Err(not_locked());
        };
        if info.id != id {
            return Err(StateError::WrongLockId {
                given: id.to_string(),
                actual: info.id,
            }
            .into());
        }
        if live_holder(&lease).is_some() {
            return Err(StateError::HolderAlive(Box::new(info)).into());
        }
        let mut cleared = lease;
        clear(&mut cleared);
        self.cluster
            .replace_typed(&self.namespace, &cleared)
            .await
            .map_err(|e| self.error(e))?;
        Ok(info)
    }
}

fn lease_for(
    name: &str,
    namespace: &str,
    info: &LockInfo,
    resource_version: Option<String>,
    transitions: i32,
) -> Lease {
    let now = MicroTime(jiff::Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version,
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "rayform".to_string(),
                )]
                .into(),
            ),
            annotations: Some(
                [(
                    ANNOTATION_LOCK.to_string(),
                    serde_json::to_string(info).unwrap_or_default(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(info.id.clone()),
            lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

/// Who the Lease names as holder, whether or not it expired.
fn holder(lease: &Lease) -> Option<LockInfo> {
    let id = lease.spec.as_ref()?.holder_identity.clone()?;
    if id.is_empty() {
        return None;
    }
    let recorded: Option<LockInfo> = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LOCK))
        .and_then(|j| serde_json::from_str(j).ok());
    Some(recorded.unwrap_or_else(|| LockInfo {
        id,
        ..LockInfo::unknown()
    }))
}

/// The holder, if the Lease has not expired.
fn live_holder(lease: &Lease) -> Option<LockInfo> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    let expired = renewed
        .checked_add(duration)
        .is_ok_and(|until| until < jiff::Timestamp::now());
    if expired { None } else { holder(lease) }
}

fn clear(lease: &mut Lease) {
    if let Some(spec) = &mut lease.spec {
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
    }
    if let Some(a) = &mut lease.metadata.annotations {
        a.remove(ANNOTATION_LOCK);
    }
}

/// A held Lease, renewed in the background until released or lost.
pub struct LeaseLock {
    cluster: Cluster,
    namespace: String,
    shared: Arc<Renewal>,
    renewer: tokio::task::JoinHandle<()>,
}

struct Renewal {
    lease: Mutex<Lease>,
    renewed: Mutex<Instant>,
    /// Why the lease is no longer ours, once it is not.
    lost: Mutex<Option<String>>,
    released: AtomicBool,
}

impl LeaseLock {
    fn start(cluster: Cluster, namespace: String, lease: Lease) -> LeaseLock {
        let shared = Arc::new(Renewal {
            lease: Mutex::new(lease),
            renewed: Mutex::new(Instant::now()),
            lost: Mutex::new(None),
            released: AtomicBool::new(false),
        });
        let renewer = tokio::spawn(renew(cluster.clone(), namespace.clone(), shared.clone()));
        LeaseLock {
            cluster,
            namespace,
            shared,
            renewer,
        }
    }

    /// What writers hold to check that the Lease is still this run's.
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle(self.shared.clone())
    }
}

/// A view of a held Lease for whoever writes the state.
#[derive(Clone)]
pub struct LeaseHandle(Arc<Renewal>);

impl LeaseHandle {
    /// Fails once the Lease may be someone else's: taken over, or not
    /// renewed within its duration (another run may have taken it since).
    pub fn check(&self) -> Result<(), BackendError> {
        if let Some(why) = guard(&self.0.lost).clone() {
            return Err(BackendError::LockLost(why));
        }
        let since = guard(&self.0.renewed).elapsed();
        if since >= LEASE_DURATION {
            return Err(BackendError::LockLost(format!(
                "the Lease was last renewed {}s ago, longer than its {}s duration",
                since.as_secs(),
                LEASE_DURATION.as_secs()
            )));
        }
        Ok(())
    }

    /// Resolves once the Lease is no longer this run's, with why.
    pub async fn lost(&self) -> BackendError {
        loop {
            if let Err(e) = self.check() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Releases started when a lock was dropped, for [`settle`] to wait on.
static RELEASING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Dropping the lock gives the Lease up, if it is still this run's: on
/// success, on error and on Ctrl-C alike. The release runs as a task; call
/// [`settle`] before the runtime ends so that it gets sent.
impl Drop for LeaseLock {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.shared.released.swap(true, Ordering::SeqCst) || self.handle().check().is_err() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cluster, namespace) = (self.cluster.clone(), self.namespace.clone());
        let mut lease = guard(&self.shared.lease).clone();
        clear(&mut lease);
        guard(&RELEASING).push(runtime.spawn(async move {
            let _ = cluster.replace_typed(&namespace, &lease).await;
        }));
    }
}

/// Waits (at most `limit`) for Leases being given up by dropped locks.
pub async fn settle(limit: Duration) {
    let pending: Vec<_> = guard(&RELEASING).drain(..).collect();
    let _ = tokio::time::timeout(limit, futures::future::join_all(pending)).await;
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn renew(cluster: Cluster, namespace: String, shared: Arc<Renewal>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if shared.released.load(Ordering::SeqCst) {
            return;
        }
        let mut next = guard(&shared.lease).clone();
        if let Some(spec) = &mut next.spec {
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        }
        match cluster.replace_typed(&namespace, &next).await {
            Ok(renewed) => {
                *guard(&shared.lease) = renewed;
                *guard(&shared.renewed) = Instant::now();
            }
            Err(ClusterError::Conflict { .. }) => {
                let by = cluster
                    .get_typed::<Lease>(&namespace, next.metadata.name.as_deref().unwrap_or(""))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| holder(&l))
                    .map_or_else(|| "nobody now".to_string(), |h| h.to_string());
                *guard(&shared.lost) = Some(format!("the Lease was taken over by {by}"));
                return;
            }
            // Unreachable for a moment: keep trying; `check` notices expiry.
            Err(_) => {}
        }
    }
}
