//! A Karpenter intent's decision: patch the pool or class, keep what is
//! already there (the floor is met, or a value set since meets it too),
//! revert what this stack wrote, or refuse with the reason; and the warnings
//! that go with a patch (changed outside rayform, drift off on old releases).

use super::*;

pub(super) fn plan_patch(
    address: &Address,
    o: &ObservedPatch,
    wanted: bool,
    state: &State,
    drift_off: bool,
    warnings: &mut Vec<String>,
) -> Option<Change> {
    let st = state.resources.get(address);
    let action = if wanted {
        Action::Patch
    } else {
        Action::Revert
    };
    // Forget is what is left when a revert finds nothing of ours to put back;
    // every other outcome replaces it below.
    let mut c = Change::new(address, (&o.api_version, &o.kind, &o.name), Op::Forget);
    if let Some(problem) = &o.problem {
        if o.gone && !wanted {
            // Nothing left to revert: say so, and let the rest of destroy go on.
            warnings.push(format!(
                "{address}: {problem}; nothing to revert, so it is dropped from the state"
            ));
        } else {
            c.op = Op::refused(action, problem.clone());
        }
        return Some(c);
    }
    if !o.changed_outside.is_empty() {
        c.op = Op::refused(action, changed_outside(&o.changed_outside));
        return Some(c);
    }
    let patch = o.patch.as_ref()?;
    let live = o.live.as_ref()?;
    if patch.needed || patch.fields.is_empty() {
        c.reasons.extend(o.notes.iter().cloned());
    }
    c.reasons.extend(o.kept.iter().cloned());
    if patch.needed {
        warnings.extend(o.warnings.iter().map(|w| format!("{address}: {w}")));
    }
    if !patch.needed {
        c.op = settled(st, patch, wanted);
        return Some(c);
    }
    if wanted
        && let Some(prev) = st.and_then(|s| s.patch.as_ref())
        && prev
            .fields
            .iter()
            .any(|(p, f)| live.pointer(p) != Some(&f.written))
    {
        c.reasons.push("changed outside rayform".into());
    }
    if o.kind == "EC2NodeClass" || o.kind == "AWSNodeTemplate" {
        warnings.push(format!(
            "{address}: {}",
            drift_warning(o, wanted, drift_off)
        ));
    }
    let edit = Edit {
        patch: patch.clone(),
        diff: o
            .after
            .as_ref()
            .and_then(|after| diff::unified(live, after, None, Sides::LivePlanned)),
        resource_version: resource_version(live),
    };
    if address.kind == ResourceType::Provisioner {
        c.reasons.insert(0, beside_reason(address, wanted));
    }
    c.op = if wanted {
        Op::Patch(edit)
    } else {
        Op::Revert(edit)
    };
    Some(c)
}

/// Why a Provisioner the stack does not declare is written to.
fn beside_reason(address: &Address, wanted: bool) -> String {
    let pool = address.declared();
    match wanted {
        true => format!(
            "beside the NodePool `{}`: Karpenter v0.32 launches from both, so {pool} holds for both",
            address.name
        ),
        false => format!("patched beside the NodePool `{}` for {pool}", address.name),
    }
}

/// Nothing to write: for a revert, nothing of ours is left on the object, so
/// it is forgotten; for a patch, it is as the stack wants, and recorded if
/// the state does not say so already.
fn settled(st: Option<&ResourceState>, patch: &karpenter::KarpenterPatch, wanted: bool) -> Op {
    if !wanted {
        return Op::Forget;
    }
    let recorded = st.and_then(|s| s.patch.as_ref()).map(|p| &p.fields);
    Op::NoOp(if recorded == Some(&patch.fields) {
        Keep::Current
    } else {
        Keep::RecordPatch(patch.clone())
    })
}

/// Every object the API server returns has a resourceVersion; an empty one
/// here would only make a saved plan stale, never apply it over a change.
pub(super) fn resource_version(live: &Value) -> String {
    live.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Fields a revert finds changed since rayform wrote them, with what to do.
fn changed_outside(fields: &[karpenter::ChangedField]) -> String {
    let lines: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{} changed since rayform wrote it: recorded original {}, written {}, live {}",
                karpenter::field_name(&f.pointer),
                f.recorded.display(),
                crate::util::compact_json(&f.written),
                f.live.display()
            )
        })
        .collect();
    format!(
        "{}\n  help: revert it by hand, or pass --force to restore the recorded original anyway",
        lines.join("\n  ")
    )
}

/// What a changed node class does to running nodes, by Karpenter generation.
fn drift_warning(o: &ObservedPatch, wanted: bool, drift_off: bool) -> String {
    let verb = if wanted { "patching" } else { "reverting" };
    if drift_off {
        format!(
            "{verb} blockDeviceMappings of {} `{}` reaches new nodes only: Karpenter up to v0.32 (this cluster serves karpenter.sh/v1alpha5) has drift off by default, so running nodes keep their disk until they are replaced",
            o.kind, o.name
        )
    } else {
        format!(
            "{verb} blockDeviceMappings of {} `{}` makes Karpenter treat the nodes launched from it as drifted and replace them (as disruption budgets allow)",
            o.kind, o.name
        )
    }
}
