//! Objects rayform creates and owns: created, updated from a dry run or a
//! local diff, restored after drift, recorded, deleted, forgotten, refused.

use serde_json::json;

use super::builder::*;
use crate::cluster::missing_kind_message;
use crate::plan::rollout::{Assessment, Rollout};
use crate::plan::{Action, Keep, Op, Summary};

const SETTINGS: &str = "manifest.settings";

#[test]
fn a_new_secret_is_created_with_its_value_as_a_fingerprint_only() {
    let mut s = Scenario::new(SECRET);
    s.absent("secret.hf-token");
    let plan = s.plan();
    let c = plan.change(&address("secret.hf-token")).expect("planned");
    let Op::Create(w) = &c.op else {
        panic!("a create: {:?}", c.op)
    };
    let fingerprint = &s.want("secret.hf-token").secret_fingerprints["HF_TOKEN"];
    assert_eq!(w.payload.body["data"], json!({ "HF_TOKEN": fingerprint }));
    assert!(!w.force, "nothing to take from anyone");
    assert_eq!(
        (c.namespace.as_deref(), c.reasons.len()),
        (Some(NAMESPACE), 0)
    );
    assert_eq!(
        plan.summary(),
        Summary {
            add: 1,
            ..Summary::default()
        }
    );
    let json = crate::plan::render_json(&plan);
    let text = crate::plan::render_text(&plan, Default::default());
    for shown in [&json, &text] {
        assert!(!shown.contains(TOKEN), "the value leaked:\n{shown}");
        assert!(!shown.contains("aGZfbmV2ZXJfc2hvd25f"), "its base64 leaked");
    }
    assert!(
        c.diff()
            .expect("a diff")
            .lines()
            .any(|l| l == "+  HF_TOKEN: (sensitive value)"),
        "{:?}",
        c.diff()
    );
}

#[test]
fn an_object_as_last_applied_is_a_no_op_and_the_plan_has_no_changes() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}"));
    s.applied("secret.hf-token");
    s.applied(SETTINGS);
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            ("secret.hf-token".to_string(), Action::NoOp),
            ("manifest.settings".to_string(), Action::NoOp),
        ]
    );
    assert!(
        plan.changes
            .iter()
            .all(|c| matches!(c.op, Op::NoOp(Keep::Current)))
    );
    assert_eq!(plan.summary(), Summary::default());
    assert_eq!((plan.has_changes(), plan.needs_approval()), (false, false));
    assert_eq!((plan.warnings.len(), plan.errors.len()), (0, 0));
}

#[test]
fn an_object_the_stack_changed_is_updated_over_the_version_the_plan_saw() {
    let mut s = Scenario::new(CONFIGMAP);
    let old = with(&s.stored(SETTINGS), "/data/mode", json!("slow"));
    s.record_older(SETTINGS, &old);
    let after = merged(&old, &s.want(SETTINGS).masked_body());
    s.sees(SETTINGS, Obj::live(old).owned().after(after));
    let c = s.change(SETTINGS);
    let Op::Update {
        write,
        seen,
        outside_diff,
    } = &c.op
    else {
        panic!("an update: {:?}", c.op)
    };
    assert_eq!(
        (seen.resource_version.as_str(), seen.uid.as_deref()),
        ("100", Some("uid-manifest.settings"))
    );
    assert_eq!(
        (write.force, outside_diff, &c.reasons),
        (false, &None, &vec![])
    );
    assert_eq!(
        write.diff.as_deref(),
        Some(
            "--- live\n+++ planned\n@@ -1,6 +1,6 @@\n apiVersion: v1\n data:\n-  mode: slow\n+  mode: fast\n kind: ConfigMap\n metadata:\n   annotations:\n"
        )
    );
}

#[test]
fn a_field_changed_outside_rayform_is_restored_and_the_change_is_shown() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    let edited = with(&stored, "/data/mode", json!("slow"));
    s.sees(SETTINGS, Obj::live(edited).owned().after(stored));
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Update);
    assert_eq!(c.reasons, ["changed outside rayform"]);
    let outside = c.outside_diff().expect("what changed outside");
    assert!(
        outside.starts_with("--- last applied by rayform\n+++ live\n"),
        "{outside}"
    );
    assert!(
        outside.lines().any(|l| l == "-  mode: fast")
            && outside.lines().any(|l| l == "+  mode: slow"),
        "{outside}"
    );
    assert!(!c.write().expect("a write").force);
}

#[test]
fn drift_on_a_field_rayform_wrote_is_taken_back_without_force_conflicts() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    let edited = with(&stored, "/data/mode", json!("slow"));
    let observed = Obj::live(edited)
        .owned()
        .after(stored)
        .conflicts(&[(".data.mode", "conflict with \"kubectl-edit\" using v1")]);
    s.sees(SETTINGS, observed);
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, None));
    assert!(
        c.write().expect("a write").force,
        "drift is restored by force"
    );
}

#[test]
fn an_object_deleted_outside_rayform_is_created_again() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    s.absent(SETTINGS);
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Create);
    assert_eq!(c.reasons, ["deleted outside rayform"]);
}

#[test]
fn an_object_right_in_the_cluster_but_stale_in_the_state_is_only_recorded() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record_older(SETTINGS, &stored);
    s.sees(SETTINGS, Obj::live(stored.clone()).owned().after(stored));
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    let Op::NoOp(Keep::Record {
        payload,
        outside_diff,
    }) = &c.op
    else {
        panic!("a record: {:?}", c.op)
    };
    assert_eq!(payload.desired_fingerprint, s.want(SETTINGS).fingerprint);
    assert_eq!((outside_diff, c.records_only()), (&None, true));
    assert_eq!((plan.has_changes(), plan.needs_approval()), (false, false));
}

#[test]
fn an_object_removed_from_the_stack_is_deleted_by_the_uid_the_plan_saw() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    s.sees(SETTINGS, Obj::live(live).owned());
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    let Op::Delete(seen) = &c.op else {
        panic!("a delete: {:?}", c.op)
    };
    assert_eq!(
        (seen.resource_version.as_str(), seen.uid.as_deref()),
        ("100", Some("uid-manifest.settings"))
    );
    assert_eq!(
        (c.api_version.as_str(), c.kind.as_str(), c.name.as_str()),
        ("v1", "ConfigMap", "settings")
    );
    assert_eq!(c.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        plan.summary(),
        Summary {
            destroy: 1,
            ..Summary::default()
        }
    );
}

#[test]
fn an_object_removed_from_the_stack_and_gone_from_the_cluster_is_forgotten() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    s.record_removed(CONFIGMAP, SETTINGS);
    s.sees(SETTINGS, Obj::absent());
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    assert_eq!((c.action(), c.reasons.len()), (Action::Forget, 0));
    assert_eq!(
        plan.summary(),
        Summary {
            forget: 1,
            ..Summary::default()
        }
    );
    // Nothing changes in the cluster, but the state stops tracking it: asked.
    assert_eq!((plan.has_changes(), plan.needs_approval()), (false, true));
}

#[test]
fn an_object_the_server_rejects_is_a_refused_create_and_a_plan_error() {
    let mut s = Scenario::new(CONFIGMAP);
    let rejected = "ConfigMap \"settings\" is invalid: data[mode]: Invalid value";
    s.sees(SETTINGS, Obj::absent().problem(rejected));
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    assert_eq!((c.action(), c.error()), (Action::Create, Some(rejected)));
    assert_eq!(plan.errors, [format!("{SETTINGS}: {rejected}")]);
    assert_eq!(
        plan.summary(),
        Summary {
            add: 1,
            ..Summary::default()
        },
        "counted as what it would have done"
    );
}

#[test]
fn an_existing_object_the_server_rejects_is_a_refused_update() {
    let mut s = Scenario::new(CONFIGMAP);
    let old = with(&s.stored(SETTINGS), "/data/mode", json!("slow"));
    s.record_older(SETTINGS, &old);
    let rejected = "admission webhook \"policy.example.com\" denied the request";
    s.sees(SETTINGS, Obj::live(old).owned().problem(rejected));
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, Some(rejected)));
    assert!(matches!(c.op, Op::Refused(_)));
}

#[test]
fn a_kind_the_cluster_does_not_serve_refuses_the_create_with_what_to_install() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}"));
    s.absent("secret.hf-token");
    let missing = missing_kind_message("ray.io/v1", "RayService");
    s.sees("rayservice.llm", Obj::absent().problem(&missing).gone());
    let plan = s.plan();
    let c = plan.change(&address("rayservice.llm")).expect("planned");
    assert_eq!(c.action(), Action::Create);
    assert_eq!(
        c.error(),
        Some(
            "the cluster does not serve ray.io/v1 RayService: the KubeRay CRDs are not installed\n  \
             help: install the KubeRay operator first (e.g. `helm install kuberay-operator kuberay/kuberay-operator`)"
        )
    );
    assert_eq!(plan.errors.len(), 1);
}

#[test]
fn a_removed_object_whose_kind_is_no_longer_served_is_forgotten() {
    let widget = "[manifest.w]\nobject = { apiVersion = \"example.com/v1\", kind = \"Widget\", spec = {} }\n";
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    s.record_removed(widget, "manifest.w");
    let missing = missing_kind_message("example.com/v1", "Widget");
    s.sees("manifest.w", Obj::absent().problem(&missing).gone());
    let c = s.change("manifest.w");
    assert_eq!(c.action(), Action::Forget);
    assert_eq!(
        c.reasons,
        [
            "the cluster does not serve example.com/v1 Widget: install the CRD or operator that provides it"
        ]
    );
}

#[test]
fn an_object_recorded_in_another_namespace_is_not_moved() {
    let mut s = Scenario::new(CONFIGMAP);
    let old = with(&s.stored(SETTINGS), "/metadata/namespace", json!("old-ns"));
    s.record(SETTINGS, &old);
    s.recorded(SETTINGS).namespace = Some("old-ns".into());
    s.sees(SETTINGS, Obj::live(old).owned());
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    assert_eq!(c.action(), Action::Create);
    assert_eq!(
        c.error(),
        Some(
            "ConfigMap `settings` lives in namespace `old-ns`, but the stack's namespace is now `serving`; moving it would leave the old one running unmanaged\n  \
             help: destroy the stack with its old namespace first, or change the namespace back"
        )
    );
    assert_eq!(plan.errors.len(), 1);
}

#[test]
fn a_bulk_change_not_dry_run_is_diffed_locally_and_says_so() {
    let mut s = Scenario::new(CONFIGMAP);
    let old = with(&s.stored(SETTINGS), "/data/mode", json!("slow"));
    s.record_older(SETTINGS, &old);
    let note = "not dry-run on the server: 60 objects may change (see --server-dry-run)";
    s.sees(SETTINGS, Obj::live(old).owned().local().note(note));
    let c = s.change(SETTINGS);
    assert_eq!(
        (c.action(), &c.reasons),
        (Action::Update, &vec![note.to_string()])
    );
    let diff = c.diff().expect("a local diff");
    assert!(
        diff.starts_with("--- live\n+++ planned (computed locally, no server dry run)\n"),
        "{diff}"
    );
    assert!(diff.lines().any(|l| l == "+  mode: fast"), "{diff}");
    assert!(!c.write().expect("a write").force);
}

#[test]
fn an_object_whose_namespace_comes_first_is_created_from_its_own_body() {
    let mut s = Scenario::new(CONFIGMAP);
    let note = "not dry-run: namespaces \"serving\" not found (yet)";
    s.sees(SETTINGS, Obj::absent().note(note));
    let c = s.change(SETTINGS);
    assert_eq!(
        (c.action(), &c.reasons),
        (Action::Create, &vec![note.to_string()])
    );
    assert!(
        c.diff()
            .expect("a diff")
            .lines()
            .any(|l| l == "+  mode: fast"),
        "{:?}",
        c.diff()
    );
}

#[test]
fn a_cluster_scoped_object_is_sent_without_a_namespace() {
    let mut s = Scenario::new(CLUSTER_ROLE);
    let after = without(&s.stored("manifest.reader"), "/metadata/namespace");
    s.sees(
        "manifest.reader",
        Obj::absent().cluster_scoped().after(after),
    );
    let c = s.change("manifest.reader");
    let body = &c.write().expect("a create").payload.body;
    assert_eq!((c.action(), c.namespace.as_deref()), (Action::Create, None));
    assert_eq!(body.pointer("/metadata/namespace"), None);
}

#[test]
fn a_new_rayservice_is_predicted_to_get_its_first_raycluster() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}"));
    s.absent("secret.hf-token");
    s.absent("rayservice.llm");
    let c = s.change("rayservice.llm");
    assert_eq!(
        c.write().expect("a create").rollout,
        Some(Assessment {
            rollout: Rollout::FirstCluster { gpus: 1 },
            kuberay_version: None,
            upgrade_in_progress: false,
        })
    );
}

#[test]
fn a_rayservice_whose_serve_config_alone_changed_is_updated_in_place() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}"));
    s.applied("secret.hf-token");
    let stored = s.stored("rayservice.llm");
    let old = with(&stored, "/spec/serveConfigV2", json!("applications: []\n"));
    s.record_older("rayservice.llm", &old);
    s.sees(
        "rayservice.llm",
        Obj::live(old).owned().after(stored).kuberay("v1.5.0"),
    );
    let c = s.change("rayservice.llm");
    assert_eq!(c.action(), Action::Update);
    assert_eq!(
        c.write().expect("an update").rollout,
        Some(Assessment {
            rollout: Rollout::InPlaceServe,
            kuberay_version: Some("v1.5.0".into()),
            upgrade_in_progress: false,
        })
    );
}

#[test]
fn without_a_state_the_lineage_and_secret_checksums_are_known_after_apply() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}"));
    s.state_new = true;
    s.absent("secret.hf-token");
    s.absent("rayservice.llm");
    let plan = s.plan();
    for c in &plan.changes {
        let diff = c.diff().expect("a diff");
        assert!(!diff.contains(LINEAGE), "{diff}");
        assert!(
            diff.lines()
                .any(|l| l == "+    rayform.io/lineage: (known after apply)"),
            "{diff}"
        );
    }
    let service = plan.change(&address("rayservice.llm")).expect("planned");
    let checksums: Vec<&str> = service
        .diff()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("rayform.io/secret-checksum"))
        .map(str::trim)
        .collect();
    // The head's pod template and the worker's: both roll when the Secret changes.
    assert_eq!(
        checksums,
        ["+            rayform.io/secret-checksum: (known after apply)".trim(); 2]
    );
}

#[test]
fn a_changed_secret_value_shows_as_changed_and_never_as_itself() {
    let mut s = Scenario::new(SECRET);
    let stored = s.stored("secret.hf-token");
    let old = with(&stored, "/data/HF_TOKEN", json!("hmac-sha256:0ld"));
    s.record_older("secret.hf-token", &old);
    s.sees("secret.hf-token", Obj::live(old).owned().after(stored));
    let c = s.change("secret.hf-token");
    assert_eq!(c.action(), Action::Update);
    let diff = c.diff().expect("a diff");
    assert!(
        diff.lines()
            .any(|l| l == "+  HF_TOKEN: (sensitive value changed)"),
        "{diff}"
    );
    assert!(!diff.contains("hmac-sha256"), "{diff}");
}

#[test]
fn a_rayservice_whose_secret_alone_changed_is_predicted_to_get_a_new_raycluster() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}"));
    s.applied("secret.hf-token");
    let stored = s.stored("rayservice.llm");
    let checksum = "/template/metadata/annotations/rayform.io~1secret-checksum";
    let config = "/spec/rayClusterConfig";
    let old = with(
        &with(
            &stored,
            &format!("{config}/headGroupSpec{checksum}"),
            json!("0000000000000000"),
        ),
        &format!("{config}/workerGroupSpecs/0{checksum}"),
        json!("0000000000000000"),
    );
    s.record_older("rayservice.llm", &old);
    s.sees(
        "rayservice.llm",
        Obj::live(old).owned().after(stored).kuberay("v1.5.0"),
    );
    let c = s.change("rayservice.llm");
    let rollout = c.write().and_then(|w| w.rollout.clone()).expect("assessed");
    assert_eq!(
        rollout.describe(),
        "KubeRay v1.5.0: new RayCluster (zero-downtime upgrade: 1 more GPU until promotion), because a referenced Secret changed"
    );
}

#[test]
fn destroy_deletes_an_object_whose_state_write_was_lost_by_its_label() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.sees(SETTINGS, Obj::live(stored).owned());
    s.options.destroy = true;
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    assert!(matches!(c.op, Op::Delete(_)), "{:?}", c.op);
    assert_eq!(
        (c.kind.as_str(), c.name.as_str(), c.namespace.as_deref()),
        ("ConfigMap", "settings", Some(NAMESPACE))
    );
}
