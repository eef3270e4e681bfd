//! Input of any shape that gets past parsing (a RayService's body, live
//! Karpenter objects and RayServices) is rendered, read and planned into a
//! result or an error, never a panic.

use proptest::prelude::*;

#[test]
fn a_rayservice_of_the_wrong_shape_is_rendered_without_a_panic_for_the_server_to_judge() {
    let dir = tempfile::tempdir().unwrap();
    let stack_file = dir.path().join("shape.toml");
    let stack = "[stack]\nname = \"shape\"\n\n[secret.tok.data]\nT = { env = \"SHAPE_TOKEN\" }\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n";
    for body in [
        "spec: oops\n",
        "spec:\n  rayClusterConfig: [1, 2]\n",
        "spec:\n  rayClusterConfig:\n    headGroupSpec:\n      template: {metadata: nope}\n    workerGroupSpecs: [{template: 3}, 4]\n",
    ] {
        std::fs::write(
            dir.path().join("llm.yaml"),
            // It names the stack's Secret, so rendering annotates its pod templates.
            format!(
                "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: llm\nref: {{secretKeyRef: {{name: tok, key: T}}}}\n{body}"
            ),
        )
        .unwrap();
        let Ok(stack) = rayform::stack::parse_str(&stack_file, stack, &Default::default()) else {
            continue; // refused with an error: also fine
        };
        let rendered =
            rayform::desired::render(&stack, "key", "lineage", rayform::desired::Secrets::Skip);
        assert!(rendered.is_ok(), "{body}");
    }
}

/// JSON of any shape, with the keys rayform reads among the random ones, so
/// that the readers of RayServices and Karpenter objects meet their fields
/// holding the wrong types.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        proptest::sample::select(vec![
            "spec",
            "metadata",
            "status",
            "annotations",
            "labels",
            "name",
            "rayClusterConfig",
            "headGroupSpec",
            "workerGroupSpecs",
            "template",
            "containers",
            "resources",
            "limits",
            "requests",
            "nvidia.com/gpu",
            "replicas",
            "minReplicas",
            "serveConfigV2",
            "upgradeStrategy",
            "type",
            "disruption",
            "consolidationPolicy",
            "consolidateAfter",
            "ttlSecondsAfterEmpty",
            "consolidation",
            "enabled",
            "blockDeviceMappings",
            "deviceName",
            "ebs",
            "volumeSize",
            "rootVolume",
            "amiFamily",
            "amiSelectorTerms",
            "alias",
            "launchTemplate",
            "requirements",
            "key",
            "operator",
            "values",
            "taints",
            "effect",
            "tolerations",
            "nodeSelector",
            "nodeClassRef",
            "providerRef",
        ])
        .prop_map(str::to_string),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9/@._ -]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Parsing is not the only place input arrives: a RayService of any shape
    /// is rendered and planned, and live Karpenter objects and RayServices of
    /// any shape are read by the floors, the AMI families, the fit checks and
    /// the rollout rules. None of it may panic.
    #[test]
    fn no_shape_of_stack_or_live_object_makes_rendering_or_planning_panic(
        spec in any_json(),
        live in any_json(),
        after in any_json(),
    ) {
        use rayform::karpenter::{ClassApi, PoolApi, family, fit, floor};
        use rayform::observe::{Observed, ObservedObject, ObservedPatch, World};
        use rayform::stack::{Address, NodeClassIntent, NodePoolIntent, ResourceType};

        let ttl = NodePoolIntent { empty_ttl: std::time::Duration::from_secs(600) };
        let disk = NodeClassIntent { storage: "200Gi".into(), device: None };
        for api in PoolApi::ALL {
            let _ = floor::pool(api, &ttl, &live);
            let _ = fit::class_of(api, &live);
        }
        for api in ClassApi::ALL {
            let _ = floor::class(api, &disk, &live, &after);
            let _ = family::Family::of(api, &live);
        }
        let _ = floor::original_view(&live);
        let _ = rayform::karpenter::revert("s", &live, &Default::default());
        let workers = fit::gpu_workers(&serde_json::json!({ "spec": spec.clone() }));
        for w in &workers {
            let _ = fit::misfits(PoolApi::V1, &live, w);
        }
        // Through KubeRay's hash too: any spec is hashed or refused, never a panic.
        let built = |cluster| rayform::observe::BuiltFrom { hash: "H".into(), worker_groups: Some(1), cluster };
        let (serving, preparing) = (built(rayform::observe::Compared::Serving), built(rayform::observe::Compared::Preparing));
        for built_from in [None, Some(&serving), Some(&preparing)] {
            let live = rayform::plan::rollout::Live { spec: &live, built_from };
            let _ = rayform::plan::rollout::assess(Some(live), &after, None).describe();
        }

        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "llm"}, "spec": spec,
        });
        std::fs::write(dir.path().join("llm.yaml"), manifest.to_string()).unwrap();
        let text = "[stack]\nname = \"shapes\"\n\n[nodepool.default]\nempty_ttl = \"600s\"\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n";
        let Ok(stack) = rayform::stack::parse_str(&dir.path().join("shapes.toml"), text, &Default::default()) else {
            return Ok(());
        };
        let graph = rayform::graph::Graph::build(&stack).unwrap();
        let state = rayform::state::State::new("shapes").unwrap();
        let desired = rayform::desired::render(&stack, "key", &state.lineage, rayform::desired::Secrets::Skip).unwrap();
        let world = World {
            cluster: rayform::target::ClusterId { server: "https://127.0.0.1:1".into(), context: None },
            karpenter: rayform::karpenter::Served { pools: vec![PoolApi::V1], classes: vec![ClassApi::V1], ..Default::default() },
            kuberay_operator_missing: None,
            resources: [
                (
                    Address::new(ResourceType::RayService, "llm"),
                    Observed::Object(ObservedObject {
                        namespaced: true,
                        owned: true,
                        live: Some(live.clone()),
                        after: Some(after.clone()),
                        ..Default::default()
                    }),
                ),
                (
                    Address::new(ResourceType::NodePool, "default"),
                    Observed::Patch(Box::new(ObservedPatch {
                        api_version: "karpenter.sh/v1".into(),
                        kind: "NodePool".into(),
                        name: "default".into(),
                        patch: match floor::pool(PoolApi::V1, &ttl, &live) {
                            Ok(rayform::karpenter::Wanted::Write { fields, .. }) => {
                                Some(rayform::karpenter::patch("shapes", &live, &fields))
                            }
                            _ => None,
                        },
                        after: Some(after.clone()),
                        live: Some(live),
                        ..Default::default()
                    })),
                ),
            ]
            .into(),
        };
        let plan = rayform::plan::build(&stack, &graph, &desired, &state, true, &world, &Default::default());
        let _ = rayform::plan::render_text(&plan, Default::default());
        let _ = rayform::plan::render_json(&plan);
    }
}
