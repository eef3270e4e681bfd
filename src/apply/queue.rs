//! The order changes run in: each once everything it depends on is done,
//! at most `parallelism` at a time, in plan order among those ready. The
//! shape is cargo's `DependencyQueue`: per change, the number of its
//! dependencies not yet done, and per address, the changes waiting on it,
//! so finishing one change touches only its dependents instead of
//! rescanning everything still pending.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use super::{ApplyError, ApplyReport, Shared, run, says_lock_lost};
use crate::plan::{Change, Plan};
use crate::stack::Address;

/// The changes of a plan not yet started, and what each still waits for.
pub(super) struct Queue<'p> {
    changes: &'p [Change],
    /// By index into `changes`: dependencies not done yet.
    waiting: Vec<usize>,
    /// By address: the indexes of the changes that depend on it.
    dependents: BTreeMap<&'p Address, Vec<usize>>,
    /// Ready to start, lowest index (plan order) first.
    ready: BTreeSet<usize>,
    started: Vec<bool>,
}

impl<'p> Queue<'p> {
    pub(super) fn new(changes: &'p [Change]) -> Queue<'p> {
        let mut dependents: BTreeMap<&Address, Vec<usize>> = BTreeMap::new();
        for (i, c) in changes.iter().enumerate() {
            for d in &c.depends_on {
                dependents.entry(d).or_default().push(i);
            }
        }
        let waiting: Vec<usize> = changes.iter().map(|c| c.depends_on.len()).collect();
        let ready = (0..changes.len()).filter(|&i| waiting[i] == 0).collect();
        Queue {
            changes,
            waiting,
            dependents,
            ready,
            started: vec![false; changes.len()],
        }
    }

    /// The next change whose dependencies are all done, if any.
    pub(super) fn next(&mut self) -> Option<&'p Change> {
        let i = self.ready.pop_first()?;
        self.started[i] = true;
        Some(&self.changes[i])
    }

    /// `address` is done: what waited only on it becomes ready.
    pub(super) fn finish(&mut self, address: &Address) {
        for &i in self.dependents.get(address).into_iter().flatten() {
            self.waiting[i] -= 1;
            if self.waiting[i] == 0 {
                self.ready.insert(i);
            }
        }
    }

    /// The changes never started, in plan order.
    pub(super) fn left(&self) -> impl Iterator<Item = &'p Change> + '_ {
        let changes = self.changes;
        (0..changes.len())
            .filter(|&i| !self.started[i])
            .map(move |i| &changes[i])
    }
}

/// Runs the plan's changes, each once its dependencies are done. The
/// changes run as futures of this one (borrowing the plan, never copied):
/// the runtime has one thread, so tasks of their own would buy nothing.
pub(super) async fn walk(shared: &Shared, plan: &Plan) -> Result<ApplyReport, ApplyError> {
    let mut queue = Queue::new(&plan.changes);
    let mut running = FuturesUnordered::new();
    let mut done: BTreeSet<&Address> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut report = ApplyReport::default();
    let parallelism = shared.options.parallelism.max(1);
    let stop = &shared.options.stop;
    loop {
        while failures.is_empty() && !stop.requested() && running.len() < parallelism {
            let Some(change) = queue.next() else { break };
            tracing::debug!(address = %change.address, action = ?change.action(), "starting");
            running.push(async move { (change, run(shared, change).await) });
        }
        let Some((change, outcome)) = running.next().await else {
            break;
        };
        tracing::debug!(address = %change.address, ok = outcome.is_ok(), "finished");
        match outcome {
            Ok(ready) => {
                report.ready.extend(ready);
                queue.finish(&change.address);
                done.insert(&change.address);
            }
            // A lost lock fails every change in flight alike: say it once.
            Err(e) if says_lock_lost(&e) && failures.iter().any(says_lock_lost) => {}
            Err(e) => failures.push(e),
        }
    }
    let left: Vec<&Change> = queue.left().collect();
    let stopped_only = failures
        .iter()
        .all(|e| matches!(e, ApplyError::Interrupted { .. }));
    if stop.requested() && stopped_only && (!left.is_empty() || !failures.is_empty()) {
        let changes = plan.changes.iter().filter(|c| c.action().is_change());
        return Err(ApplyError::Interrupted {
            done: changes.filter(|c| done.contains(&c.address)).count(),
            not_done: plan
                .changes
                .iter()
                .filter(|c| !done.contains(&c.address))
                .map(|c| c.address.clone())
                .collect(),
        });
    }
    match failures.len() {
        0 => match left.first() {
            Some(c) => Err(ApplyError::Resource {
                address: c.address.clone(),
                message: "not applied: a dependency did not finish".into(),
            }),
            None => Ok(report),
        },
        1 => Err(failures.remove(0)),
        _ => Err(ApplyError::Several(failures)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Op;
    use crate::stack::ResourceType;

    fn change(name: &str, depends_on: &[&str]) -> Change {
        let address = |n: &str| Address::new(ResourceType::Manifest, n);
        Change {
            address: address(name),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: name.into(),
            namespace: None,
            reasons: Vec::new(),
            depends_on: depends_on.iter().map(|d| address(d)).collect(),
            op: Op::Forget,
        }
    }

    fn names(started: &[&Change]) -> Vec<String> {
        started.iter().map(|c| c.address.name.clone()).collect()
    }

    #[test]
    fn a_change_starts_only_once_everything_it_depends_on_is_done() {
        let changes = [
            change("a", &[]),
            change("b", &["a"]),
            change("c", &["a", "b"]),
        ];
        let mut queue = Queue::new(&changes);
        let first = queue.next().unwrap();
        assert_eq!(first.address.name, "a");
        assert!(queue.next().is_none(), "b and c wait for a");
        queue.finish(&first.address);
        let second = queue.next().unwrap();
        assert_eq!(second.address.name, "b");
        assert!(queue.next().is_none(), "c still waits for b");
        queue.finish(&second.address);
        assert_eq!(queue.next().unwrap().address.name, "c");
        assert_eq!(queue.left().count(), 0);
    }

    #[test]
    fn independent_changes_are_ready_together_in_plan_order() {
        let changes = [change("x", &[]), change("y", &["x"]), change("z", &[])];
        let mut queue = Queue::new(&changes);
        let started = [queue.next().unwrap(), queue.next().unwrap()];
        assert_eq!(names(&started), ["x", "z"]);
        assert!(queue.next().is_none());
    }

    #[test]
    fn a_change_whose_dependency_never_finishes_is_left() {
        let changes = [
            change("a", &[]),
            change("b", &["a"]),
            change("c", &["gone"]),
        ];
        let mut queue = Queue::new(&changes);
        assert_eq!(queue.next().unwrap().address.name, "a");
        // a failed: it is never finished, so b and c stay where they are.
        assert!(queue.next().is_none());
        assert_eq!(names(&queue.left().collect::<Vec<_>>()), ["b", "c"]);
    }
}
