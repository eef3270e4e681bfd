//! A stack whose namespace is edited after an apply: moving is refused,
//! and destroy still deletes the objects where the state recorded them.

use crate::support::{Backend, Env, Profile, on_both_backends};

#[tokio::test]
async fn moving_a_stack_to_another_namespace_is_refused_rather_than_orphaning() {
    let env = Env::new(Profile::V1, "movens").await;
    let stack = env.mission_stack("movens");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let text = std::fs::read_to_string(env.path(&stack)).unwrap();
    env.write(
        &stack,
        &text.replace(
            &format!("namespace = \"{}\"", env.ns),
            "namespace = \"elsewhere\"",
        ),
    );
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has(&format!("lives in namespace `{}`", env.ns));
}

/// The stack's namespace edited after an apply: destroy still finds every
/// object where the state recorded it and deletes it, instead of looking in
/// the new namespace, finding nothing and forgetting objects that still run.
async fn destroy_after_a_namespace_edit_deletes_what_the_state_recorded(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "nsedit").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("nsedit");
    let text = std::fs::read_to_string(env.path(&stack)).unwrap();
    // The state stays where it is: only the objects' namespace moves.
    let text = text.replace(
        "[stack]\n",
        &format!("[stack]\nstate_namespace = \"{}\"\n", env.ns),
    );
    env.write(&stack, &text);
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    env.write(
        &stack,
        &text.replace(
            &format!("\nnamespace = \"{}\"", env.ns),
            "\nnamespace = \"elsewhere\"",
        ),
    );
    let plan = env.rayform(&["plan", &stack, "--destroy"]).ok();
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 2 to destroy, 2 to revert."
    );
    let destroy = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(
        destroy.line_starting("Destroy complete!"),
        "Destroy complete! Resources: 2 destroyed, 2 reverted."
    );
    for (api_version, kind, name) in [
        ("v1", "Secret", "hf-token"),
        ("ray.io/v1", "RayService", "mistral-7b"),
    ] {
        assert!(
            env.get(api_version, kind, Some(&env.ns), name)
                .await
                .is_none(),
            "{kind} {name} is still running in {}",
            env.ns
        );
    }
    assert_eq!(env.karpenter_specs().await, before);
    assert!(
        env.state("nsedit")["resources"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(destroy_after_a_namespace_edit_deletes_what_the_state_recorded);
