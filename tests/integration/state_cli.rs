//! The state as a user handles it: init, `state list/show/rm/pull/push`,
//! where the default state is found, a damaged journal, and a state that
//! belongs to another cluster or namespace.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::{Backend, Env, Profile, assert_no_token};

#[tokio::test]
async fn a_journal_damaged_in_the_middle_is_read_up_to_the_damage_and_said_so() {
    let env = Env::new(Profile::V1, "tornjournal").await;
    let stack = env.mission_stack("tornjournal");
    env.rayform(&["init", &stack]).ok();
    let state = env.state("tornjournal");
    // What a killed run leaves, with its third line damaged (a power cut
    // can leave a block of another file, or of zeroes, inside a file).
    let put = |name: &str| {
        json!({"put": {"address": format!("manifest.{name}"), "entry": {
            "api_version": "v1", "kind": "ConfigMap", "name": name,
            "namespace": env.ns, "desired_fingerprint": "sha256:d",
            "live_fingerprint": "sha256:l",
        }}})
        .to_string()
    };
    let header = json!({"journal": 1, "lineage": state["lineage"], "serial": state["serial"]});
    let lines = [header.to_string(), put("a"), "\0\0\0\0".into(), put("c")];
    env.write("state/tornjournal.json.journal", &(lines.join("\n") + "\n"));

    let list = env.rayform(&["state", "list", &stack]).ok();
    assert_eq!(
        list.stdout, "manifest.a\n",
        "nothing past the damage is loaded"
    );
    list.stderr_has("Warning: journal ");
    list.stderr_has("tornjournal.json.journal is damaged at line 3");
    list.stderr_has("the 1 line(s) after it were not read");
}

#[tokio::test]
async fn state_list_show_and_rm_read_and_edit_the_state_without_touching_the_cluster() {
    let env = Env::new(Profile::V1, "statecmd").await;
    let stack = env.mission_stack("statecmd");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let list = env.rayform(&["state", "list", &stack]).ok();
    // Every tracked address once, sorted as text (as `terraform state list`).
    let listed: Vec<&str> = list.stdout.lines().collect();
    let (class, pool) = (
        format!("nodeclass.{}", env.class),
        format!("nodepool.{}", env.pool),
    );
    assert_eq!(
        listed,
        [
            class.as_str(),
            &pool,
            "rayservice.mistral-7b",
            "secret.hf-token"
        ]
    );

    let show = env
        .rayform(&["state", "show", &stack, "secret.hf-token"])
        .ok();
    show.stdout_has("kind:             Secret (v1)");
    show.stdout_has("uid:");
    let pool = env
        .rayform(&["state", "show", &stack, &format!("nodepool.{}", env.pool)])
        .ok();
    pool.stdout_has(r#"/spec/disruption/consolidateAfter: "30s" → "600s""#);
    assert_no_token(
        &env.token,
        &BTreeMap::from([("state show".to_string(), show.all())]),
    );

    let bogus = env.rayform(&["state", "show", &stack, "bogus"]).code(1);
    assert_eq!(bogus.error_line(), "`bogus` is not an address");
    let unknown = env
        .rayform(&["state", "rm", &stack, "secret.hf-token", "secret.nope"])
        .code(1);
    assert_eq!(unknown.error_line(), "the state does not track secret.nope");
    // All or nothing: the known address is still tracked.
    assert!(
        env.rayform(&["state", "list", &stack])
            .ok()
            .stdout
            .contains("secret.hf-token")
    );

    let removed = env
        .rayform(&["state", "rm", &stack, "secret.hf-token"])
        .ok();
    assert_eq!(
        removed.line_starting("Removed "),
        "Removed secret.hf-token: the object stays in the cluster, and rayform no longer manages it."
    );
    // Still labelled, but no longer taken back without being asked.
    let plan = env.rayform(&["plan", &stack]).code(1);
    assert!(
        plan.all().contains("--adopt secret.hf-token"),
        "{}",
        plan.all()
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some(),
        "an object removed from the state is no longer rayform's to delete"
    );
}

#[tokio::test]
async fn the_default_state_is_found_from_the_stack_file_not_the_working_directory() {
    let env = Env::new(Profile::V1, "statepath").await;
    let file = env.mission_stack("statepath");
    // The repository layout: stacks/ and state/ side by side.
    std::fs::create_dir(env.path("stacks")).unwrap();
    for f in [file.as_str(), "mistral-7b.rayservice.yaml"] {
        std::fs::rename(env.path(f), env.path(&format!("stacks/{f}"))).unwrap();
    }
    env.rayform(&[
        "apply",
        &format!("stacks/{file}"),
        "--auto-approve",
        "--no-wait",
    ])
    .ok();
    assert!(env.path("state/statepath.json").exists());
    let from_stacks = env.rayform_in(&env.path("stacks"), &["plan", &file, "--detailed-exitcode"]);
    assert_eq!(
        from_stacks.code, 0,
        "same state from stacks/:\n{}{}",
        from_stacks.stdout, from_stacks.stderr
    );
    assert!(!env.path("stacks/state").exists());
}

#[tokio::test]
async fn the_state_follows_the_cluster_once_it_tracks_nothing() {
    let a = Env::new(Profile::V1, "moved").await;
    let b = Env::new(Profile::V1beta1, "moved").await;
    let stack = format!(
        "[stack]\nname = \"moved\"\nnamespace = \"default\"\n\n[secret.{}.data]\nTOKEN = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
        a.ns
    );
    let (file_a, file_b) = (a.write("moved.toml", &stack), b.write("moved.toml", &stack));
    let state = a.path("moved-state.json");
    let state = state.to_str().unwrap();
    let (file_a, file_b) = (file_a.to_str().unwrap(), file_b.to_str().unwrap());
    a.rayform(&["apply", file_a, "--state", state, "--auto-approve"])
        .ok();
    a.rayform(&["destroy", file_a, "--state", state, "--auto-approve"])
        .ok();
    b.rayform(&["apply", file_b, "--state", state, "--auto-approve"])
        .ok();
    // The state now tracks B's Secret: on A it must be refused, not re-created there.
    let on_a = a.rayform(&["plan", file_a, "--state", state]).code(1);
    on_a.stderr_has("the state was written against");
    b.rayform(&["destroy", file_b, "--state", state, "--auto-approve"])
        .ok();
}

#[tokio::test]
async fn a_missing_state_namespace_is_named_with_how_to_create_it() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "statens").await;
    let stack = env.mission_stack("statens");
    let run = env
        .rayform(&["--state-namespace", "no-such-ns", "plan", &stack])
        .code(1);
    assert_eq!(
        run.error_line(),
        "the state namespace `no-such-ns` does not exist"
    );
    run.stderr_has("kubectl create namespace no-such-ns");
}

#[tokio::test]
async fn state_moves_between_backends_with_pull_and_push() {
    let env = Env::new(Profile::V1, "migrate").await;
    let stack = env.mission_stack("migrate");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let pulled = env.rayform(&["state", "pull", &stack]).ok();
    env.write("migrate.state.json", &pulled.stdout);
    let to_cluster = ["--backend", "kubernetes"];
    env.rayform(
        &[
            &to_cluster[..],
            &["state", "push", &stack, "migrate.state.json"],
        ]
        .concat(),
    )
    .ok()
    .stdout_has("Pushed migrate.state.json (4 resources");
    // The cluster's copy is the same state: nothing to do, same lineage.
    env.rayform(&[&to_cluster[..], &["plan", &stack, "--detailed-exitcode"]].concat())
        .code(0);
    let moved: serde_json::Value = serde_json::from_str(
        &env.rayform(&[&to_cluster[..], &["state", "pull", &stack]].concat())
            .ok()
            .stdout,
    )
    .unwrap();
    let original: serde_json::Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(moved["lineage"], original["lineage"]);
    assert_eq!(moved["resources"], original["resources"]);
    // An older copy is refused: the cluster's state has moved on.
    env.rayform(
        &[
            &to_cluster[..],
            &["state", "push", &stack, "migrate.state.json"],
        ]
        .concat(),
    )
    .code(1)
    .stderr_has("newer than");
    env.rayform(&[&to_cluster[..], &["destroy", &stack, "--auto-approve"]].concat())
        .ok();
}
