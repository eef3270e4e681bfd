//! The state lock as a user meets it: a second run refused at once naming
//! the holder, force-unlock, a lost Lease, RBAC that forbids it, and Ctrl-C
//! giving it back (lock.rs has the Lease under clock and timing faults).

use std::time::Duration;

use crate::support::{Backend, Env, Profile, Running, many_config_maps, on_both_backends};

/// A run that waits for readiness holds the lock; the readiness never comes
/// here (no KubeRay operator on this cluster), so it holds it until killed.
async fn a_running_apply_holds_the_lock_until_it_ends_or_dies(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "holder").await;
    let stack = env.mission_stack("holder");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;

    // With the state in the cluster, another working directory with its own
    // copy of the stack (no shared files) meets the same lock; a file state
    // is found from the stack file, so there the second run is beside it.
    let elsewhere = match backend {
        Backend::Kubernetes => env.path("elsewhere"),
        Backend::File => env.dir.path().to_path_buf(),
    };
    if backend == Backend::Kubernetes {
        std::fs::create_dir_all(&elsewhere).unwrap();
        for file in [stack.as_str(), "mistral-7b.rayservice.yaml"] {
            std::fs::copy(env.path(file), elsewhere.join(file)).unwrap();
        }
    }
    let started = std::time::Instant::now();
    let second = env.rayform_in(&elsewhere, &["plan", &stack]).code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    second.stderr_has("state is locked");
    second.stderr_has(&format!("pid {}", holder.pid()));

    holder.kill();
    let after = env.rayform_once_unlocked(&["plan", &stack], Duration::from_secs(40));
    assert_eq!(after.code, 0, "{}", after.all());
    if backend == Backend::Kubernetes {
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "a Lease left by a killed holder is respected until it expires"
        );
    }
}
on_both_backends!(a_running_apply_holds_the_lock_until_it_ends_or_dies);

#[tokio::test]
async fn a_held_lock_makes_a_second_run_fail_at_once_naming_the_holder() {
    let env = Env::new(Profile::V1, "lock").await;
    let stack = env.mission_stack("lock");
    // A plan of a stack with no state yet takes no lock (it has nothing to
    // protect and writes nothing); with a state, it waits for no one.
    env.rayform(&["init", &stack]).ok();
    let held =
        rayform::state::lock::StateLock::acquire(&env.path("state/lock.json"), "apply").unwrap();
    let started = std::time::Instant::now();
    let run = env.rayform(&["plan", &stack]).code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    run.stderr_has("state is locked");
    assert!(
        run.stderr.contains(&format!("pid {}", std::process::id())),
        "{}",
        run.stderr
    );
    run.stderr_has(&held.info.id);
    drop(held);
    env.rayform(&["plan", &stack]).ok();
}

#[tokio::test]
async fn force_unlock_checks_the_id_and_never_breaks_a_live_holders_lock() {
    let env = Env::new(Profile::V1, "unlock").await;
    let stack = env.mission_stack("unlock");
    // A plan takes the lock of a stack that has a state.
    env.rayform(&["init", &stack]).ok();
    let held =
        rayform::state::lock::StateLock::acquire(&env.path("state/unlock.json"), "apply").unwrap();
    let id = held.info.id.clone();
    let wrong = env.rayform(&["force-unlock", &stack, "not-the-id"]).code(1);
    assert_eq!(
        wrong.error_line(),
        format!("lock ID `not-the-id` does not match the current lock `{id}`")
    );
    let alive = env.rayform(&["force-unlock", &stack, &id]).code(1);
    alive.stderr_has("held by a running process");
    // The record can say anything (another host, a dead pid): the holder is
    // alive as long as its OS lock is, and that lock is what decides.
    let record = format!(
        r#"{{"id":"{id}","pid":999999999,"host":"elsewhere","operation":"apply","since":"2026-01-01T00:00:00Z"}}"#
    );
    std::fs::write(env.path("state/unlock.json.lock"), &record).unwrap();
    let elsewhere = env.rayform(&["force-unlock", &stack, &id]).code(1);
    elsewhere.stderr_has("held by a running process");
    env.rayform(&["plan", &stack])
        .code(1)
        .stderr_has("state is locked");
    // A holder killed with -9 loses its OS lock but leaves its record: the
    // record alone blocks nobody, and force-unlock clears it.
    drop(held);
    std::fs::write(env.path("state/unlock.json.lock"), &record).unwrap();
    env.rayform(&["force-unlock", &stack, &id]).ok();
    assert_eq!(
        std::fs::read_to_string(env.path("state/unlock.json.lock")).unwrap(),
        ""
    );
    env.rayform(&["plan", &stack]).ok();
}

#[tokio::test]
async fn a_run_whose_lease_is_taken_over_stops_without_writing_the_state() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leaselost").await;
    let stack = env.mission_stack("leaselost");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    let serial = || async {
        env.get("v1", "Secret", Some(&env.ns), "rayform-state-leaselost")
            .await
            .expect("the state Secret")["metadata"]["annotations"]["rayform.io/serial"]
            .clone()
    };
    let before = serial().await;

    // Someone else takes the Lease, as a run would once it had expired.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let mut lease = leases.get("rayform-lock-leaselost").await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    leases
        .replace("rayform-lock-leaselost", &Default::default(), &lease)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let run = holder.finish();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        run.error_line().starts_with("the state lock was lost: "),
        "{}",
        run.stderr
    );
    assert_eq!(serial().await, before, "no state written after the loss");
    // Its help line runs as printed. The intruder never renews the Lease, so
    // the suggested run sees a dead holder and takes over after a duration.
    crate::cli::run_suggested(&env, &run)
        .ok()
        .stderr_has("Taking over the state lock");
}

#[tokio::test]
async fn rbac_that_forbids_the_state_lease_is_named_with_what_to_grant() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "rbaclease").await;
    let stack = env.mission_stack("rbaclease");
    let run = env
        .rayform(&["--context", "restricted", "plan", &stack])
        .code(1);
    let text = run.all();
    assert!(text.contains("forbidden: cannot create leases"), "{text}");
    assert!(
        text.contains("get, create and update on secrets and leases.coordination.k8s.io"),
        "{text}"
    );
    assert!(text.contains("--backend file"), "{text}");
}

#[tokio::test]
async fn ctrl_c_gives_the_lease_back_at_once() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leasectrlc").await;
    let stack = env.mission_stack("leasectrlc");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    holder.interrupt();
    assert_eq!(holder.finish().code, 130);
    // No waiting out the Lease: the interrupted run gave it back.
    let started = std::time::Instant::now();
    env.rayform(&["plan", &stack]).ok();
    assert!(started.elapsed() < Duration::from_secs(10));
    let lease = env
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(&env.ns),
            "rayform-lock-leasectrlc",
        )
        .await
        .expect("the Lease stays, without a holder");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

/// Ctrl-C twice stops at once, and still gives the Lease back: the next CI
/// job is not told "locked" for the Lease's duration.
#[tokio::test]
async fn ctrl_c_twice_still_gives_the_lease_back() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leasectrlc2").await;
    let stack = many_config_maps(&env, "leasectrlc2", 400);
    let holder =
        Running::spawn(env.command(&["apply", &stack, "--auto-approve", "--parallelism", "1"]));
    holder.until("Created", Duration::from_secs(60)).await;
    holder.interrupt();
    holder.interrupt();
    assert_eq!(holder.finish().code, 130);
    let lease = env
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(&env.ns),
            "rayform-lock-leasectrlc2",
        )
        .await
        .expect("the Lease stays, without a holder");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}
