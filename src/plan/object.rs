//! An object's decision: create, update (with its diff, its conflicts and
//! what KubeRay will do with a RayService change), delete, keep, or refuse
//! (not rayform's, another stack's or lineage's, moved namespace), from the
//! desired object, the state's record and the live object.

use super::*;

/// What KubeRay will do with a RayService created or changed by this plan.
pub(super) fn assess_rollout(c: &Change, o: &ObservedObject) -> Option<rollout::Assessment> {
    if c.kind != "RayService" || !c.api_version.starts_with("ray.io/") {
        return None;
    }
    match &c.op {
        Op::Create(w) => Some(rollout::assess(
            None,
            o.after.as_ref().unwrap_or(&w.payload.body),
            None,
        )),
        Op::Update { write, .. } => {
            let planned = o.after.as_ref().unwrap_or(&write.payload.body);
            let live = o.live.as_ref()?;
            // Without a dry run, only the fields the stack sets are comparable.
            let live = match &o.after {
                Some(_) => live.clone(),
                None => desired::project(live, planned),
            };
            Some(rollout::assess(
                Some(rollout::Live {
                    spec: &live,
                    built_from: o.built_from.as_deref(),
                }),
                planned,
                o.kuberay_version.clone(),
            ))
        }
        _ => None,
    }
}

pub(super) fn plan_object(
    address: &Address,
    o: &ObservedObject,
    wanted: Option<&Desired>,
    rendered: Option<&Desired>,
    state: &State,
    options: &PlanOptions,
) -> Option<Change> {
    let st = state.resources.get(address);
    // What is no longer wanted is where the state recorded it, whatever the
    // stack now says (its namespace may have been edited since).
    let identity = match (wanted, st) {
        (None, Some(_)) => None,
        _ => rendered,
    };
    let mut c = object_change(address, o, identity, st)?;
    if let Some(problem) = &o.problem {
        return Some(unplannable(c, o, problem, wanted.is_some()));
    }
    if o.unlabelled == Some(Unlabelled::SameUid) {
        c.reasons.push(match st {
            Some(s) if s.desired_fingerprint.is_empty() => {
                "imported: rayform adds its labels".to_string()
            }
            _ => format!("its {LABEL_STACK} label was removed; the uid is the one rayform created"),
        });
    }
    let Some(Desired::Object(want)) = wanted else {
        return Some(removed(c, o, &state.stack));
    };
    let mut want = want.clone();
    if !o.namespaced {
        want.set_cluster_scoped();
    }
    if let Some(error) = moved_namespace(&c, st, o, &want) {
        c.op = Op::refused(Action::Create, error);
        return Some(c);
    }
    let payload = Payload {
        body: want.masked_body(),
        secret_fingerprints: want.secret_fingerprints.clone(),
        desired_fingerprint: want.fingerprint.clone(),
    };
    let (Some(live), Some(seen)) = (&o.live, seen(o)) else {
        return Some(to_create(c, o, st, payload));
    };
    if let Some(error) = not_ours(&c, o, address, state, options) {
        c.op = Op::refused(Action::Update, error);
        return Some(c);
    }
    if !o.owned {
        c.reasons
            .push("adopting an object rayform did not create".into());
    }
    if o.unchanged {
        // The live fields rayform writes are as the state recorded them (and
        // `live` may hold only the object's identity).
        return Some(c);
    }
    let found = Found { live, seen, st };
    Some(to_update(c, o, found, payload, options))
}

/// Without a state, its lineage and fingerprint key are made up for this
/// plan alone: shown as they are, the lineage annotation and the secret
/// checksums (keyed by that key) would differ on every plan. The apply makes
/// the real ones, so the plan says so, as Terraform does.
pub(super) fn unknown_until_applied(diff: &str, lineage: &str) -> String {
    let checksum = format!("{}: ", desired::ANNOTATION_SECRET_CHECKSUM);
    let mut out: String = diff
        .replace(lineage, "(known after apply)")
        .lines()
        .map(|line| match line.find(&checksum) {
            Some(at) => format!("{}(known after apply)", &line[..at + checksum.len()]),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    if diff.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The change's identity: what it is and where; nothing to do yet.
fn object_change(
    address: &Address,
    o: &ObservedObject,
    rendered: Option<&Desired>,
    st: Option<&ResourceState>,
) -> Option<Change> {
    let (api_version, kind, name) = match (rendered, st) {
        (Some(Desired::Object(d)), _) => (&d.api_version, &d.kind, &d.name),
        (_, Some(s)) => (&s.api_version, &s.kind, &s.name),
        _ => return None,
    };
    let mut c = Change::new(address, (api_version, kind, name), Op::NoOp(Keep::Current));
    if o.namespaced {
        c.namespace = match rendered {
            Some(Desired::Object(d)) => Some(d.namespace.clone()),
            _ => st.and_then(|s| s.namespace.clone()),
        };
    }
    Some(c)
}

/// The live object's version and uid, when there is one.
fn seen(o: &ObservedObject) -> Option<Seen> {
    let live = o.live.as_ref()?;
    Some(Seen {
        resource_version: resource_version(live),
        uid: live
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Observation found a problem: the change carries it as its error, unless
/// the object is gone with its API and has only to be forgotten.
fn unplannable(mut c: Change, o: &ObservedObject, problem: &str, wanted: bool) -> Change {
    if o.gone && !wanted {
        // Its API is gone (e.g. the operator was uninstalled), and so is the object.
        c.op = Op::Forget;
        c.reasons
            .push(problem.lines().next().unwrap_or_default().to_string());
        return c;
    }
    let action = match (wanted, &o.live) {
        // The server refused the new version of an object that exists:
        // an update that cannot be made, not a create.
        (true, Some(_)) => Action::Update,
        (true, None) => Action::Create,
        (false, _) => Action::Delete,
    };
    c.op = Op::refused(action, problem.to_string());
    c
}

/// Removed from the stack, or destroy: delete what is ours, leave the rest.
fn removed(mut c: Change, o: &ObservedObject, stack: &str) -> Change {
    let Some(seen) = seen(o) else {
        c.op = Op::Forget;
        return c;
    };
    c.op = match o.unlabelled {
        _ if o.owned => {
            let launched = crate::karpenter::nodes::Launched::of(&c.api_version, &c.kind);
            c.reasons
                .extend(launched.map(|l| l.plan_note().to_string()));
            Op::Delete(seen)
        }
        Some(Unlabelled::Unknown) => Op::refused(
            Action::Delete,
            format!(
                "{} `{}` is still there but lost its {LABEL_STACK} label, and this state (older than recorded uids) cannot prove it is the one rayform created; it is not forgotten while it runs\n  \
                 help: put the {LABEL_STACK} label back on it and run again, or delete it yourself",
                c.kind, c.name
            ),
        ),
        _ => {
            let other_stack = o
                .live
                .as_ref()
                .and_then(|live| desired::other_stack(live, stack));
            c.reasons.push(match (&o.other_lineage, other_stack) {
                (_, Some(other)) => {
                    format!("it belongs to rayform stack `{other}` now; left alone")
                }
                (Some(l), None) => {
                    format!("made by another state of this stack name (lineage {l}); left alone")
                }
                (None, None) => "not created by rayform; left alone".into(),
            });
            Op::Forget
        }
    };
    c
}

/// A namespaced object the state recorded in another namespace than the stack's.
fn moved_namespace(
    c: &Change,
    st: Option<&ResourceState>,
    o: &ObservedObject,
    want: &DesiredObject,
) -> Option<String> {
    let old = st.and_then(|s| s.namespace.as_deref())?;
    (o.namespaced && old != want.namespace).then(|| {
        format!(
            "{} `{}` lives in namespace `{old}`, but the stack's namespace is now `{}`; moving it would leave the old one running unmanaged\n  help: destroy the stack with its old namespace first, or change the namespace back",
            c.kind, c.name, want.namespace
        )
    })
}

fn to_create(
    mut c: Change,
    o: &ObservedObject,
    st: Option<&ResourceState>,
    payload: Payload,
) -> Change {
    if st.is_some() {
        c.reasons.push("deleted outside rayform".into());
    }
    if let Some(note) = &o.note {
        c.reasons.push(note.clone());
    }
    let diff = diff::unified(
        &Value::Null,
        o.after.as_ref().unwrap_or(&payload.body),
        Some(&payload.secret_fingerprints),
        Sides::LivePlanned,
    );
    c.op = Op::Create(Write::new(payload, diff, false));
    c
}

/// Why an existing object is not this state's to change, unless adopted.
fn not_ours(
    c: &Change,
    o: &ObservedObject,
    address: &Address,
    state: &State,
    options: &PlanOptions,
) -> Option<String> {
    if o.owned || options.adopt.contains(address) {
        return None;
    }
    let (kind, name) = (&c.kind, &c.name);
    let other_stack = o
        .live
        .as_ref()
        .and_then(|live| desired::other_stack(live, &state.stack));
    if let Some(other) = other_stack {
        return Some(format!(
            "{kind} `{name}` belongs to rayform stack `{other}` (label {LABEL_STACK}={other}), which declares it too\n  \
             help: change it through stack `{other}`, rename it in one of the stacks, or take it from stack `{other}` (which then no longer manages it): `rayform plan STACK --adopt {address}` shows what that changes"
        ));
    }
    Some(match &o.other_lineage {
        Some(l) => format!(
            "{kind} `{name}` was made by another rayform state of this stack name (lineage {l}; this state is {}), so it is not this state's to change\n  help: run with the state that made it, or take it over: `rayform plan STACK --adopt {address}` shows what that changes",
            state.lineage
        ),
        None => format!(
            "{kind} `{name}` already exists and was not created by rayform\n  help: rayform will not take it over unless told to: `rayform plan STACK --adopt {address}` shows what taking it changes"
        ),
    })
}

/// An existing object as observation found it, with its state entry.
struct Found<'a> {
    live: &'a Value,
    seen: Seen,
    st: Option<&'a ResourceState>,
}

/// An existing object of ours: what changed outside rayform, the diff to the
/// server's answer (or the local one), and fields other managers own.
fn to_update(
    mut c: Change,
    o: &ObservedObject,
    found: Found,
    payload: Payload,
    options: &PlanOptions,
) -> Change {
    let Found { live, seen, st } = found;
    let projection = desired::project(live, &payload.body);
    let live_fp = crate::util::sha256_json(&projection);
    let outside_diff = st
        .filter(|s| s.live_fingerprint != live_fp && !s.applied.is_null())
        .and_then(|s| {
            c.reasons.push("changed outside rayform".into());
            diff::unified(&s.applied.value(), &projection, None, Sides::AppliedLive)
        });
    let Some(after) = &o.after else {
        if let Some(note) = &o.note {
            c.reasons.push(note.clone());
        }
        // No server answer: the fields rayform writes, as they are and as they will be.
        let diff = o.local.then(|| {
            diff::unified(
                &projection,
                &payload.body,
                Some(&payload.secret_fingerprints),
                Sides::LiveDesired,
            )
        });
        let force = !o.owned;
        let write = Write::new(payload, diff.flatten(), force);
        c.op = Op::Update {
            write,
            seen,
            outside_diff,
        };
        return c;
    };
    let diff = diff::unified(
        live,
        after,
        Some(&payload.secret_fingerprints),
        Sides::LivePlanned,
    );
    let recorded = st.is_some_and(|s| {
        s.desired_fingerprint == payload.desired_fingerprint && s.live_fingerprint == live_fp
    });
    c.op = match (force_needed(o, st, options), diff) {
        (Err(error), diff) => Op::Refused(Refusal {
            action: if diff.is_some() {
                Action::Update
            } else {
                Action::NoOp
            },
            error,
            diff,
            outside_diff,
        }),
        (Ok(force), Some(diff)) => Op::Update {
            write: Write::new(payload, Some(diff), force),
            seen,
            outside_diff,
        },
        (Ok(_), None) if recorded => Op::NoOp(Keep::Current),
        (Ok(_), None) => Op::NoOp(Keep::Record {
            payload,
            outside_diff,
        }),
    };
    c
}

/// Whether apply must take fields from other managers. A field rayform
/// wrote before and someone else changed is drift: restoring it is the
/// point of apply. A field rayform never wrote is someone else's: taking it
/// needs --force-conflicts (or adoption, which takes the object whole).
fn force_needed(
    o: &ObservedObject,
    st: Option<&ResourceState>,
    options: &PlanOptions,
) -> Result<bool, String> {
    let adopting = !o.owned;
    if o.conflicts.is_empty() {
        return Ok(adopting);
    }
    let foreign: Vec<&(String, String)> = o
        .conflicts
        .iter()
        .filter(|(field, _)| st.is_none_or(|s| !field_in(&s.applied.value(), field)))
        .collect();
    if !foreign.is_empty() && !options.force_conflicts && !adopting {
        let list: Vec<String> = foreign.iter().map(|(f, m)| format!("{f} ({m})")).collect();
        return Err(format!(
            "applying would take fields owned by another field manager: {}\n  help: pass --force-conflicts to take them, or drop them from the stack",
            list.join(", ")
        ));
    }
    Ok(true)
}

/// Whether a conflict path from the server (`.spec.a.b[name="x"].c`,
/// `.metadata.labels.app.kubernetes.io/name`) lies in `applied`. Keys may
/// contain dots, so each step takes the longest key of `applied` that the
/// rest of the path starts with.
pub(super) fn field_in(applied: &Value, field: &str) -> bool {
    let mut cur = applied;
    let mut rest = field.strip_prefix('.').unwrap_or(field);
    while !rest.is_empty() {
        let Some(map) = cur.as_object() else {
            // A list or scalar rayform wrote whole: the path is inside it.
            return true;
        };
        let key = map
            .keys()
            .filter(|k| {
                rest.strip_prefix(k.as_str())
                    .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
            })
            .max_by_key(|k| k.len());
        let Some(key) = key else { return false };
        cur = &map[key];
        rest = &rest[key.len()..];
        if rest.starts_with('[') {
            return true;
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    true
}
