//! The lock of the kubernetes backend: a `coordination.k8s.io/v1` Lease
//! that names its holder (user, host, pid, lock ID, since) and is renewed
//! while the run lives, with client-go's leader-election rules.
//!
//! No clock of another machine is trusted. A run that finds the Lease held
//! watches it on its own monotonic clock: a record that changes belongs to
//! a live holder; one left unchanged for a whole [`LEASE_DURATION`] belongs
//! to a dead one, and is taken over (a holder killed with -9 needs no
//! `force-unlock`). The holder, for its part, counts from the moment it sent
//! its last successful renewal and stops writing once [`RENEW_DEADLINE`] has
//! passed, well before anyone may take over. So clocks may be set apart by
//! any amount; only clocks running at different rates could break it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use super::super::{BackendError, Notice};
use crate::cluster::{Cluster, ClusterError};
use crate::stack::StateLocation;
use crate::state::StateError;
use crate::state::lock::LockInfo;

/// How long a Lease must be seen unchanged before it is taken over: a
/// killed holder blocks others this long (counted from when they look).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A holder that has not renewed within this long (counted from the start of
/// its last successful renewal) writes nothing more. The gap to
/// [`LEASE_DURATION`] is the margin for a write already on its way.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews (client-go's retry period): a slow or failed
/// renewal is tried again several times before the deadline.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a run waiting on someone else's Lease looks at it again:
/// a live holder's next renewal is seen within about [`RENEW_EVERY`].
const LOOK_EVERY: Duration = Duration::from_secs(1);

const ANNOTATION_LOCK: &str = "rayform.io/lock";

impl super::SecretBackend {
    fn lease_name(&self) -> String {
        StateLocation::lease_name(&self.stack)
    }

    async fn get_lease(&self) -> Result<Option<Lease>, BackendError> {
        self.cluster
            .get_typed::<Lease>(&self.namespace, &self.lease_name())
            .await
            .map_err(|e| self.error(e))
    }

    /// Takes the Lease: at once if nobody holds it; after watching it for a
    /// whole [`LEASE_DURATION`] if it names a holder and never changes (that
    /// run is dead). A holder whose Lease changes meanwhile is alive: this
    /// run is refused, naming it.
    pub async fn lock(
        &self,
        operation: &str,
        notice: Notice<'_>,
    ) -> Result<LeaseLock, BackendError> {
        let info = LockInfo::new(operation)?;
        let mut watch = Watch::default();
        loop {
            let found = self.get_lease().await?;
            if let Some(current) = &found
                && let Some(held) = holder(current)
                && !watch.may_take(current, held, notice)?
            {
                tokio::time::sleep(LOOK_EVERY).await;
                continue;
            }
            let sent = Moment::now();
            match self.take(&info, found).await {
                Ok(lease) => {
                    let renewal = Renewal::new(self.lease_name(), info.id, lease, sent);
                    return Ok(LeaseLock::start(
                        self.cluster.clone(),
                        self.namespace.clone(),
                        renewal,
                    ));
                }
                // Someone else wrote it between our read and our write: the
                // next look names them (they are alive, having just written).
                Err(ClusterError::Conflict { .. }) => watch.raced(),
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// Writes the Lease as ours: created, or over `found` (whose
    /// resourceVersion makes the write fail if anyone wrote it since).
    async fn take(&self, info: &LockInfo, found: Option<Lease>) -> Result<Lease, ClusterError> {
        let name = self.lease_name();
        match found {
            None => {
                let fresh = lease_for(&name, &self.namespace, info, None, 0);
                self.cluster.create_typed(&self.namespace, &fresh).await
            }
            Some(current) => {
                let taken = lease_for(
                    &name,
                    &self.namespace,
                    info,
                    current.metadata.resource_version.clone(),
                    transitions(&current) + 1,
                );
                self.cluster.replace_typed(&self.namespace, &taken).await
            }
        }
    }

    /// Clears the Lease of a run that is gone, if `id` names it. Gone means
    /// what it means to [`Self::lock`]: its Lease stays unchanged for a whole
    /// [`LEASE_DURATION`], watched here, whatever its timestamps say.
    pub async fn force_unlock(
        &self,
        id: &str,
        notice: Notice<'_>,
    ) -> Result<LockInfo, BackendError> {
        let not_locked = || {
            BackendError::from(StateError::NotLocked {
                path: format!("Lease {}/{}", self.namespace, self.lease_name()).into(),
            })
        };
        let mut watch = Watch::default();
        loop {
            let lease = self.get_lease().await?.ok_or_else(not_locked)?;
            let info = holder(&lease).ok_or_else(not_locked)?;
            if info.id != id {
                return Err(StateError::WrongLockId {
                    given: id.to_string(),
                    actual: info.id,
                }
                .into());
            }
            match watch.look(&lease) {
                Look::Alive => return Err(StateError::HolderAlive(Box::new(info)).into()),
                Look::First => notice(&format!(
                    "Lock {id} is held by {info}. Checking that its Lease is no longer renewed ({}s)...",
                    LEASE_DURATION.as_secs()
                )),
                Look::Unchanged => {}
            }
            if !watch.expired() {
                tokio::time::sleep(LOOK_EVERY).await;
                continue;
            }
            let mut cleared = lease;
            clear(&mut cleared);
            return match self.cluster.replace_typed(&self.namespace, &cleared).await {
                Ok(_) => Ok(info),
                // Renewed right now, after all.
                Err(ClusterError::Conflict { .. }) => {
                    Err(StateError::HolderAlive(Box::new(info)).into())
                }
                Err(e) => Err(self.error(e)),
            };
        }
    }
}

/// What a run waiting on someone else's Lease has seen of it, on its own
/// clock: which record, since when.
#[derive(Default)]
struct Watch {
    seen: Option<(Option<String>, Instant)>,
    /// Our write lost a race: whoever won is alive.
    raced: bool,
}

enum Look {
    First,
    Unchanged,
    /// The record changed since it was first seen: its holder is alive.
    Alive,
}

impl Watch {
    fn look(&mut self, lease: &Lease) -> Look {
        let version = lease.metadata.resource_version.clone();
        match &self.seen {
            _ if self.raced => Look::Alive,
            Some((seen, _)) if *seen == version => Look::Unchanged,
            Some(_) => Look::Alive,
            None => {
                self.seen = Some((version, Instant::now()));
                Look::First
            }
        }
    }

    /// Whether a Lease that names `held` may be taken over now; refused if
    /// it changed since first seen; `false` to look again later.
    fn may_take(
        &mut self,
        lease: &Lease,
        held: LockInfo,
        notice: Notice<'_>,
    ) -> Result<bool, BackendError> {
        match self.look(lease) {
            Look::Alive => return Err(StateError::Locked(Box::new(held)).into()),
            Look::First => notice(&format!(
                "The state lock is held by {held}. Watching its Lease: if it is not renewed within {}s, that run is gone and this one takes over.",
                LEASE_DURATION.as_secs()
            )),
            Look::Unchanged => {}
        }
        if !self.expired() {
            return Ok(false);
        }
        notice(&format!(
            "Taking over the state lock: the Lease of {held} was not renewed for {}s.",
            LEASE_DURATION.as_secs()
        ));
        Ok(true)
    }

    fn expired(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= LEASE_DURATION)
    }

    fn raced(&mut self) {
        self.raced = true;
    }
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

fn lease_for(
    name: &str,
    namespace: &str,
    info: &LockInfo,
    resource_version: Option<String>,
    transitions: i32,
) -> Lease {
    // Informative only: nobody's expiry is computed from these.
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

/// Who the Lease names as holder, if anyone.
fn holder(lease: &Lease) -> Option<LockInfo> {
    let id = holder_id(lease)?;
    let recorded = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LOCK))
        .and_then(|j| serde_json::from_str::<LockInfo>(j).ok())
        // A record left by someone who set the holder by hand names the wrong one.
        .filter(|info| info.id == id);
    Some(recorded.unwrap_or_else(|| LockInfo {
        id: id.to_string(),
        ..LockInfo::unknown()
    }))
}

fn holder_id(lease: &Lease) -> Option<&str> {
    let id = lease.spec.as_ref()?.holder_identity.as_deref()?;
    (!id.is_empty()).then_some(id)
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

/// A moment on both of this machine's clocks. The monotonic one stands still
/// while the machine sleeps (a laptop closed mid-apply), the wall clock does
/// not; a holder goes by whichever says more time has passed.
#[derive(Clone, Copy)]
struct Moment {
    monotonic: Instant,
    wall: SystemTime,
}

impl Moment {
    fn now() -> Moment {
        Moment {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        let wall = self.wall.elapsed().unwrap_or_default();
        self.monotonic.elapsed().max(wall)
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
    name: String,
    /// Our lock ID, the Lease's `holderIdentity` while it is ours.
    id: String,
    /// The Lease as this run last wrote it.
    lease: Mutex<Lease>,
    /// When the last successful renewal (or the taking) was sent. The server
    /// stored it after this, so nobody watching can take over before this +
    /// [`LEASE_DURATION`]; from the response, a slow one would eat the margin.
    renewed: Mutex<Moment>,
    /// Why the lease is no longer ours, once it is not: for good.
    lost: Mutex<Option<String>>,
    released: AtomicBool,
}

impl Renewal {
    fn new(name: String, id: String, lease: Lease, sent: Moment) -> Renewal {
        Renewal {
            name,
            id,
            lease: Mutex::new(lease),
            renewed: Mutex::new(sent),
            lost: Mutex::new(None),
            released: AtomicBool::new(false),
        }
    }

    fn check(&self) -> Result<(), BackendError> {
        let mut lost = guard(&self.lost);
        if lost.is_none() {
            let since = guard(&self.renewed).elapsed();
            if since >= RENEW_DEADLINE {
                *lost = Some(format!(
                    "this run last renewed its Lease {}s ago, past its {}s renew deadline (after {}s unrenewed, another run may take the state over)",
                    since.as_secs(),
                    RENEW_DEADLINE.as_secs(),
                    LEASE_DURATION.as_secs()
                ));
            }
        }
        match &*lost {
            Some(why) => Err(BackendError::LockLost(why.clone())),
            None => Ok(()),
        }
    }

    fn lose(&self, why: String) {
        guard(&self.lost).get_or_insert(why);
    }
}

impl LeaseLock {
    fn start(cluster: Cluster, namespace: String, renewal: Renewal) -> LeaseLock {
        let shared = Arc::new(renewal);
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

/// A view of a held Lease for whoever writes, the state or an object.
#[derive(Clone)]
pub struct LeaseHandle(Arc<Renewal>);

impl LeaseHandle {
    /// Fails, for good, once the Lease may be someone else's: taken over, or
    /// not renewed within [`RENEW_DEADLINE`]. Called before every write.
    pub fn check(&self) -> Result<(), BackendError> {
        self.0.check()
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

/// Dropping the lock gives the Lease up, if it still names this run: on
/// success, on error and on Ctrl-C alike. The release runs as a task; call
/// [`settle`] before the runtime ends so that it gets sent.
impl Drop for LeaseLock {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.shared.released.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cluster, namespace) = (self.cluster.clone(), self.namespace.clone());
        let shared = self.shared.clone();
        guard(&RELEASING).push(runtime.spawn(async move {
            release(&cluster, &namespace, &shared).await;
        }));
    }
}

/// Clears the holder, read afresh: a renewal that landed unseen (its
/// response cut off by the abort) must not make the release conflict, and a
/// Lease someone else took since is theirs to keep.
async fn release(cluster: &Cluster, namespace: &str, shared: &Renewal) {
    // A second try for a write that raced ours (a renewal still landing).
    for _ in 0..2 {
        let Ok(Some(mut current)) = cluster.get_typed::<Lease>(namespace, &shared.name).await
        else {
            return;
        };
        if holder_id(&current) != Some(shared.id.as_str()) {
            return;
        }
        clear(&mut current);
        match cluster.replace_typed(namespace, &current).await {
            Err(ClusterError::Conflict { .. }) => {}
            _ => return,
        }
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

/// Renews every [`RENEW_EVERY`], each try bounded by what is left until the
/// deadline; stops once the Lease is lost (taken, or the deadline passed).
async fn renew(cluster: Cluster, namespace: String, shared: Arc<Renewal>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if shared.released.load(Ordering::SeqCst) || shared.check().is_err() {
            return;
        }
        let sent = Moment::now();
        let left = RENEW_DEADLINE.saturating_sub(guard(&shared.renewed).elapsed());
        match tokio::time::timeout(left, renew_once(&cluster, &namespace, &shared)).await {
            Ok(Ok(renewed)) => {
                *guard(&shared.lease) = renewed;
                *guard(&shared.renewed) = sent;
            }
            Ok(Err(Renew::Taken(by))) => {
                shared.lose(format!("the Lease was taken over by {by}"));
                return;
            }
            // Slow or unreachable for a moment: try again; `check` fails
            // every write once the deadline passes.
            Ok(Err(Renew::Failed)) | Err(_) => {}
        }
    }
}

enum Renew {
    Taken(String),
    Failed,
}

/// One renewal: the Lease as we last wrote it, with a new `renewTime`. If
/// someone wrote it since (a label added, a renewal whose response we never
/// saw) it is read again: still ours if it names us.
async fn renew_once(cluster: &Cluster, namespace: &str, shared: &Renewal) -> Result<Lease, Renew> {
    let renewed = |mut lease: Lease| {
        if let Some(spec) = &mut lease.spec {
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        }
        lease
    };
    let cached = renewed(guard(&shared.lease).clone());
    match cluster.replace_typed(namespace, &cached).await {
        Ok(lease) => return Ok(lease),
        Err(ClusterError::Conflict { .. }) => {}
        Err(_) => return Err(Renew::Failed),
    }
    let current = match cluster.get_typed::<Lease>(namespace, &shared.name).await {
        Ok(Some(current)) => current,
        Ok(None) => return Err(Renew::Taken("nobody: the Lease was deleted".into())),
        Err(_) => return Err(Renew::Failed),
    };
    if holder_id(&current) != Some(shared.id.as_str()) {
        let by = holder(&current).map_or_else(
            || "nobody: its holder was cleared".to_string(),
            |h| h.to_string(),
        );
        return Err(Renew::Taken(by));
    }
    cluster
        .replace_typed(namespace, &renewed(current))
        .await
        .map_err(|_| Renew::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version: &str, holder: &str, recorded: &LockInfo) -> Lease {
        let mut lease = lease_for("l", "ns", recorded, Some(version.into()), 0);
        if let Some(spec) = &mut lease.spec {
            spec.holder_identity = Some(holder.into());
        }
        lease
    }

    #[test]
    fn a_lease_is_alive_once_it_changes_whatever_its_timestamps_say() {
        let info = LockInfo::new("apply").expect("a random source");
        let mut watch = Watch::default();
        assert!(matches!(
            watch.look(&held("1", &info.id, &info)),
            Look::First
        ));
        assert!(matches!(
            watch.look(&held("1", &info.id, &info)),
            Look::Unchanged
        ));
        assert!(!watch.expired());
        assert!(matches!(
            watch.look(&held("2", &info.id, &info)),
            Look::Alive
        ));
    }

    #[test]
    fn losing_a_race_to_take_the_lease_means_its_winner_is_alive() {
        let info = LockInfo::new("apply").expect("a random source");
        let mut watch = Watch::default();
        watch.raced();
        assert!(matches!(
            watch.look(&held("1", &info.id, &info)),
            Look::Alive
        ));
    }

    #[test]
    fn a_holder_set_by_hand_is_not_named_by_the_record_left_beside_it() {
        let info = LockInfo::new("apply").expect("a random source");
        let by_hand = holder(&held("1", "intruder", &info)).expect("a holder");
        assert_eq!(by_hand.id, "intruder");
        assert_eq!(by_hand.pid, 0);
        assert_eq!(holder(&held("1", &info.id, &info)), Some(info));
        assert_eq!(
            holder(&held(
                "1",
                "",
                &LockInfo::new("plan").expect("a random source")
            )),
            None
        );
    }
}
