//! `rayform doctor` against the local cluster: the real KubeRay operator is
//! found, what the cluster lacks is said, and the restricted user is told
//! exactly which permissions it lacks.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{Env, Profile};

fn failed(json: &str, subject: &str) -> BTreeSet<String> {
    let report: Value = serde_json::from_str(json).expect("doctor --json");
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["subject"] == subject && c["status"] == "fail")
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn doctor_passes_the_mission_stack_but_for_gpus_and_names_what_a_user_may_not_do() {
    let env = Env::new(Profile::Nodes, "doctor").await;
    let stack = env.mission_stack("doctor");

    let admin = env.rayform(&["doctor", &stack]).ok();
    admin.stdout_has("✔ KubeRay operator: running: it holds Lease kube-system/ray-operator-leader");
    admin.stdout_has(&format!(
        "✔ nodepool.{}: karpenter.sh/v1 NodePool",
        env.pool
    ));
    admin.stdout_has("✔ secret.hf-token.HUGGING_FACE_HUB_TOKEN: environment variable HUGGING_FACE_HUB_TOKEN is set");
    admin.stdout_has("✔ RBAC: all 21 permissions plan, apply and destroy use are granted");
    admin.stdout_has("! GPUs: no node reports nvidia.com/gpu capacity");
    assert!(
        !admin.stdout.contains(&env.token),
        "doctor never shows a secret value"
    );

    let restricted = env
        .rayform(&["--context", "restricted", "doctor", &stack, "--json"])
        .code(1);
    let expected: BTreeSet<String> = [
        format!("cannot create pods/portforward in namespace {}", env.ns),
        "cannot patch ec2nodeclasses.karpenter.k8s.aws (cluster-wide)".to_string(),
        "cannot patch nodepools.karpenter.sh (cluster-wide)".to_string(),
    ]
    .into();
    assert_eq!(failed(&restricted.stdout, "RBAC"), expected);

    let no_token = env
        .command(&["doctor", &stack])
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .output()
        .expect("run rayform");
    assert_eq!(no_token.status.code(), Some(1));
    let said = String::from_utf8_lossy(&no_token.stdout);
    assert!(
        said.contains("✘ secret.hf-token.HUGGING_FACE_HUB_TOKEN: environment variable HUGGING_FACE_HUB_TOKEN is not set"),
        "{said}"
    );
}

#[tokio::test]
async fn doctor_says_when_no_kuberay_operator_runs() {
    let env = Env::new(Profile::V1, "doctor-nooperator").await;
    let run = env.rayform(&["doctor", "--json"]).code(1);
    assert_eq!(
        failed(&run.stdout, "KubeRay operator"),
        ["not found: no Deployment labelled app.kubernetes.io/name=kuberay-operator and no ray-operator-leader Lease".to_string()].into()
    );
}
