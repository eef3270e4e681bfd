//! Whose object it is: another stack's, one rayform did not create, one that
//! lost its label, one of another state of the same name; adopt and import.

use serde_json::json;

use crate::support::{Env, Profile};

/// Two stacks declaring one object: the second names the stack that owns
/// it (not "not created by rayform"), `import` refuses it naming the owner,
/// and `--adopt` shows what taking it changes before it takes it.
#[tokio::test]
async fn an_object_of_another_stack_is_named_as_such_and_adopt_shows_its_diff() {
    let env = Env::new(Profile::V1, "twostacks").await;
    let stack = |name: &str| {
        env.write(
            &format!("{name}.toml"),
            &format!(
                "[stack]\nname = \"{name}\"\nnamespace = \"{}\"\n\n[secret.shared.data]\nK = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
                env.ns
            ),
        );
        format!("{name}.toml")
    };
    let (alpha, beta) = (stack("alpha"), stack("beta"));
    env.rayform(&["apply", &alpha, "--auto-approve"]).ok();

    let refused = env.rayform(&["plan", &beta]).code(1);
    refused.stdout_has("belongs to rayform stack `alpha`");
    refused.stdout_has("take it from stack `alpha`");
    // The help line is a command that runs as printed.
    refused.stdout_has("`rayform plan beta.toml --adopt secret.shared`");
    assert!(
        !refused.all().contains("not created by rayform"),
        "{}",
        refused.all()
    );
    let import = env.rayform(&["import", &beta, "secret.shared"]).code(1);
    assert_eq!(
        import.error_line(),
        "secret.shared: Secret `shared` belongs to rayform stack `alpha` (label rayform.io/stack=alpha); import takes only objects no live stack manages"
    );

    let adopting = env
        .rayform(&["plan", &beta, "--adopt", "secret.shared", "--json"])
        .ok();
    let plan = adopting.json();
    let change = &plan["changes"][0];
    assert_eq!(change["address"], json!("secret.shared"), "{plan}");
    let diff = change["diff"]
        .as_str()
        .unwrap_or_else(|| panic!("no diff: {plan}"));
    assert!(diff.contains("-    rayform.io/stack: alpha"), "{diff}");
    assert!(diff.contains("+    rayform.io/stack: beta"), "{diff}");

    env.rayform(&["apply", &beta, "--adopt", "secret.shared", "--auto-approve"])
        .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "shared")
        .await
        .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("beta")
    );
    // The stack it was taken from lets go of it, and says to whom.
    let destroyed = env.rayform(&["destroy", &alpha, "--auto-approve"]).ok();
    assert_eq!(
        destroyed.line_starting("(it belongs"),
        "(it belongs to rayform stack `beta` now; left alone)"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "shared")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn an_object_rayform_did_not_create_is_not_taken_over() {
    let env = Env::new(Profile::V1, "adopt").await;
    let stack = env.mission_stack("adopt");
    env.apply_as(
        "kubectl",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        json!({"stringData": {"HUGGING_FACE_HUB_TOKEN": "by-hand"}}),
    )
    .await;
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("already exists and was not created by rayform");
    plan.stdout_has("--adopt secret.hf-token");
    env.rayform(&[
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--adopt",
        "secret.hf-token",
    ])
    .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("adopt")
    );
}

#[tokio::test]
async fn an_object_that_lost_its_label_is_still_destroyed_and_a_namesake_is_left_alone() {
    let env = Env::new(Profile::V1, "unlabelled").await;
    let stack = env.mission_stack("unlabelled");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // Someone strips the label from the RayService (a GPU cluster keeps running).
    let unlabel = json!({"metadata": {"labels": {"rayform.io/stack": null}}});
    env.merge_as(
        "someone",
        "ray.io/v1",
        "RayService",
        Some(&env.ns),
        "mistral-7b",
        unlabel,
    )
    .await;
    // And replaces the Secret with one of its own under the same name.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .delete("hf-token", &Default::default())
        .await
        .unwrap();
    let theirs =
        serde_json::from_value(json!({"metadata": {"name": "hf-token"}, "stringData": {"k": "v"}}))
            .unwrap();
    secrets.create(&Default::default(), &theirs).await.unwrap();

    let plan = env.rayform(&["plan", &stack, "--destroy"]).ok();
    plan.stdout_has("label was removed; the uid is the one rayform created");
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_none(),
        "the unlabelled RayService rayform created was forgotten, not deleted"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some(),
        "someone else's Secret of the same name was deleted"
    );
}

#[tokio::test]
async fn a_second_state_of_the_same_stack_name_does_not_claim_the_first_ones_objects() {
    let env = Env::new(Profile::V1, "lineage").await;
    let stack = format!(
        "[stack]\nname = \"lineage\"\nnamespace = \"{}\"\n\n[secret.token.data]\nK = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
        env.ns
    );
    env.write("lineage.toml", &stack);
    env.rayform(&[
        "apply",
        "lineage.toml",
        "--state",
        "a.json",
        "--auto-approve",
    ])
    .ok();
    // Same stack name, another state file (another laptop, a lost file): the
    // label matches, the lineage does not.
    let other = env
        .rayform(&["plan", "lineage.toml", "--state", "b.json"])
        .code(1);
    assert!(
        other
            .all()
            .contains("was made by another rayform state of this stack name"),
        "{}",
        other.all()
    );
    env.rayform(&[
        "destroy",
        "lineage.toml",
        "--state",
        "b.json",
        "--auto-approve",
    ])
    .ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "token")
            .await
            .is_some(),
        "destroy with another state deleted it"
    );
    env.rayform(&[
        "destroy",
        "lineage.toml",
        "--state",
        "a.json",
        "--auto-approve",
    ])
    .ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "token")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn import_takes_an_existing_object_into_the_state_and_the_plan_shows_the_rest() {
    let env = Env::new(Profile::V1, "import").await;
    let stack = env.mission_stack("import");
    // Made by hand before rayform, with the same token.
    env.apply_as(
        "someone",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        json!({"stringData": {"HUGGING_FACE_HUB_TOKEN": env.token}}),
    )
    .await;
    let uid = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = env.rayform(&["plan", &stack]).code(1);
    assert!(refused.all().contains("was not created by rayform"));

    let imported = env.rayform(&["import", &stack, "secret.hf-token"]).ok();
    assert_eq!(
        imported.line_starting("Imported "),
        format!(
            "Imported secret.hf-token (uid {uid}). Run `rayform plan {stack}` to see what apply would change to match the stack."
        )
    );
    env.rayform(&["state", "show", &stack, "secret.hf-token"])
        .ok()
        .stdout_has(&uid);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has("imported: rayform adds its labels");
    // The import recorded the data as found (as keyed fingerprints): the same
    // token is not "changed outside rayform".
    assert!(
        !plan.stdout.contains("changed outside rayform"),
        "{}",
        plan.stdout
    );
    let state = env.state("import");
    let recorded = &state["resources"]["secret.hf-token"];
    assert!(
        recorded["secret_fingerprints"]["HUGGING_FACE_HUB_TOKEN"]
            .as_str()
            .is_some_and(|f| f.starts_with("hmac-sha256:")),
        "{recorded}"
    );
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap();
    assert_eq!(secret["metadata"]["uid"], json!(uid), "the same object");
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("import")
    );
    let again = env.rayform(&["import", &stack, "secret.hf-token"]).code(1);
    assert_eq!(
        again.error_line(),
        "secret.hf-token is already in the state; nothing to import"
    );
    let absent = env.rayform(&["import", &stack, "nodepool.nothere"]).code(1);
    assert_eq!(
        absent.error_line(),
        format!("nodepool.nothere is not in {stack}")
    );
}
