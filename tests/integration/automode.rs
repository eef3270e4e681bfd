//! EKS Auto Mode (`scripts/testcluster up --profile automode`): Karpenter built
//! into the control plane, EKS's own NodePools `general-purpose` and `system`
//! and NodeClass `default` beside the user's, and no EC2NodeClass. rayform
//! must leave EKS's objects alone and say what to do instead.

use serde_json::{Value, json};

use crate::support::{Env, Profile, Run, repo};

const BUILT_IN_REF: fn() -> Value =
    || json!({ "group": "eks.amazonaws.com", "kind": "NodeClass", "name": "default" });

/// The mission stack as a user on Auto Mode would first write it, the
/// guide's "general-purpose Karpenter node pool" taken at its word: EKS's
/// built-in pool and its NodeClass `default`.
fn mission_stack_on_built_ins(env: &Env) -> String {
    let text =
        std::fs::read_to_string(repo().join("stacks/mistral-7b.toml")).expect("mission stack");
    std::fs::copy(
        repo().join("stacks/mistral-7b.rayservice.yaml"),
        env.path("mistral-7b.rayservice.yaml"),
    )
    .expect("copy manifest");
    let text = text
        .replace(
            "namespace = \"default\"",
            &format!("namespace = \"{}\"", env.ns),
        )
        .replace("[nodepool.default]", "[nodepool.general-purpose]");
    env.write("mistral-7b.toml", &text);
    "mistral-7b.toml".into()
}

#[track_caller]
fn refused(run: Run) -> Run {
    assert_ne!(run.code, 0, "expected a refusal:\n{}", run.all());
    run
}

#[tokio::test]
async fn the_cluster_has_the_built_in_pools_and_class_and_no_ec2nodeclass() {
    let env = Env::new(Profile::AutoMode, "automode-fixtures").await;
    for name in ["general-purpose", "system"] {
        let pool = env
            .get("karpenter.sh/v1", "NodePool", None, name)
            .await
            .unwrap_or_else(|| panic!("the built-in pool {name}"));
        assert_eq!(
            pool.pointer("/spec/template/spec/nodeClassRef"),
            Some(&BUILT_IN_REF())
        );
    }
    let class = env
        .get("eks.amazonaws.com/v1", "NodeClass", None, "default")
        .await
        .expect("the NodeClass default");
    assert_eq!(class["spec"]["ephemeralStorage"]["size"], json!("80Gi"));
    assert!(
        kube::discovery::group(&env.client, "karpenter.k8s.aws")
            .await
            .is_err(),
        "Auto Mode serves no EC2NodeClass"
    );
    // An EC2NodeClass's disk field is not a NodeClass field: a merge patch
    // (as rayform patches Karpenter objects) of it is dropped by the server.
    env.merge_as(
        "someone",
        "eks.amazonaws.com/v1",
        "NodeClass",
        None,
        &env.class,
        json!({ "spec": { "blockDeviceMappings": [
            { "deviceName": "/dev/xvda", "ebs": { "volumeSize": "200Gi" } }
        ] } }),
    )
    .await;
    assert_eq!(env.class_spec().await.get("blockDeviceMappings"), None);
}

#[tokio::test]
async fn the_built_in_pool_and_the_default_nodeclass_are_refused_with_help() {
    let env = Env::new(Profile::AutoMode, "automode-builtins").await;
    let stack = mission_stack_on_built_ins(&env);
    let before = env
        .get("karpenter.sh/v1", "NodePool", None, "general-purpose")
        .await
        .expect("general-purpose");

    let plan = refused(env.rayform(&["plan", &stack]));
    let all = plan.all();
    assert!(
        all.contains("NodePool `general-purpose` is one of EKS Auto Mode's built-in pools"),
        "{all}"
    );
    assert!(
        all.contains("the NodeClass `default` is the one EKS made for its built-in pools"),
        "{all}"
    );
    assert!(
        all.contains("help: on EKS Auto Mode, add a NodePool and a NodeClass of your own"),
        "{all}"
    );

    refused(env.rayform(&["apply", &stack, "--auto-approve"]));
    let after = env
        .get("karpenter.sh/v1", "NodePool", None, "general-purpose")
        .await
        .expect("general-purpose");
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "nothing is written to a built-in pool"
    );
}

#[tokio::test]
async fn the_v1_mission_stack_is_refused_for_its_nodeclass_with_help() {
    let env = Env::new(Profile::AutoMode, "automode-v1-stack").await;
    let stack = env.mission_stack("mistral-7b");
    let plan = refused(env.rayform(&["plan", &stack]));
    plan.stdout_has("Karpenter API: karpenter.sh/v1 NodePool (EKS Auto Mode");
    let all = plan.all();
    assert!(
        all.contains("this is an EKS Auto Mode cluster (eks.amazonaws.com/v1 NodeClass served, no EC2NodeClass)"),
        "{all}"
    );
    assert!(all.contains("help: on EKS Auto Mode"), "{all}");
}

/// The refusals are about EKS's objects: a pool of the user's own on Auto
/// Mode is patched and restored like any Karpenter v1 pool.
#[tokio::test]
async fn a_pool_of_the_users_own_is_patched_and_restored() {
    let env = Env::new(Profile::AutoMode, "automode-own-pool").await;
    let text = format!(
        "[stack]\nname = \"own-pool\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"600s\"\n",
        env.ns, env.pool
    );
    env.write("own-pool.toml", &text);
    env.rayform(&["apply", "own-pool.toml", "--auto-approve"])
        .ok();
    assert_eq!(
        env.pool_spec().await["disruption"]["consolidateAfter"],
        json!("600s")
    );
    env.rayform(&["destroy", "own-pool.toml", "--auto-approve"])
        .ok();
    assert_eq!(
        env.pool_spec().await["disruption"]["consolidateAfter"],
        json!("30s")
    );
}

#[tokio::test]
async fn doctor_tells_auto_mode_apart_and_says_which_stack_form_fits() {
    let env = Env::new(Profile::AutoMode, "automode-doctor").await;
    let bare = env.rayform(&["doctor"]);
    bare.stdout_has("EKS Auto Mode, Karpenter built in; its NodePools general-purpose and system and NodeClass default are EKS's own");
    bare.stdout_has("a stack fits that creates its own GPU NodePool and NodeClass with [gpu_nodes.NAME] (stacks/mistral-7b-automode.toml)");
    bare.stdout_has("or whose [nodepool.NAME] names a NodePool of your own");
    bare.stdout_has("not the self-managed form of stacks/mistral-7b.toml");

    // The guide's pool taken at its word, and the self-managed stack's class:
    // both failed, each with the help line.
    let stack = mission_stack_on_built_ins(&env);
    let doctor = env.rayform(&["doctor", &stack]).code(1);
    doctor.stdout_has(
        "✘ nodepool.general-purpose: NodePool `general-purpose` is one of EKS Auto Mode's built-in pools",
    );
    doctor.stdout_has("✘ nodeclass.default: this is an EKS Auto Mode cluster");
    doctor.stdout_has("help: on EKS Auto Mode, add a NodePool and a NodeClass of your own");
    assert!(
        !doctor.stdout.contains("✔ GPU workers"),
        "a refused built-in pool is not said to launch the GPU workers:\n{}",
        doctor.stdout
    );
}

/// A pool of the user's own made like EKS's general-purpose (C, M and R,
/// under Auto Mode's own label names) is said not to launch the GPU worker.
#[tokio::test]
async fn doctor_reads_auto_modes_instance_labels_on_a_pool_of_ones_own() {
    let env = Env::new(Profile::AutoMode, "automode-fit").await;
    let stack = env.mission_stack("fit");
    let text = std::fs::read_to_string(env.path(&stack)).expect("stack");
    let own_pool_only = text.replace(
        &format!("[nodeclass.{}]\nstorage = \"200Gi\"\n", env.class),
        "",
    );
    assert_ne!(own_pool_only, text, "the stack's [nodeclass] is dropped");
    env.write(&stack, &own_pool_only);
    let doctor = env.rayform(&["doctor", &stack]);
    doctor.stdout_has("it allows instance categories c, m, r, none with NVIDIA GPUs (g, p)");
}

/// stacks/mistral-7b-automode.toml in the test's namespace, its GPU pool
/// and class named for the test, without the readiness wait (no KubeRay
/// operator runs on this profile). Returns the file and that name.
fn automode_stack(env: &Env) -> (String, String) {
    let text = std::fs::read_to_string(repo().join("stacks/mistral-7b-automode.toml"))
        .expect("automode stack");
    std::fs::copy(
        repo().join("stacks/mistral-7b-automode.rayservice.yaml"),
        env.path("mistral-7b-automode.rayservice.yaml"),
    )
    .expect("copy manifest");
    // Not the fixture copies' name (env.pool, env.class): the stack makes its own.
    let name = format!("{}-gpu", env.pool);
    let text = text
        .split("[wait.chat]")
        .next()
        .expect("text before the wait")
        .replace(
            "namespace = \"default\"",
            &format!("namespace = \"{}\"", env.ns),
        )
        .replace("[gpu_nodes.gpu]", &format!("[gpu_nodes.{name}]"));
    env.write("mistral-7b-automode.toml", &text);
    ("mistral-7b-automode.toml".into(), name)
}

const NODECLASS: (&str, &str) = ("eks.amazonaws.com/v1", "NodeClass");
const NODEPOOL: (&str, &str) = ("karpenter.sh/v1", "NodePool");

/// The done-when of the Auto Mode form: planned, passed by doctor, applied
/// (a class made from `default` with the stack's storage, a GPU pool from
/// it), a no-op plan after, and destroyed with both gone.
#[tokio::test]
async fn the_auto_mode_stack_owns_its_gpu_pool_and_class_from_apply_to_destroy() {
    let env = Env::new(Profile::AutoMode, "automode-gpu-nodes").await;
    let (stack, name) = automode_stack(&env);
    let default = env
        .get(NODECLASS.0, NODECLASS.1, None, "default")
        .await
        .expect("the NodeClass default");

    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(&format!(
        "+ gpuclass.{name} will be created (eks.amazonaws.com/v1 NodeClass {name})"
    ));
    plan.stdout_has(&format!(
        "+ gpupool.{name} will be created (karpenter.sh/v1 NodePool {name})"
    ));
    // The role read from `default` is in the plan, as apply will send it.
    plan.stdout_has("AmazonEKSAutoNodeRole-rayform-demo");
    assert!(
        !plan.stdout.contains("no pool of the stack can launch"),
        "the stack's own pool launches its GPU workers:\n{}",
        plan.stdout
    );

    let doctor = env.rayform(&["doctor", &stack]);
    doctor.stdout_has(&format!(
        "✔ gpuclass.{name}: NodeClass `{name}` will be made from `default` (role AmazonEKSAutoNodeRole-rayform-demo, 2 subnet and 1 security group selector term(s)) with ephemeralStorage.size 200Gi"
    ));
    doctor.stdout_has(&format!(
        "✔ gpupool.{name}: NodePool `{name}` will be created"
    ));
    doctor.stdout_has("✔ GPU workers");
    doctor.stdout_has("✔ GPUs: no GPU node now (Karpenter launches them on demand); on EKS Auto Mode, EKS brings the NVIDIA driver and device plugin");
    let failed: Vec<&str> = doctor
        .stdout
        .lines()
        .filter(|l| l.contains('✘') && !l.contains("KubeRay operator"))
        .collect();
    assert!(
        failed.is_empty(),
        "only the absent operator fails:\n{}",
        doctor.stdout
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let class = env
        .get(NODECLASS.0, NODECLASS.1, None, &name)
        .await
        .expect("the stack's NodeClass");
    for field in ["role", "subnetSelectorTerms", "securityGroupSelectorTerms"] {
        assert_eq!(class["spec"][field], default["spec"][field], "{field}");
    }
    assert_eq!(class["spec"]["ephemeralStorage"]["size"], json!("200Gi"));
    assert_eq!(
        class["metadata"]["labels"]["rayform.io/stack"],
        json!("mistral-7b-automode")
    );
    let pool = env
        .get(NODEPOOL.0, NODEPOOL.1, None, &name)
        .await
        .expect("the stack's NodePool");
    assert_eq!(
        pool["spec"]["template"]["spec"]["nodeClassRef"],
        json!({ "group": "eks.amazonaws.com", "kind": "NodeClass", "name": name })
    );
    assert_eq!(
        pool["spec"]["disruption"]["consolidateAfter"],
        json!("600s")
    );
    assert!(
        pool["spec"]["template"]["spec"]["requirements"]
            .as_array()
            .is_some_and(|r| r.contains(&json!({"key": "eks.amazonaws.com/instance-gpu-manufacturer", "operator": "In", "values": ["nvidia"]}))),
        "{}",
        pool["spec"]
    );
    // What the plan read from `default` is what it reads again: no change.
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    // Let go and imported again, the class is recorded as apply wrote it,
    // copied fields and all: no change, and none said to be made outside.
    let class_address = format!("gpuclass.{name}");
    env.rayform(&["state", "rm", &stack, &class_address]).ok();
    env.rayform(&["import", &stack, &class_address]).ok();
    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert!(
        !plan.stdout.contains("changed outside rayform"),
        "the copied fields were recorded as imported:\n{}",
        plan.stdout
    );

    let destroy = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    destroy.stdout_has(&format!(
        "- gpupool.{name} will be deleted (karpenter.sh/v1 NodePool {name})\n      (then waits until Karpenter has drained and removed the pool's nodes)"
    ));
    destroy.stdout_has("(first waits until Karpenter has removed the nodes launched from it)");
    assert_eq!(env.get(NODEPOOL.0, NODEPOOL.1, None, &name).await, None);
    assert_eq!(env.get(NODECLASS.0, NODECLASS.1, None, &name).await, None);
}

#[tokio::test]
async fn a_class_made_from_a_node_class_that_is_not_there_is_refused_with_help() {
    let env = Env::new(Profile::AutoMode, "automode-no-source").await;
    let (stack, name) = automode_stack(&env);
    let text = std::fs::read_to_string(env.path(&stack)).expect("stack");
    env.write(
        &stack,
        &text.replace("class_from = \"default\"", "class_from = \"nowhere\""),
    );
    let plan = refused(env.rayform(&["plan", &stack]));
    let all = plan.all();
    assert!(
        all.contains("the NodeClass `nowhere` it is made from does not exist"),
        "{all}"
    );
    assert!(all.contains("help: name an existing NodeClass"), "{all}");
    refused(env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"]));
    assert_eq!(env.get(NODECLASS.0, NODECLASS.1, None, &name).await, None);
}

/// The Auto Mode form on a self-managed Karpenter: no NodeClass to make.
#[tokio::test]
async fn the_auto_mode_stack_is_refused_on_a_self_managed_karpenter_with_help() {
    let env = Env::new(Profile::V1, "automode-stack-on-v1").await;
    let (stack, _) = automode_stack(&env);
    let all = refused(env.rayform(&["plan", &stack])).all();
    assert!(
        all.contains("[gpu_nodes] is the stack form for EKS Auto Mode, and this cluster serves no eks.amazonaws.com/v1 NodeClass"),
        "{all}"
    );
    assert!(all.contains("help: on a self-managed Karpenter"), "{all}");
}
