//! The flat shape saved plans and `--json` keep (one record per change with
//! an `action` field), and reading it back: a record becomes a [`Change`]
//! only if it holds what its action needs, and a saved plan's changes must
//! hold together ([`check_links`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub address: Option<Address>,
    pub action: Option<Action>,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_diff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_fingerprints: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_fingerprint: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<KarpenterPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Assessment>,
    #[serde(default)]
    pub refresh_state: bool,
    #[serde(default)]
    pub depends_on: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Change> for Record {
    fn from(c: Change) -> Record {
        let mut r = Record {
            action: Some(c.action()),
            api_version: c.api_version,
            kind: c.kind,
            name: c.name,
            namespace: c.namespace,
            reasons: c.reasons,
            depends_on: c.depends_on,
            ..Record::default()
        };
        match c.op {
            Op::Create(w) => r.put_write(w),
            Op::Update {
                write,
                seen,
                outside_diff,
            } => {
                r.put_write(write);
                r.put_seen(seen);
                r.outside_diff = outside_diff;
            }
            Op::NoOp(Keep::Current) | Op::Forget => {}
            Op::NoOp(Keep::Record {
                payload,
                outside_diff,
            }) => {
                r.refresh_state = true;
                r.put_payload(payload);
                r.outside_diff = outside_diff;
            }
            Op::NoOp(Keep::RecordPatch(p)) => {
                r.refresh_state = true;
                r.patch = Some(p);
            }
            Op::Delete(seen) => r.put_seen(seen),
            Op::Patch(e) | Op::Revert(e) => {
                r.patch = Some(e.patch);
                r.diff = e.diff;
                r.live_resource_version = Some(e.resource_version);
            }
            Op::Wait(t) => r.wait = Some(t),
            Op::Refused(f) => {
                r.error = Some(f.error);
                r.diff = f.diff;
                r.outside_diff = f.outside_diff;
            }
        }
        r.address = Some(c.address);
        r
    }
}

impl Record {
    fn put_write(&mut self, w: Write) {
        self.put_payload(w.payload);
        self.diff = w.diff;
        self.force = w.force;
        self.rollout = w.rollout;
    }

    fn put_payload(&mut self, p: Payload) {
        self.body = Some(p.body);
        self.secret_fingerprints = p.secret_fingerprints;
        self.desired_fingerprint = Some(p.desired_fingerprint);
    }

    fn put_seen(&mut self, seen: Seen) {
        self.live_resource_version = Some(seen.resource_version);
        self.live_uid = seen.uid;
    }

    fn take_payload(&mut self) -> Option<Payload> {
        Some(Payload {
            body: self.body.take()?,
            secret_fingerprints: std::mem::take(&mut self.secret_fingerprints),
            desired_fingerprint: self.desired_fingerprint.take()?,
        })
    }

    fn take_write(&mut self) -> Option<Write> {
        Some(Write {
            payload: self.take_payload()?,
            diff: self.diff.take(),
            force: self.force,
            rollout: self.rollout.take(),
        })
    }

    fn take_seen(&mut self) -> Option<Seen> {
        Some(Seen {
            resource_version: self.live_resource_version.take()?,
            uid: self.live_uid.take(),
        })
    }
}

impl TryFrom<Record> for Change {
    type Error = String;

    // Long on purpose: each action's required fields checked in one
    // place, so a saved plan missing one is refused with its name.
    fn try_from(mut r: Record) -> Result<Change, String> {
        let address = r.address.take().ok_or("a change without an address")?;
        let action = r.action.ok_or_else(|| format!("{address}: no action"))?;
        let name = serde_json::to_value(action).unwrap_or_default();
        let name = name.as_str().unwrap_or_default().to_string();
        let missing = |what: &str| format!("{address}: a {name} change without {what}");
        // Apply edits these as objects (secret values go into the body,
        // a precondition into the patch): anything else is refused here,
        // before a single request.
        let bent = [
            ("body", r.body.as_ref()),
            ("patch", r.patch.as_ref().map(|p| &p.merge)),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_object()));
        if let Some((what, _)) = bent {
            return Err(format!(
                "{address}: a {name} change whose {what} is not an object"
            ));
        }
        if let Some(body) = &r.body {
            let says = |field: &str| body.pointer(field).and_then(Value::as_str);
            let (api_version, kind) = (says("/apiVersion"), says("/kind"));
            let object = says("/metadata/name");
            if (api_version, kind, object)
                != (Some(&*r.api_version), Some(&*r.kind), Some(&*r.name))
            {
                return Err(format!(
                    "{address}: a {name} change whose body is not the {} {} `{}` it names",
                    r.api_version, r.kind, r.name
                ));
            }
        }
        let op = match (action, r.error.take()) {
            (action, Some(error)) => Op::Refused(Refusal {
                action,
                error,
                diff: r.diff.take(),
                outside_diff: r.outside_diff.take(),
            }),
            (Action::Create, None) => Op::Create(r.take_write().ok_or_else(|| missing("a body"))?),
            (Action::Update, None) => Op::Update {
                write: r.take_write().ok_or_else(|| missing("a body"))?,
                seen: r
                    .take_seen()
                    .ok_or_else(|| missing("the resourceVersion it saw"))?,
                outside_diff: r.outside_diff.take(),
            },
            (Action::NoOp, None) => Op::NoOp(match (r.refresh_state, r.patch.take()) {
                (false, _) => Keep::Current,
                (true, Some(p)) => Keep::RecordPatch(p),
                (true, None) => Keep::Record {
                    payload: r.take_payload().ok_or_else(|| missing("a body"))?,
                    outside_diff: r.outside_diff.take(),
                },
            }),
            (Action::Delete, None) => Op::Delete(
                r.take_seen()
                    .ok_or_else(|| missing("the resourceVersion it saw"))?,
            ),
            (Action::Patch | Action::Revert, None) => {
                let edit = Edit {
                    patch: r.patch.take().ok_or_else(|| missing("a patch"))?,
                    diff: r.diff.take(),
                    resource_version: r
                        .live_resource_version
                        .take()
                        .ok_or_else(|| missing("the resourceVersion it saw"))?,
                };
                if action == Action::Patch {
                    Op::Patch(edit)
                } else {
                    Op::Revert(edit)
                }
            }
            (Action::Wait, None) => Op::Wait(r.wait.take().ok_or_else(|| missing("a target"))?),
            (Action::Forget, None) => Op::Forget,
        };
        Ok(Change {
            address,
            api_version: r.api_version,
            kind: r.kind,
            name: r.name,
            namespace: r.namespace,
            reasons: r.reasons,
            depends_on: r.depends_on,
            op,
        })
    }
}

/// What reading a saved plan checks beyond each change's own shape: one
/// change per address, and dependencies that name other changes of the
/// plan without coming back round. Apply would otherwise carry out the
/// changes that depend on nothing and then stop, part way through.
pub fn check_links(changes: &[Change]) -> Result<(), String> {
    let mut waiting: BTreeMap<&Address, usize> = BTreeMap::new();
    for c in changes {
        if waiting.insert(&c.address, c.depends_on.len()).is_some() {
            return Err(format!("{}: two changes for one address", c.address));
        }
    }
    let mut dependents: BTreeMap<&Address, Vec<&Address>> = BTreeMap::new();
    for c in changes {
        for d in &c.depends_on {
            if !waiting.contains_key(d) || d == &c.address {
                return Err(format!(
                    "{}: depends on {d}, which is not another change of the plan",
                    c.address
                ));
            }
            dependents.entry(d).or_default().push(&c.address);
        }
    }
    // Kahn's algorithm: what is never ready waits on a cycle.
    let mut ready: Vec<&Address> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(a, _)| *a)
        .collect();
    while let Some(done) = ready.pop() {
        for d in dependents.get(done).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    ready.push(d);
                }
            }
        }
    }
    let stuck: Vec<String> = waiting
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(a, _)| a.to_string())
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} depend on each other in a cycle",
            stuck.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::ResourceType;
    use serde_json::json;

    fn change(op: Op) -> Change {
        let address = Address::new(ResourceType::Secret, "hf-token");
        Change::new(&address, ("v1", "Secret", "hf-token"), op)
    }

    fn payload() -> Payload {
        Payload {
            body: json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
                "data": {"t": "sha256:ab"},
            }),
            secret_fingerprints: BTreeMap::from([("t".to_string(), "sha256:ab".to_string())]),
            desired_fingerprint: "sha256:cd".into(),
        }
    }

    fn seen() -> Seen {
        Seen {
            resource_version: "42".into(),
            uid: Some("u-1".into()),
        }
    }

    fn patch() -> KarpenterPatch {
        KarpenterPatch {
            held_by: Vec::new(),
            merge: json!({"spec": {"weight": 5}}),
            fields: BTreeMap::new(),
            expect: BTreeMap::from([("/spec/weight".to_string(), Some(json!(5)))]),
            needed: true,
            basis: String::new(),
        }
    }

    fn edit() -> Edit {
        Edit {
            patch: patch(),
            diff: Some("~ weight".into()),
            resource_version: "7".into(),
        }
    }

    fn write() -> Write {
        Write {
            payload: payload(),
            diff: Some("+ a".into()),
            force: true,
            rollout: None,
        }
    }

    #[test]
    fn every_action_reads_back_as_it_was_saved() {
        let ops = vec![
            Op::Create(write()),
            Op::Update {
                write: write(),
                seen: seen(),
                outside_diff: Some("- b".into()),
            },
            Op::NoOp(Keep::Current),
            Op::NoOp(Keep::Record {
                payload: payload(),
                outside_diff: Some("- c".into()),
            }),
            Op::NoOp(Keep::RecordPatch(patch())),
            Op::Patch(edit()),
            Op::Revert(edit()),
            Op::Create(Write {
                rollout: Some(rollout::assess(None, &json!({"spec": {}}), None)),
                ..write()
            }),
            Op::Delete(seen()),
            Op::Forget,
            Op::refused(Action::Update, "taken by kubectl".into()),
        ];
        for op in ops {
            let saved = serde_json::to_value(change(op)).unwrap();
            let read: Change = serde_json::from_value(saved.clone()).unwrap();
            assert_eq!(serde_json::to_value(&read).unwrap(), saved);
        }
    }

    #[test]
    fn the_saved_form_is_flat_with_an_action_field() {
        let saved = serde_json::to_value(change(Op::Delete(seen()))).unwrap();
        assert_eq!(saved["action"], "delete");
        assert_eq!(saved["live_resource_version"], "42");
        assert_eq!(saved["live_uid"], "u-1");
        let refused = serde_json::to_value(change(Op::refused(Action::Create, "no".into())));
        let refused = refused.unwrap();
        assert_eq!(
            (&refused["action"], &refused["error"]),
            (&json!("create"), &json!("no"))
        );
    }

    #[test]
    fn a_saved_change_missing_what_its_action_needs_is_refused() {
        let mut create = serde_json::to_value(change(Op::Create(write()))).unwrap();
        create.as_object_mut().unwrap().remove("body");
        let err = serde_json::from_value::<Change>(create).unwrap_err();
        assert!(
            err.to_string()
                .contains("secret.hf-token: a create change without a body"),
            "{err}"
        );
        let mut delete = serde_json::to_value(change(Op::Delete(seen()))).unwrap();
        delete
            .as_object_mut()
            .unwrap()
            .remove("live_resource_version");
        let err = serde_json::from_value::<Change>(delete).unwrap_err();
        assert!(
            err.to_string()
                .contains("without the resourceVersion it saw")
        );
        let wait = json!({"address": "wait.serving", "action": "wait"});
        assert!(serde_json::from_value::<Change>(wait).is_err());
    }

    #[test]
    fn a_saved_body_or_patch_that_is_not_an_object_is_refused() {
        for bad in [json!(5), json!("text"), json!([1]), json!(true)] {
            let mut create = serde_json::to_value(change(Op::Create(write()))).unwrap();
            create["body"] = bad.clone();
            let err = serde_json::from_value::<Change>(create).unwrap_err();
            assert!(
                err.to_string()
                    .contains("secret.hf-token: a create change whose body is not an object"),
                "{bad}: {err}"
            );
            let mut patch = serde_json::to_value(change(Op::Patch(edit()))).unwrap();
            patch["patch"]["merge"] = bad.clone();
            let err = serde_json::from_value::<Change>(patch).unwrap_err();
            assert!(
                err.to_string()
                    .contains("a patch change whose patch is not an object"),
                "{bad}: {err}"
            );
        }
    }
}

#[cfg(test)]
mod links {
    use super::*;
    use crate::stack::ResourceType;

    fn change(name: &str, after: &[&str]) -> Change {
        let mut c = Change::new(
            &Address::new(ResourceType::Manifest, name),
            ("v1", "ConfigMap", name),
            Op::Forget,
        );
        c.depends_on = after
            .iter()
            .map(|a| Address::new(ResourceType::Manifest, *a))
            .collect();
        c
    }

    #[test]
    fn a_saved_body_that_is_another_object_is_refused() {
        let mut saved = serde_json::to_value(Change {
            op: Op::Create(Write::new(
                Payload {
                    body: serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
                    }),
                    secret_fingerprints: BTreeMap::new(),
                    desired_fingerprint: "sha256:d".into(),
                },
                None,
                false,
            )),
            ..change("a", &[])
        })
        .unwrap();
        assert!(serde_json::from_value::<Change>(saved.clone()).is_ok());
        for (pointer, other) in [("/metadata/name", "b"), ("/kind", "Secret")] {
            let mut bent = saved.clone();
            *bent.pointer_mut(&format!("/body{pointer}")).unwrap() = other.into();
            let err = serde_json::from_value::<Change>(bent).unwrap_err();
            assert!(
                err.to_string().contains(
                    "manifest.a: a create change whose body is not the v1 ConfigMap `a` it names"
                ),
                "{err}"
            );
        }
        saved["body"]["metadata"] = serde_json::json!({});
        assert!(serde_json::from_value::<Change>(saved).is_err());
    }

    #[test]
    fn dependencies_name_other_changes_of_the_plan_without_a_cycle() {
        let whole = [
            change("a", &[]),
            change("b", &["a"]),
            change("c", &["a", "b"]),
        ];
        assert_eq!(check_links(&whole), Ok(()));
        let refused = [
            (
                vec![change("a", &[]), change("b", &["nope"])],
                "manifest.b: depends on manifest.nope, which is not another change of the plan",
            ),
            (
                vec![change("a", &["a"])],
                "manifest.a: depends on manifest.a, which is not another change",
            ),
            (
                vec![change("a", &[]), change("a", &[])],
                "manifest.a: two changes for one address",
            ),
            (
                vec![
                    change("a", &["c"]),
                    change("b", &["a"]),
                    change("c", &["b"]),
                    change("d", &[]),
                ],
                "manifest.a, manifest.b, manifest.c depend on each other in a cycle",
            ),
        ];
        for (changes, said) in refused {
            let err = check_links(&changes).unwrap_err();
            assert!(err.contains(said), "{err}");
        }
    }
}
