//! Snapshots of the plan as a person reads it (text, no colour) and as a
//! machine reads it (`--json`, also the saved-plan format), one scenario per
//! action. The expected output is kept in `src/plan/snapshots/`; a changed
//! rendering fails with a diff. To accept a change on purpose:
//!
//! ```text
//! RAYFORM_UPDATE_SNAPSHOTS=1 cargo test --lib plan::tests::render
//! git diff src/plan/snapshots    # review it like code
//! ```

use std::path::{Path, PathBuf};

use serde_json::json;

use super::builder::*;
use crate::plan::{RenderOptions, render_json, render_text};

/// Every scenario below, by the name of its snapshot files.
const SNAPSHOTS: [&str; 11] = [
    "create",
    "update",
    "no-changes",
    "no-op-kept",
    "record",
    "delete",
    "patch",
    "revert",
    "release",
    "forget",
    "refused",
];

fn snapshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan/snapshots")
}

/// Compares the plan's text and JSON with the snapshots `name`.txt/.json.
/// The temp dir the stack sits in and rayform's version are replaced by
/// placeholders, so a snapshot says only what the plan decided.
fn assert_snapshots(name: &str, s: &mut Scenario) {
    assert!(SNAPSHOTS.contains(&name), "{name} is listed in SNAPSHOTS");
    let plan = s.plan();
    let dir = s.dir();
    let text = render_text(&plan, RenderOptions { color: false }).replace(&dir, "$DIR");
    let version = format!("\"rayform_version\": \"{}\"", env!("CARGO_PKG_VERSION"));
    let json = render_json(&plan)
        .replace(&dir, "$DIR")
        .replace(&version, "\"rayform_version\": \"$VERSION\"");
    assert!(
        !text.contains(TOKEN) && !json.contains(TOKEN),
        "a secret leaked"
    );
    let failures: Vec<String> = [("txt", text), ("json", json + "\n")]
        .into_iter()
        .filter_map(|(ext, rendered)| compare(&format!("{name}.{ext}"), &rendered))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `None` when the snapshot matches (or was just written), else the diff.
fn compare(file: &str, rendered: &str) -> Option<String> {
    let path = snapshots().join(file);
    if std::env::var_os("RAYFORM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshots()).expect("the snapshot dir");
        std::fs::write(&path, rendered).expect("a snapshot written");
        return None;
    }
    let Ok(expected) = std::fs::read_to_string(&path) else {
        return Some(format!(
            "no snapshot {}: run with RAYFORM_UPDATE_SNAPSHOTS=1 and review the new file",
            path.display()
        ));
    };
    (expected != rendered).then(|| {
        let diff = similar::TextDiff::from_lines(&expected, rendered);
        format!(
            "{} differs (RAYFORM_UPDATE_SNAPSHOTS=1 accepts the new rendering):\n{}",
            path.display(),
            diff.unified_diff()
                .context_radius(3)
                .header("snapshot", "rendered")
        )
    })
}

#[test]
fn every_snapshot_file_belongs_to_a_scenario() {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(snapshots()).expect("the snapshot dir") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        let stem = name.rsplit_once('.').map_or(name.as_ref(), |(s, _)| s);
        if !SNAPSHOTS.contains(&stem) {
            stale.push(name.to_string());
        }
    }
    assert!(stale.is_empty(), "snapshots no test renders: {stale:?}");
}

#[test]
fn create_renders_the_new_objects_masked_with_the_rollout() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}{WAIT}"));
    s.absent("secret.hf-token");
    s.absent("rayservice.llm");
    assert_snapshots("create", &mut s);
}

#[test]
fn update_renders_what_changed_outside_rayform_and_the_diff() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored("manifest.settings");
    s.record("manifest.settings", &stored);
    let edited = with(&stored, "/data/mode", json!("slow"));
    s.sees("manifest.settings", Obj::live(edited).owned().after(stored));
    assert_snapshots("update", &mut s);
}

#[test]
fn no_changes_renders_one_line() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}"));
    s.applied("secret.hf-token");
    s.applied("manifest.settings");
    assert_snapshots("no-changes", &mut s);
}

#[test]
fn a_no_op_with_a_reason_renders_it() {
    let mut s = Scenario::new(NODEPOOL);
    s.observe_intent("nodepool.default", nodepool("3600s"));
    assert_snapshots("no-op-kept", &mut s);
}

#[test]
fn a_record_only_change_is_silent_in_text_and_flagged_in_json() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored("manifest.settings");
    s.record_older("manifest.settings", &stored);
    s.sees(
        "manifest.settings",
        Obj::live(stored.clone()).owned().after(stored),
    );
    assert_snapshots("record", &mut s);
}

#[test]
fn delete_renders_a_destroy_summary() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}"));
    for at in ["secret.hf-token", "manifest.settings"] {
        s.applied(at);
        let stored = s.stored(at);
        s.sees(at, Obj::live(stored).owned());
    }
    s.options.destroy = true;
    assert_snapshots("delete", &mut s);
}

#[test]
fn patch_renders_the_karpenter_diff_and_its_warning() {
    let mut s = Scenario::new(NODEPOOL);
    s.observe_intent("nodepool.default", nodepool("30s"));
    assert_snapshots("patch", &mut s);
}

#[test]
fn revert_renders_the_originals_coming_back() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched("nodepool.default", nodepool("30s"));
    s.options.destroy = true;
    s.observe_revert("nodepool.default", live, false);
    assert_snapshots("revert", &mut s);
}

#[test]
fn release_renders_who_still_holds_the_pool() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched("nodepool.default", nodepool("30s"));
    let shared = held_by(
        &live,
        "other",
        json!({ crate::karpenter::floor::AFTER: "600s" }),
    );
    s.options.destroy = true;
    s.observe_revert("nodepool.default", shared, false);
    assert_snapshots("release", &mut s);
}

#[test]
fn forget_renders_what_the_state_stops_tracking() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    s.record_removed(CONFIGMAP, "manifest.settings");
    s.sees("manifest.settings", Obj::absent());
    assert_snapshots("forget", &mut s);
}

#[test]
fn refused_renders_the_error_under_its_change_once() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = without(&s.stored("manifest.settings"), "/metadata/labels");
    let live = without(&live, "/metadata/annotations");
    s.sees("manifest.settings", Obj::live(live));
    assert_snapshots("refused", &mut s);
}
