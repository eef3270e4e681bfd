//! Carrying out a plan: every change in dependency order, independent ones
//! side by side, each recorded as it finishes so a killed run loses nothing.
//!
//! Apply never decides anything the plan did not say. What it checks is that
//! the world still is what the plan saw (a saved plan may be old) and that
//! what it wrote reads back as intended.

pub(crate) mod entry;
mod queue;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::backend::{Backend, BackendError, Lock, Writer};
use crate::cluster::{Cluster, ClusterError, Kind, Ssa};
use crate::desired::{self, DesiredObject};
use crate::karpenter;
use crate::plan::{Change, Keep, Op, Payload, Plan, Seen, Write};
use crate::secret::SecretValue;
use crate::stack::Address;
use crate::state::journal::Change as StateChange;
use crate::state::{ResourceState, State, StateError};

mod drain;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{address}: {source}")]
    Cluster {
        address: Address,
        source: Box<ClusterError>,
    },
    #[error("{address}: {message}")]
    Resource { address: Address, message: String },
    #[error("the saved plan is stale: {0}")]
    Stale(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ApplyError>),
    #[error("{}", interrupted_message(*.done, .not_done))]
    Interrupted { done: usize, not_done: Vec<Address> },
}

/// A request to stop (the first Ctrl-C): no new change starts, changes in
/// flight finish and are recorded, waits are abandoned.
#[derive(Clone, Default)]
pub struct Stop(Arc<(std::sync::atomic::AtomicBool, tokio::sync::Notify)>);

impl Stop {
    pub fn request(&self) {
        self.0.0.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    pub fn requested(&self) -> bool {
        self.0.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once a stop is requested.
    pub async fn wait(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// A line of progress for the user.
#[derive(Debug, Clone)]
pub struct Event {
    pub address: Address,
    pub message: String,
    /// The readiness wait's event as data, when it said this (for `--json`).
    pub wait: Option<crate::readiness::Progress>,
}

pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

/// The readiness waits of a run: skipped (`--no-wait`, destroy), or run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Skip,
    Wait(crate::readiness::OnStuck),
}

#[derive(Clone)]
pub struct ApplyOptions {
    pub parallelism: usize,
    /// Whether and how to run the readiness waits.
    pub wait: Readiness,
    /// How long a delete may take (finalizers) before apply gives up.
    pub delete_timeout: Duration,
    /// A fixed readiness endpoint overriding the stack's (`--endpoint`).
    pub endpoint: Option<String>,
    /// How much the readiness waits say (the complete account with `-v`).
    pub detail: crate::readiness::Detail,
    pub progress: Progress,
    pub stop: Stop,
}

/// Secret values by resource, read fresh for this run.
pub type SecretValues = BTreeMap<Address, BTreeMap<String, SecretValue>>;

/// What a successful apply produced beyond the state: the readiness results.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub ready: Vec<crate::readiness::Ready>,
}

fn interrupted_message(done: usize, not_done: &[Address]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> = not_done
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if not_done.len() > SHOWN {
        names.push(format!("and {} more", not_done.len() - SHOWN));
    }
    format!(
        "stopped: {done} change(s) finished and are recorded in the state; not done: {}\n  help: run the same command again to continue",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// Refuses a saved plan whose state or live objects moved since it was made.
/// Everything a saved plan pinned, checked before its first write: the
/// state's lineage and serial, the cluster, the secret values (by their
/// fingerprints) and the version of every object it changes. A plan is
/// applied whole or not at all.
pub async fn check_fresh(
    cluster: &Cluster,
    plan: &Plan,
    state: &State,
    secrets: &SecretValues,
) -> Result<(), ApplyError> {
    if plan.state_lineage != state.lineage {
        return Err(ApplyError::Stale(format!(
            "it was made for state lineage {}, the state file now has lineage {}",
            plan.state_lineage, state.lineage
        )));
    }
    if plan.state_serial != state.serial {
        return Err(ApplyError::Stale(format!(
            "the state changed since the plan was made (serial {} then, {} now)",
            plan.state_serial, state.serial
        )));
    }
    if plan.cluster.server != cluster.id.server {
        return Err(ApplyError::Stale(format!(
            "it was made for {}, this is {}",
            plan.cluster.server, cluster.id.server
        )));
    }
    for (c, w) in plan.changes.iter().filter_map(|c| Some((c, c.write()?))) {
        let values = secrets.get(&c.address);
        DesiredObject::from_masked(
            &w.payload.body,
            &w.payload.secret_fingerprints,
            values,
            &state.fingerprint_key,
        )
        .map_err(|m| ApplyError::Stale(format!("{}: {m}", c.address)))?;
    }
    for c in plan.changes.iter().filter(|c| c.action().is_change()) {
        let Some(kind) = cluster.kind(&c.api_version, &c.kind) else {
            continue;
        };
        let live = cluster
            .get(&kind, c.namespace.as_deref(), &c.name)
            .await
            .map_err(|source| ApplyError::Cluster {
                address: c.address.clone(),
                source: Box::new(source),
            })?;
        let now = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str);
        // Karpenter rewrites its objects' status all the time: a patch is
        // stale only when what it was computed from changed.
        let unchanged = match (&c.op, &live) {
            (Op::Patch(e) | Op::Revert(e), Some(live)) if !e.patch.basis.is_empty() => {
                karpenter::basis(live) == e.patch.basis
            }
            _ => now == c.seen_version(),
        };
        if !unchanged {
            return Err(ApplyError::Stale(format!(
                "{} changed in the cluster since the plan was made (resourceVersion {} then, {} now)",
                c.address,
                c.seen_version().unwrap_or("absent"),
                now.unwrap_or("absent")
            )));
        }
    }
    Ok(())
}

struct Shared {
    cluster: Cluster,
    /// The stack's namespace, where its RayServices live.
    namespace: String,
    manager: String,
    state: Mutex<State>,
    writer: Writer,
    secrets: SecretValues,
    options: ApplyOptions,
}

/// Applies (or, for a destroy plan, destroys) in dependency order.
pub async fn apply(
    cluster: &Cluster,
    plan: &Plan,
    state: State,
    (backend, lock): (&Backend, &Lock),
    secrets: SecretValues,
    options: ApplyOptions,
) -> (State, Result<ApplyReport, ApplyError>) {
    let mut state = state;
    // A state that tracks nothing belongs to whichever cluster it is used on
    // next: after a destroy on A and an apply on B, it must say B.
    if state.cluster.is_none() || state.resources.is_empty() {
        state.cluster = Some(cluster.id.clone());
    }
    // The state (and so its lineage, which every object written below
    // carries) is stored before the first write: a run killed after it is
    // repaired by the next, which must recognise these objects as its own.
    let writer = match backend.begin(&mut state, lock).await {
        Ok(w) => w,
        Err(e) => return (state, Err(e.into())),
    };
    let shared = Shared {
        cluster: cluster.clone(),
        namespace: plan.namespace.clone(),
        manager: format!("rayform/{}", plan.stack),
        state: Mutex::new(state),
        writer,
        secrets,
        options,
    };
    let result = queue::walk(&shared, plan).await;
    // Every task has finished; what they recorded is the outcome, written whole.
    let mut state = shared.state.lock().await.clone();
    let writing = Instant::now();
    let finished = shared.writer.finish(&mut state).await;
    tracing::debug!(took = ?writing.elapsed(), ok = finished.is_ok(), "state written");
    let result = match (result, finished) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Ok(())) => Err(e),
        // A lost lock fails every write alike: say it once.
        (Err(e), Err(BackendError::LockLost(_))) if says_lock_lost(&e) => Err(e),
        (Err(e), Err(f)) => Err(ApplyError::Several(vec![e, f.into()])),
    };
    (state, result)
}

fn says_lock_lost(e: &ApplyError) -> bool {
    match e {
        ApplyError::Backend(BackendError::LockLost(_)) => true,
        ApplyError::Several(all) => all.iter().any(says_lock_lost),
        _ => false,
    }
}

impl Shared {
    fn say(&self, address: &Address, message: impl Into<String>) {
        (self.options.progress)(Event {
            address: address.clone(),
            message: message.into(),
            wait: None,
        });
    }

    fn kind(&self, c: &Change) -> Result<Kind, ApplyError> {
        self.cluster
            .kind(&c.api_version, &c.kind)
            .ok_or_else(|| ApplyError::Resource {
                address: c.address.clone(),
                message: crate::cluster::missing_kind_message(&c.api_version, &c.kind),
            })
    }

    /// Records a finished resource in the state and through the backend.
    async fn record(&self, change: StateChange) -> Result<(), ApplyError> {
        let mut state = self.state.lock().await;
        state.apply_change(&change);
        self.writer.record(&mut state, &change).await?;
        Ok(())
    }

    async fn put(&self, address: &Address, entry: ResourceState) -> Result<(), ApplyError> {
        self.record(StateChange::Put {
            address: address.clone(),
            entry: Box::new(entry),
        })
        .await
    }

    async fn remove(&self, address: &Address) -> Result<(), ApplyError> {
        self.record(StateChange::Remove {
            address: address.clone(),
        })
        .await
    }

    /// Refuses a write to the cluster once the lock may be someone else's:
    /// checked before each write, not only when recording it, so a run that
    /// lost its lock (stopped past its renew deadline, say) writes no object
    /// after the one in flight.
    fn still_locked(&self) -> Result<(), ApplyError> {
        Ok(self.writer.check()?)
    }

    async fn key(&self) -> String {
        self.state.lock().await.fingerprint_key.clone()
    }
}

fn cluster_err(address: &Address) -> impl FnOnce(ClusterError) -> ApplyError + '_ {
    move |source| ApplyError::Cluster {
        address: address.clone(),
        source: Box::new(source),
    }
}

async fn run(shared: &Shared, c: &Change) -> Result<Vec<crate::readiness::Ready>, ApplyError> {
    let started = Instant::now();
    match &c.op {
        Op::Create(w) => {
            shared.say(&c.address, "Creating...");
            apply_object(shared, c, w).await?;
            let done = format!("Created after {}", elapsed(started));
            shared.say(&c.address, done);
        }
        Op::Update { write, .. } => {
            shared.say(&c.address, "Modifying...");
            apply_object(shared, c, write).await?;
            let done = format!("Modified after {}", elapsed(started));
            shared.say(&c.address, done);
        }
        Op::NoOp(Keep::Current) => {}
        Op::NoOp(Keep::Record { payload, .. }) => refresh(shared, c, payload).await?,
        Op::NoOp(Keep::RecordPatch(p)) => shared.put(&c.address, entry::for_patch(c, p)).await?,
        Op::Delete(seen) => {
            shared.say(&c.address, "Destroying...");
            delete(shared, c, seen).await?;
            let done = format!("Destruction complete after {}", elapsed(started));
            shared.say(&c.address, done);
        }
        Op::Patch(e) => {
            shared.say(&c.address, "Patching...");
            merge_and_verify(shared, c, &e.patch).await?;
            shared
                .put(&c.address, entry::for_patch(c, &e.patch))
                .await?;
            shared.say(&c.address, format!("Patched after {}", elapsed(started)));
        }
        Op::Revert(e) => {
            let released_to = c.released_to();
            shared.say(
                &c.address,
                match &released_to {
                    Some(_) => "Releasing this stack's hold...",
                    None => "Reverting to the recorded original values...",
                },
            );
            merge_and_verify(shared, c, &e.patch).await?;
            shared.remove(&c.address).await?;
            let done = match released_to {
                Some(holders) => format!(
                    "Released after {}; stack {holders} still holds it",
                    elapsed(started)
                ),
                None => format!("Reverted and verified after {}", elapsed(started)),
            };
            shared.say(&c.address, done);
        }
        Op::Forget => shared.remove(&c.address).await?,
        Op::Wait(target) => return wait(shared, c, target).await,
        // A plan with errors is neither saved nor applied; this is a guard.
        Op::Refused(r) => {
            return Err(ApplyError::Resource {
                address: c.address.clone(),
                message: r.error.clone(),
            });
        }
    }
    Ok(Vec::new())
}

/// The readiness node: waits until the RayService serves, unless told not
/// to; stops at once when the lock is lost or the user interrupts.
async fn wait(
    shared: &Shared,
    c: &Change,
    spec: &crate::stack::serving::Target,
) -> Result<Vec<crate::readiness::Ready>, ApplyError> {
    let on_stuck = match shared.options.wait {
        Readiness::Skip => {
            shared.say(&c.address, "Skipped (--no-wait)");
            return Ok(Vec::new());
        }
        Readiness::Wait(on_stuck) => on_stuck,
    };
    let mut target = spec.clone();
    if let Some(url) = &shared.options.endpoint {
        target.wait.url = Some(url.clone());
    }
    let address = c.address.clone();
    let progress = shared.options.progress.clone();
    let waited = crate::readiness::wait(
        &shared.cluster,
        &shared.namespace,
        &target,
        on_stuck,
        shared.options.detail,
        Arc::new(move |p: crate::readiness::Progress| {
            progress(Event {
                address: address.clone(),
                message: p.to_string(),
                wait: Some(p),
            })
        }),
    );
    // A wait can be long; a run that lost its lock stops now.
    let ready = tokio::select! {
        ready = waited => ready.map_err(|e| ApplyError::Resource {
            address: c.address.clone(),
            message: e.to_string(),
        })?,
        lost = shared.writer.lost() => return Err(lost.into()),
        // A wait changes nothing: abandoning it loses nothing.
        () = shared.options.stop.wait() => return Err(ApplyError::Interrupted {
            done: 0,
            not_done: vec![c.address.clone()],
        }),
    };
    Ok(vec![ready])
}

fn elapsed(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

async fn apply_object(shared: &Shared, c: &Change, w: &Write) -> Result<(), ApplyError> {
    let kind = shared.kind(c)?;
    let key = shared.key().await;
    let body = DesiredObject::from_masked(
        &w.payload.body,
        &w.payload.secret_fingerprints,
        shared.secrets.get(&c.address),
        &key,
    )
    .map_err(|m| ApplyError::Resource {
        address: c.address.clone(),
        message: format!("{m}\n  help: make the plan again: `rayform plan STACK`"),
    })?;
    shared.still_locked()?;
    let live = shared
        .cluster
        .apply(
            &kind,
            c.namespace.as_deref(),
            &c.name,
            &body,
            Ssa {
                manager: &shared.manager,
                force: w.force,
                dry_run: false,
            },
        )
        .await
        .map_err(|e| ApplyError::Resource {
            address: c.address.clone(),
            message: desired::redact_body(&e.to_string(), &body),
        })?;
    record_object(shared, c, live, &w.payload, &key).await
}

/// Writes the state entry of an object rayform just wrote (or found right).
async fn record_object(
    shared: &Shared,
    c: &Change,
    mut live: Value,
    payload: &Payload,
    key: &str,
) -> Result<(), ApplyError> {
    desired::fingerprint_secret_data(&mut live, key);
    let entry = entry::for_object(c, &live, payload);
    shared.put(&c.address, entry).await
}

/// Records an object that is already right, as it reads now.
async fn refresh(shared: &Shared, c: &Change, payload: &Payload) -> Result<(), ApplyError> {
    let kind = shared.kind(c)?;
    let Some(live) = shared
        .cluster
        .get(&kind, c.namespace.as_deref(), &c.name)
        .await
        .map_err(cluster_err(&c.address))?
    else {
        return Ok(());
    };
    let key = shared.key().await;
    record_object(shared, c, live, payload, &key).await
}

async fn delete(shared: &Shared, c: &Change, seen: &Seen) -> Result<(), ApplyError> {
    let kind = shared.kind(c)?;
    let ns = c.namespace.as_deref();
    let launched = karpenter::nodes::Launched::of(&c.api_version, &c.kind);
    if let Some(from @ karpenter::nodes::Launched::FromClass { .. }) = &launched {
        drain::wait(shared, c, from).await?;
    }
    shared.still_locked()?;
    shared
        .cluster
        .delete(&kind, ns, &c.name, seen.uid.as_deref())
        .await
        .map_err(cluster_err(&c.address))?;
    // Finalizers (KubeRay's among them) keep the object until its owner
    // lets go: watched, not polled.
    let started = Instant::now();
    let gone = shared
        .cluster
        .deleted(&kind, ns, &c.name, seen.uid.as_deref());
    tokio::pin!(gone);
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let mut next_report = Duration::from_secs(10);
    loop {
        tokio::select! {
            outcome = &mut gone => {
                outcome.map_err(cluster_err(&c.address))?;
                break;
            }
            _ = beat.tick() => {}
        }
        if shared.options.stop.requested() {
            // The delete was sent; the next run sees whether it finished.
            return Err(ApplyError::Interrupted {
                done: 0,
                not_done: vec![c.address.clone()],
            });
        }
        // The delete was sent; whoever holds the lock now sees how it ends.
        shared.still_locked()?;
        if started.elapsed() >= shared.options.delete_timeout {
            return Err(still_there(shared, c, &kind, started).await);
        }
        if started.elapsed() >= next_report {
            shared.say(
                &c.address,
                format!("Still destroying... [{} elapsed]", elapsed(started)),
            );
            next_report += Duration::from_secs(10);
        }
    }
    if let Some(pool @ karpenter::nodes::Launched::ByPool { .. }) = &launched {
        drain::wait(shared, c, pool).await?;
    }
    shared.remove(&c.address).await
}

/// The error for an object its finalizers keep past the timeout, naming them.
async fn still_there(shared: &Shared, c: &Change, kind: &Kind, started: Instant) -> ApplyError {
    let live = shared
        .cluster
        .get(kind, c.namespace.as_deref(), &c.name)
        .await
        .ok()
        .flatten();
    let finalizers = live
        .as_ref()
        .and_then(|l| l.pointer("/metadata/finalizers"))
        .map(crate::util::compact_json)
        .unwrap_or_else(|| "none".into());
    ApplyError::Resource {
        address: c.address.clone(),
        message: format!(
            "still present {} after delete (finalizers: {finalizers})\n  help: check that the controller owning those finalizers (for a RayService, the KubeRay operator) is running; run destroy again once it is gone",
            elapsed(started)
        ),
    }
}

/// Writes the patch; when the object changed since the plan only where the
/// patch does not look (Karpenter updating the pool's status), writes it
/// again against the newer read, a few times at most.
async fn write_patch(
    shared: &Shared,
    c: &Change,
    kind: &crate::cluster::Kind,
    planned: &karpenter::KarpenterPatch,
) -> Result<(), ApplyError> {
    let mut patch = planned.clone();
    for _ in 0..5 {
        shared.still_locked()?;
        let result = shared
            .cluster
            .merge_patch(kind, &c.name, &patch.merge, &shared.manager, false)
            .await;
        let Err(ClusterError::Conflict { .. }) = result else {
            return result.map(drop).map_err(cluster_err(&c.address));
        };
        let live = shared
            .cluster
            .get(kind, None, &c.name)
            .await
            .map_err(cluster_err(&c.address))?
            .unwrap_or(Value::Null);
        match karpenter::rebased(planned, &live) {
            Some(again) => patch = again,
            None => break,
        }
    }
    Err(ApplyError::Resource {
        address: c.address.clone(),
        message: format!(
            "{} `{}` changed between plan and apply; run the command again",
            c.kind, c.name
        ),
    })
}

async fn merge_and_verify(
    shared: &Shared,
    c: &Change,
    p: &karpenter::KarpenterPatch,
) -> Result<(), ApplyError> {
    let kind = shared.kind(c)?;
    write_patch(shared, c, &kind, p).await?;
    // Read back: the server (a webhook, a controller) may have had other ideas.
    let live = shared
        .cluster
        .get(&kind, None, &c.name)
        .await
        .map_err(cluster_err(&c.address))?
        .unwrap_or(Value::Null);
    let wrong = karpenter::verify(&live, &p.expect);
    if !wrong.is_empty() {
        let lines: Vec<String> = wrong
            .iter()
            .map(|(ptr, want, got)| {
                format!(
                    "{}: expected {}, read back {}",
                    karpenter::field_name(ptr),
                    want.as_ref()
                        .map_or("(absent)".into(), crate::util::compact_json),
                    got.as_ref()
                        .map_or("(absent)".into(), crate::util::compact_json)
                )
            })
            .collect();
        return Err(ApplyError::Resource {
            address: c.address.clone(),
            message: format!("read-back differs: {}", lines.join("; ")),
        });
    }
    Ok(())
}
