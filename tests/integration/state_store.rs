//! Where the state is kept, under faults: a state too large for one Secret,
//! a state write whose answer is lost, and the backup every overwrite keeps.

use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use rayform::backend::Backend as StateBackend;
use rayform::cluster::{Cluster, ConnectOptions};
use rayform::stack::{Address, ResourceType, StateLocation};
use rayform::state::{Applied, ResourceState, State};
use serde_json::{Value, json};

use crate::fault_proxy::{Drop, FaultProxy};
use crate::support::{Backend, Env, OwnCluster, Profile, Run, Running, on_both_backends};

/// A stack of `count` ConfigMaps, each holding `bytes` of random text.
fn config_maps(env: &Env, stack_name: &str, count: usize, bytes: usize) -> String {
    use base64::Engine as _;
    let mut text = format!(
        "[stack]\nname = \"{stack_name}\"\nnamespace = \"{}\"\n",
        env.ns
    );
    for i in 0..count {
        let mut raw = vec![0u8; bytes * 3 / 4];
        getrandom::fill(&mut raw).expect("random bytes");
        let value = base64::engine::general_purpose::STANDARD.encode(&raw);
        text.push_str(&format!(
            "\n[manifest.cm{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ index = \"{i}\", text = \"{value}\" }} }}\n"
        ));
    }
    let file = format!("{stack_name}.toml");
    env.write(&file, &text);
    file
}

/// rayform, run off the test's runtime (a fault proxy may be serving on it).
async fn rayform(env: &Env, kubeconfig: &std::path::Path, args: &[&str]) -> Run {
    let mut command = env.command(args);
    command.env("KUBECONFIG", kubeconfig);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run rayform");
    Run::from(output)
}

/// What rayform records for a ConfigMap it applied, with hashes and ids as
/// random as real ones (they are what a state's size is made of), and a
/// value as random: 10 000 of them pass 1 MiB compressed.
fn entry(ns: &str, i: usize) -> ResourceState {
    let name = format!("cm{i}");
    let applied = json!({
        "data": { "index": i.to_string(), "checksum": rayform::util::random_hex(32).unwrap() },
        "metadata": {
            "annotations": { "rayform.io/lineage": "2e042052b8b2cf6d929c0c436f801ad0" },
            "labels": { "app.kubernetes.io/managed-by": "rayform", "rayform.io/stack": "big" },
        },
    });
    let fingerprint = format!("sha256:{}", rayform::util::random_hex(32).unwrap());
    ResourceState {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name,
        namespace: Some(ns.into()),
        uid: Some(rayform::util::random_hex(16).unwrap()),
        resource_version: Some((100_000 + i).to_string()),
        desired_fingerprint: fingerprint.clone(),
        live_fingerprint: fingerprint,
        applied: Applied::new(&applied),
        secret_fingerprints: Default::default(),
        patch: None,
    }
}

fn compressed(state: &State) -> usize {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(state).expect("JSON"))
        .expect("compress");
    gz.finish().expect("compress").len()
}

/// The names of the Secrets holding parts of `stack`'s state.
async fn parts(env: &Env, stack: &str) -> Vec<String> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let selector = format!("rayform.io/state-part-of={stack}");
    let mut names: Vec<String> = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list parts")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_state_of_ten_thousand_resources_round_trips_through_the_kubernetes_backend() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "tenthousand").await;
    let cluster = Cluster::connect(&ConnectOptions {
        kubeconfig: Some(env.kubeconfig.clone()),
        context: None,
    })
    .await
    .expect("connect");
    let location = StateLocation::Kubernetes {
        namespace: env.ns.clone(),
        stack: "big".into(),
    };
    let mut state = State::new("big").unwrap();
    for i in 0..10_000 {
        state.resources.insert(
            Address::new(ResourceType::Manifest, format!("cm{i}")),
            entry(&env.ns, i),
        );
    }
    let json = |s: &State| serde_json::to_value(s).expect("state as JSON");

    // One run writes it twice, as an apply does.
    let run = StateBackend::open(&location, Some(&cluster)).expect("open");
    let lock = run.lock("test", &|_| {}).await.expect("lock");
    let started = Instant::now();
    run.save(&mut state, &lock).await.expect("a first write");
    let first = started.elapsed();
    state
        .resources
        .remove(&Address::new(ResourceType::Manifest, "cm0"));
    run.save(&mut state, &lock).await.expect("a second write");
    let after_one_run = parts(&env, "big").await;
    let started = Instant::now();
    let loaded = StateBackend::open(&location, Some(&cluster))
        .expect("open")
        .load()
        .await
        .expect("load")
        .expect("a state")
        .state;
    let read = started.elapsed();
    eprintln!(
        "10 000 resources, {} KiB compressed: written in {first:?} as {} parts, read in {read:?}",
        compressed(&state) / 1024,
        after_one_run.len()
    );
    assert_eq!(json(&loaded), json(&state), "the state reads back whole");
    assert!(
        after_one_run.len() >= 2,
        "past 1 MiB compressed, the state is split: {after_one_run:?}"
    );
    let prefix = after_one_run[0].rsplit_once('.').expect("a part name").0;
    assert!(
        after_one_run.iter().all(|p| p.starts_with(prefix)),
        "only the last write's parts are left: {after_one_run:?}"
    );
    drop(lock);
    rayform::backend::kubernetes::settle(std::time::Duration::from_secs(3)).await;

    // A part a killed run wrote but never switched the state to.
    let orphan: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "rayform-state-big.0123456789ab.0",
            "labels": { "rayform.io/state-part-of": "big" },
            "annotations": { "rayform.io/serial": "1" },
        },
        "data": { "part": "AAAA" },
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&Default::default(), &orphan)
        .await
        .expect("create the orphan part");

    // The next run keeps the state it found as its backup, parts and all,
    // and deletes the orphan.
    let next = StateBackend::open(&location, Some(&cluster)).expect("open");
    let lock = next.lock("test", &|_| {}).await.expect("lock");
    let mut found = next.load().await.expect("load").expect("a state").state;
    found
        .resources
        .remove(&Address::new(ResourceType::Manifest, "cm1"));
    next.save(&mut found, &lock).await.expect("a write");
    assert_eq!(
        parts(&env, "big").await.len(),
        2 * after_one_run.len(),
        "the backup's parts and the new state's, no orphan"
    );
    let restored = next
        .restore(&lock)
        .await
        .expect("restore")
        .expect("a backup");
    assert_eq!(restored.from, state.serial);
    assert_eq!(restored.resources, 9_999);
    let back = next.load().await.expect("load").expect("a state").state;
    assert_eq!(json(&back)["resources"], json(&state)["resources"]);
    drop(lock);
    rayform::backend::kubernetes::settle(std::time::Duration::from_secs(3)).await;
}

#[tokio::test]
async fn a_state_too_large_for_the_kubernetes_backend_is_refused_at_plan_time_before_any_object() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "toolarge").await;
    // 14 ConfigMaps of 900 kB of random text: about 9 MiB compressed, past
    // the 8 MiB (8 Secrets of 1 MiB) the backend keeps.
    let stack = config_maps(&env, "huge", 14, 900_000);
    let plan = env
        .rayform(&["plan", &stack, "--server-dry-run", "none"])
        .code(1);
    plan.stdout_has("the state of stack `huge` would take")
        .stdout_has("more than the kubernetes backend keeps (8.0 MiB in 8 Secrets of 1 MiB)")
        .stdout_has("help: split the stack in two");
    let refused = env
        .rayform(&[
            "apply",
            &stack,
            "--auto-approve",
            "--server-dry-run",
            "none",
        ])
        .code(1);
    assert_eq!(
        refused.error_line(),
        "the plan has errors; nothing was changed"
    );
    assert_eq!(env.count("v1", "ConfigMap").await, 0, "no object written");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "rayform-state-huge")
            .await
            .is_none(),
        "no state written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_whose_answer_is_lost_is_read_back_and_the_apply_goes_on() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "lostanswer").await;
    let stack = config_maps(&env, "lost", 150, 8);
    // The first state write is a create; the first PUT is the first
    // rewrite in the middle of the apply, with more to come after it.
    let proxy = FaultProxy::start(
        &env.kubeconfig,
        Drop {
            method: hyper::Method::PUT,
            path: format!("/api/v1/namespaces/{}/secrets/rayform-state-lost", env.ns),
            times: 1,
        },
    )
    .await;
    let through = proxy.kubeconfig().to_path_buf();
    let args = [
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--parallelism",
        "1",
    ];
    let apply = rayform(&env, &through, &args).await;
    assert_eq!(proxy.dropped(), 1, "the proxy lost one answer");
    let apply = apply.ok();
    assert_eq!(
        apply.line_starting("Apply complete!"),
        "Apply complete! Resources: 150 added, 0 changed, 0 destroyed, 0 patched."
    );
    let pulled = rayform(&env, &through, &["state", "pull", &stack])
        .await
        .ok();
    let state: Value = serde_json::from_str(&pulled.stdout).expect("state is JSON");
    assert_eq!(state["resources"].as_object().map(|r| r.len()), Some(150));
    rayform(&env, &through, &["plan", &stack, "--detailed-exitcode"])
        .await
        .code(0);
}

/// The API server restarts while an apply rewrites the state every second:
/// the run says what happened (the cluster could not be reached), never that
/// someone else wrote the state, and the next run converges.
#[tokio::test]
async fn an_api_server_restart_mid_apply_ends_with_a_true_message_and_the_next_run_converges() {
    let cluster = OwnCluster::up(Profile::V1);
    let env = Env::on_cluster(
        Backend::Kubernetes,
        Profile::V1,
        cluster.kubeconfig.clone(),
        "restartmessage",
    )
    .await;
    let n = 300;
    let stack = config_maps(&env, "restartmessage", n, 8);
    let args = [
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--parallelism",
        "1",
    ];
    let running = Running::spawn(env.command(&args));
    running
        .until("manifest.cm20: Created", std::time::Duration::from_secs(60))
        .await;
    cluster.restart_apiserver();
    let first = running.finish();
    let live = env.count("v1", "ConfigMap").await;
    assert!((21..n).contains(&live), "mid-apply: {live} of {n} live");
    assert_eq!(first.code, 1, "{}", first.all());
    assert!(
        first.stderr.contains("cannot reach the cluster"),
        "the run says the cluster went away:\n{}",
        first.stderr
    );
    assert!(
        !first.all().contains("written by someone else") && !first.all().contains("panicked"),
        "{}",
        first.all()
    );
    env.rayform_once_unlocked(&args, std::time::Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, n);
}

fn tracked(env: &Env, stack: &str) -> Vec<String> {
    let list = env.rayform(&["state", "list", stack]).ok();
    list.stdout.lines().map(str::to_string).collect()
}

/// `state rm`, `state push --force`, `import` and apply each keep the state
/// as they found it; `state restore` puts it back, even over a state that
/// no longer reads, and the error about such a state names that command.
/// A state that does not read is never kept over a backup.
async fn every_overwrite_of_the_state_keeps_a_backup_that_state_restore_puts_back(
    backend: Backend,
) {
    let env = Env::on(backend, Profile::V1, "backup").await;
    let stack = config_maps(&env, "backup", 3, 8);
    let all = ["manifest.cm0", "manifest.cm1", "manifest.cm2"];
    env.rayform(&["state", "restore", &stack])
        .code(1)
        .stderr_has("no backup of the state");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // That apply found no state: there was nothing to keep.
    env.rayform(&["state", "restore", &stack])
        .code(1)
        .stderr_has("no backup of the state");
    let first = env.state("backup")["serial"].as_u64().expect("a serial");
    // An apply that changes every object, the state written several times:
    // the backup is the state before the apply, not one written during it.
    config_maps(&env, "backup", 3, 8);
    let changed = env
        .rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    assert_eq!(
        changed.line_starting("Apply complete!"),
        "Apply complete! Resources: 0 added, 3 changed, 0 destroyed, 0 patched."
    );
    env.rayform(&["state", "restore", &stack])
        .ok()
        .stdout_has(&format!("serial {first} (3 resources)"));
    let applied = env.state("backup")["serial"].as_u64().expect("a serial");

    env.rayform(&["state", "rm", &stack, "manifest.cm0"]).ok();
    assert_eq!(tracked(&env, &stack), all[1..]);
    let restore = env.rayform(&["state", "restore", &stack]).ok();
    restore.stdout_has(&format!("serial {applied} (3 resources)"));
    assert_eq!(tracked(&env, &stack), all);
    let serial = env.state("backup")["serial"].as_u64().expect("a serial");
    assert!(
        serial > applied + 1,
        "the restored state moves on: {serial}"
    );

    let mut empty = env.state("backup");
    empty["resources"] = json!({});
    let file = env.write("empty.json", &empty.to_string());
    env.rayform(&["state", "push", &stack, &file.to_string_lossy(), "--force"])
        .ok();
    assert!(tracked(&env, &stack).is_empty());
    env.rayform(&["state", "restore", &stack]).ok();
    assert_eq!(tracked(&env, &stack), all);

    env.rayform(&["state", "rm", &stack, "manifest.cm0"]).ok();
    env.rayform(&["import", &stack, "manifest.cm0"]).ok();
    assert_eq!(tracked(&env, &stack), all);
    env.rayform(&["state", "restore", &stack]).ok();
    assert_eq!(tracked(&env, &stack), all[1..], "as import found it");

    match backend {
        Backend::File => {
            assert!(env.path("state/backup.json.backup").exists());
            env.write("state/backup.json", "{ not a state");
        }
        Backend::Kubernetes => {
            assert!(
                env.get("v1", "Secret", Some(&env.ns), "rayform-state-backup.backup")
                    .await
                    .is_some()
            );
            env.merge_as(
                "someone",
                "v1",
                "Secret",
                Some(&env.ns),
                "rayform-state-backup",
                json!({ "data": { "state.json.gz": "bm90IGd6aXA=" } }),
            )
            .await;
        }
    }
    env.rayform(&["plan", &stack])
        .code(1)
        .stderr_has("valid")
        .stderr_has(&format!("help: `rayform state restore {stack}`"));
    // A forced push replaces a state that does not read, and keeps no
    // backup of it: the one there is better.
    env.rayform(&["state", "push", &stack, &file.to_string_lossy(), "--force"])
        .ok()
        .stderr_has("replacing a state that does not read");
    assert!(tracked(&env, &stack).is_empty());
    env.rayform(&["state", "restore", &stack]).ok();
    assert_eq!(tracked(&env, &stack), all[1..], "the backup import kept");
}
on_both_backends!(every_overwrite_of_the_state_keeps_a_backup_that_state_restore_puts_back);
