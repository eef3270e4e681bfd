//! The token: never in any output, plan, state or log, and a missing
//! token variable is named before anything is written.

use std::collections::BTreeMap;

use crate::support::{Env, Profile, assert_no_token};

#[tokio::test]
async fn the_token_never_leaves_the_secret() {
    let env = Env::new(Profile::V1, "secrets").await;
    let stack = env.mission_stack("secrets");
    let mut texts = BTreeMap::new();
    env.rayform(&["init", &stack]).ok();
    let plan = env
        .rayform(&["-vv", "plan", &stack, "--out", "saved.plan"])
        .ok();
    texts.insert("plan output".to_string(), plan.all());
    texts.insert(
        "plan --json".to_string(),
        env.rayform(&["-vv", "plan", &stack, "--json"]).ok().all(),
    );
    texts.insert(
        "saved plan".to_string(),
        std::fs::read_to_string(env.path("saved.plan")).unwrap(),
    );
    // `show` renders the saved plan as `plan` did, offline.
    let shown = env.rayform(&["show", "saved.plan"]).ok();
    let planned: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains(" will be "))
        .collect();
    assert!(planned.len() >= 4, "{}", plan.stdout);
    let shown_changes: Vec<&str> = shown
        .stdout
        .lines()
        .filter(|l| l.contains(" will be "))
        .collect();
    assert_eq!(shown_changes, planned, "show lists the changes plan listed");
    let shown_json = env.rayform(&["show", "saved.plan", "--json"]).ok().json();
    assert!(shown_json.is_object());
    texts.insert("show".to_string(), shown.all());
    texts.insert("show --json".to_string(), shown_json.to_string());
    // Logs at the finest level anything allows, kube's requests included.
    let traced = env
        .command(&["-vv", "apply", "saved.plan", "--no-wait"])
        .env("RAYFORM_LOG", "trace")
        .output()
        .expect("run rayform");
    let traced = crate::support::Run::from(traced).ok();
    traced.stderr_has("rayform::apply");
    texts.insert("apply output (RAYFORM_LOG=trace)".to_string(), traced.all());

    // A new token: shown as changed, never as itself.
    let rotated = env
        .command(&["-vv", "plan", &stack])
        .env("HUGGING_FACE_HUB_TOKEN", format!("{}-rotated", env.token))
        .output()
        .unwrap();
    let rotated_out = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated_out.contains("(sensitive value changed)"),
        "{rotated_out}"
    );
    assert!(
        rotated_out.contains("rayservice.secrets")
            || rotated_out.contains("rayservice.mistral-7b will be updated"),
        "a new token rolls the RayService: {rotated_out}"
    );
    texts.insert(
        "rotated plan".to_string(),
        format!("{rotated_out}{}", String::from_utf8_lossy(&rotated.stderr)),
    );

    let state_path = env.path("state/secrets.json");
    texts.insert(
        "state file".to_string(),
        std::fs::read_to_string(&state_path).unwrap(),
    );
    texts.insert(
        "destroy output".to_string(),
        env.rayform(&["-vv", "destroy", &stack, "--auto-approve"])
            .ok()
            .all(),
    );
    assert_no_token(&env.token, &texts);

    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&state_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_missing_token_variable_is_named_and_nothing_is_written() {
    let env = Env::new(Profile::V1, "noenv").await;
    let stack = env.mission_stack("noenv");
    let out = env
        .command(&["apply", &stack, "--auto-approve", "--no-wait"])
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("HUGGING_FACE_HUB_TOKEN") && stderr.contains("not set"),
        "{stderr}"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
    assert!(!env.path("state/noenv.json").exists());
}
