//! Reading Kubernetes Events: who said what about an object, and when.
//!
//! The wait's account of a pod (`pods`) and its complete account with `-v`
//! (`account`) both read the same Events: Karpenter's verdicts, the
//! kubelet's pulls and back-offs, KubeRay's own words. Events come from
//! several writers with different habits (three timestamps, two places for
//! the component), so the reading is done once, here.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;

/// The message of the newest event with this reason (from this component).
pub(super) fn latest(events: &[&Event], reason: &str, component: Option<&str>) -> Option<String> {
    latest_of(events, &[reason], component).and_then(|e| e.message.clone())
}

pub(super) fn latest_of<'e>(
    events: &[&'e Event],
    reasons: &[&str],
    component: Option<&str>,
) -> Option<&'e Event> {
    events
        .iter()
        .copied()
        .filter(|e| e.reason.as_deref().is_some_and(|r| reasons.contains(&r)))
        .filter(|e| component.is_none_or(|c| reported_by(e) == c))
        .max_by_key(|e| when(e))
}

pub(super) fn reported_by(e: &Event) -> &str {
    e.reporting_component
        .as_deref()
        .filter(|c| !c.is_empty())
        .or_else(|| e.source.as_ref().and_then(|s| s.component.as_deref()))
        .unwrap_or_default()
}

/// Events carry one of three timestamps, depending on who wrote them and how.
pub(super) fn when(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
}

/// Why the last pull failed: the kubelet's `Failed` events also include a
/// bare "Error: ErrImagePull" and "Error: ImagePullBackOff", which say less.
pub(super) fn pull_failure(events: &[&Event]) -> Option<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Failed to pull image"))
        })
        .max_by_key(|e| when(e))
        .and_then(|e| e.message.clone())
}

/// When the pull under way started: the time of a `Pulling` event with no
/// `Pulled` or `Failed` after it (the kubelet says `Pulling` again at each
/// retry, so the newest one is this attempt's). `None` when none is under way.
pub(super) fn pull_started(events: &[&Event]) -> Option<Option<Timestamp>> {
    let last = events
        .iter()
        .filter(|e| matches!(e.reason.as_deref(), Some("Pulling" | "Pulled" | "Failed")))
        .max_by_key(|e| when(e))?;
    (last.reason.as_deref() == Some("Pulling")).then(|| when(last))
}
