//! Runs that die mid-work (kill -9, an API server restart, Ctrl-C): what
//! they finished is recorded, nothing more, and the next run completes it.

use std::time::Duration;

use crate::support::{
    Backend, Env, OwnCluster, Profile, Running, many_config_maps, on_both_backends,
};

async fn a_kill_that_lands_mid_apply_leaves_a_partial_state_the_next_apply_completes(
    backend: Backend,
) {
    let env = Env::on(backend, Profile::V1, "partial").await;
    let stack = many_config_maps(&env, "partial", 40);
    let running = env.spawn_apply(&stack, "1");
    running
        .until("manifest.cm5: Created", Duration::from_secs(60))
        .await;
    running.kill();
    // The kill landed mid-apply: some objects exist, not all.
    let live = env.count("v1", "ConfigMap").await;
    assert!((6..40).contains(&live), "{live} of 40 live");
    // The state holds no more than what exists. A file's journal has every
    // finished object (cm5's progress line comes after its record); the
    // Secret is rewritten at most once a second, and the next run finds
    // the rest by their lineage.
    let recorded = env.state("partial")["resources"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    assert!(recorded <= live, "{recorded} recorded, {live} live");
    if backend == Backend::File {
        assert!(recorded >= 6, "{recorded} recorded, {live} live");
    }

    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, 40);
    assert_eq!(
        env.state("partial")["resources"].as_object().unwrap().len(),
        40
    );
}
on_both_backends!(a_kill_that_lands_mid_apply_leaves_a_partial_state_the_next_apply_completes);

async fn a_killed_apply_is_finished_by_the_next_one(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "kill9").await;
    let stack = env.mission_stack("kill9");
    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    for delay_ms in [40, 120, 250] {
        let mut child = env
            .command(&[&apply[..], &["--parallelism", "1"]].concat())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever was written reads as a valid state (or there is none yet).
        let pulled = env.rayform(&["state", "pull", &stack]);
        if pulled.code == 0 {
            serde_json::from_str::<serde_json::Value>(&pulled.stdout)
                .expect("state is never half-written");
        }
    }
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    let state_secret = usize::from(backend == Backend::Kubernetes);
    assert_eq!(env.count("v1", "Secret").await, 1 + state_secret);
    assert_eq!(env.count("ray.io/v1", "RayService").await, 1);
    assert_eq!(
        env.state("kill9")["resources"].as_object().unwrap().len(),
        4
    );
}
on_both_backends!(a_killed_apply_is_finished_by_the_next_one);

/// The API server goes away for seconds in the middle of an apply, then in
/// the middle of a destroy (an upgrade, a crash): the run stops with what it
/// finished recorded, and the next one completes the work.
async fn an_api_server_restart_mid_apply_and_mid_destroy_is_repaired_by_the_next_run(
    backend: Backend,
) {
    let cluster = OwnCluster::up(Profile::V1);
    let env = Env::on_cluster(backend, Profile::V1, cluster.kubeconfig.clone(), "restart").await;
    let n = 400;
    let stack = many_config_maps(&env, "restart", n);
    let once = |verb: &str| {
        let mut args = vec![verb.to_string(), stack.clone(), "--auto-approve".into()];
        if verb == "apply" {
            args.push("--no-wait".into());
        }
        args.extend(["--parallelism".into(), "1".into()]);
        args
    };

    let apply = once("apply");
    let args: Vec<&str> = apply.iter().map(String::as_str).collect();
    let running = Running::spawn(env.command(&args));
    running
        .until("manifest.cm5: Created", Duration::from_secs(60))
        .await;
    cluster.restart_apiserver();
    let first = running.finish();
    assert!(!first.all().contains("panicked"), "{}", first.all());
    let live = env.count("v1", "ConfigMap").await;
    assert!(
        (6..n).contains(&live),
        "the restart landed mid-apply: {live} of {n} live; {}",
        first.all()
    );
    assert_eq!(first.code, 1, "{}", first.all());
    env.rayform_once_unlocked(&args, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, n);

    let destroy = once("destroy");
    let args: Vec<&str> = destroy.iter().map(String::as_str).collect();
    let running = Running::spawn(env.command(&args));
    running
        .until("Destruction complete", Duration::from_secs(60))
        .await;
    cluster.restart_apiserver();
    let first = running.finish();
    assert!(!first.all().contains("panicked"), "{}", first.all());
    let left = env.count("v1", "ConfigMap").await;
    assert!(
        (1..n).contains(&left),
        "the restart landed mid-destroy: {left} of {n} left; {}",
        first.all()
    );
    env.rayform_once_unlocked(&args, Duration::from_secs(40))
        .ok();
    assert_eq!(env.count("v1", "ConfigMap").await, 0);
    assert!(
        env.state("restart")["resources"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(an_api_server_restart_mid_apply_and_mid_destroy_is_repaired_by_the_next_run);

/// A kill between a Karpenter patch and its state record. With the state in
/// the cluster the record follows the patch by up to a second, so a kill on
/// the "Patched" line lands there; the next apply must still know the
/// original values (from the object's own annotation), and destroy restore them.
#[tokio::test]
async fn a_kill_between_a_karpenter_patch_and_its_record_still_reverts_exactly() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "patchkill").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("patchkill");
    // Work that comes after the patch, so the run is still going when the
    // kill lands (the mission stack alone finishes in a few milliseconds).
    let mut text = std::fs::read_to_string(env.path(&stack)).unwrap();
    for i in 0..80 {
        text.push_str(&format!(
            "\n[manifest.after{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ i = \"{i}\" }} }}\ndepends_on = [\"nodepool.{}\"]\n",
            env.pool
        ));
    }
    env.write(&stack, &text);
    let running = env.spawn_apply(&stack, "1");
    running
        .until(
            &format!("nodepool.{}: Patched", env.pool),
            Duration::from_secs(60),
        )
        .await;
    running.kill();
    assert_ne!(env.karpenter_specs().await.0, before.0, "the patch landed");
    let state = env.state("patchkill");
    assert!(
        state["resources"]
            .get(format!("nodepool.{}", env.pool))
            .is_none(),
        "the kill came before the patch was recorded: {state}"
    );

    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(
        env.karpenter_specs().await,
        before,
        "the originals recorded on the object were restored"
    );
}

/// The first Ctrl-C stops new work but lets what is in flight finish and be
/// recorded: when the run exits, the state and the cluster agree exactly.
async fn ctrl_c_mid_apply_finishes_what_is_in_flight_and_records_it(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "ctrlcapply").await;
    let n = 400;
    let stack = many_config_maps(&env, "ctrlcapply", n);
    let running = env.spawn_apply(&stack, "4");
    running
        .until("manifest.cm20: Created", Duration::from_secs(60))
        .await;
    running.interrupt();
    let run = running.finish().code(130);
    run.stderr_has("interrupted by Ctrl-C: stopped:");
    run.stderr_has("not done: manifest.");
    let live = env.count("v1", "ConfigMap").await;
    let recorded = env.state("ctrlcapply")["resources"]
        .as_object()
        .unwrap()
        .len();
    assert!((20..n).contains(&live), "stopped mid-apply: {live} of {n}");
    assert_eq!(
        recorded, live,
        "every object written is recorded, and no other"
    );
    let plan = env.rayform(&["plan", &stack]).ok();
    assert_eq!(
        plan.line_starting("Plan: "),
        format!(
            "Plan: {} to add, 0 to change, 0 to destroy, 0 to patch.",
            n - live
        ),
        "the plan adds exactly what the interrupted run did not"
    );
}
on_both_backends!(ctrl_c_mid_apply_finishes_what_is_in_flight_and_records_it);
