//! EKS Auto Mode (`scripts/testcluster up --profile automode`): Karpenter built
//! into the control plane, EKS's own NodePools `general-purpose` and `system`
//! and NodeClass `default` beside the user's, and no EC2NodeClass. rayform
//! must leave EKS's objects alone and say what to do instead.

use serde_json::{Value, json};

use crate::support::{Env, Profile};

const BUILT_IN_REF: fn() -> Value =
    || json!({ "group": "eks.amazonaws.com", "kind": "NodeClass", "name": "default" });

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
