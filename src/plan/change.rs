//! One resource's decided change, as a type that holds exactly what its
//! action needs: a create carries the body to send, a delete the uid it saw,
//! a patch its merge patch, a refused change its error. Apply matches on the
//! action and cannot meet a create without a body or a patch without fields.
//!
//! Saved plans and `--json` keep their flat shape (one object per change with
//! an `action` field): [`wire::Record`] is that shape, and reading a saved
//! plan turns it back into a [`Change`], refusing records that are not whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rollout;
use crate::karpenter::KarpenterPatch;
use crate::stack::Address;
use crate::stack::serving::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    NoOp,
    Delete,
    Patch,
    Revert,
    Wait,
    /// In state but gone from both the stack and the cluster: drop from state.
    Forget,
}

impl Action {
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Action::Create | Action::Update | Action::Delete | Action::Patch | Action::Revert
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "wire::Record", try_from = "wire::Record")]
pub struct Change {
    pub address: Address,
    /// The object's identity; empty for a wait, which is no object.
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// Why this action, beyond the obvious ("changed outside rayform", "adopting").
    pub reasons: Vec<String>,
    /// Resources in this plan that must finish first.
    pub depends_on: Vec<Address>,
    pub op: Op,
}

/// What apply does, with the data it does it with.
#[derive(Debug, Clone)]
pub enum Op {
    /// Server-side apply of an object that does not exist yet.
    Create(Write),
    /// Server-side apply over the object as the plan saw it.
    Update {
        write: Write,
        seen: Seen,
        /// What changed outside rayform since it last wrote the object.
        outside_diff: Option<String>,
    },
    NoOp(Keep),
    Delete(Seen),
    /// Merge-patch the Karpenter fields the stack wants.
    Patch(Edit),
    /// Put the Karpenter fields back to the originals rayform recorded.
    Revert(Edit),
    /// The readiness node.
    Wait(Target),
    /// Drop from the state; nothing in the cluster is touched.
    Forget,
    /// Decided, but not to be carried out: the plan has an error here, so it
    /// is neither applied nor saved.
    Refused(Refusal),
}

/// An object body to send by server-side apply.
#[derive(Debug, Clone)]
pub struct Write {
    pub payload: Payload,
    /// Unified YAML diff, live → planned; secret values masked.
    pub diff: Option<String>,
    /// Take fields from other managers (drift correction, adoption, --force-conflicts).
    pub force: bool,
    /// For a RayService: what KubeRay will do with the change.
    pub rollout: Option<rollout::Assessment>,
}

/// The body as planned, and what the state records of it.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Secret data as fingerprints: values are re-read at apply.
    pub body: Value,
    pub secret_fingerprints: BTreeMap<String, String>,
    pub desired_fingerprint: String,
}

/// The live object the plan saw; a saved plan is stale once it moves.
#[derive(Debug, Clone)]
pub struct Seen {
    pub resource_version: String,
    pub uid: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Keep {
    /// The cluster and the state both match the stack.
    Current,
    /// The object is right, the state's record of it is missing or stale
    /// (perhaps because it was changed outside rayform and back, or by
    /// defaults the server fills in).
    Record {
        payload: Payload,
        /// What changed outside rayform since it last wrote the object.
        outside_diff: Option<String>,
    },
    /// The Karpenter fields are right, the state's record of them is not.
    RecordPatch(KarpenterPatch),
}

#[derive(Debug, Clone)]
pub struct Edit {
    pub patch: KarpenterPatch,
    pub diff: Option<String>,
    /// resourceVersion of the object the patch was computed from.
    pub resource_version: String,
}

#[derive(Debug, Clone)]
pub struct Refusal {
    /// What would have been done.
    pub action: Action,
    pub error: String,
    pub diff: Option<String>,
    pub outside_diff: Option<String>,
}

impl Write {
    pub fn new(payload: Payload, diff: Option<String>, force: bool) -> Write {
        Write {
            payload,
            diff,
            force,
            rollout: None,
        }
    }
}

impl Op {
    pub fn refused(action: Action, error: String) -> Op {
        Op::Refused(Refusal {
            action,
            error,
            diff: None,
            outside_diff: None,
        })
    }
}

impl Change {
    pub fn new(address: &Address, (api_version, kind, name): (&str, &str, &str), op: Op) -> Change {
        Change {
            address: address.clone(),
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            namespace: None,
            reasons: Vec::new(),
            depends_on: Vec::new(),
            op,
        }
    }

    pub fn action(&self) -> Action {
        match &self.op {
            Op::Create(_) => Action::Create,
            Op::Update { .. } => Action::Update,
            Op::NoOp(_) => Action::NoOp,
            Op::Delete(_) => Action::Delete,
            Op::Patch(_) => Action::Patch,
            Op::Revert(_) => Action::Revert,
            Op::Wait(_) => Action::Wait,
            Op::Forget => Action::Forget,
            Op::Refused(r) => r.action,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match &self.op {
            Op::Refused(r) => Some(&r.error),
            _ => None,
        }
    }

    /// For a revert that only releases this stack's hold on a Karpenter
    /// object: the stacks that still hold it ("a, b").
    pub fn released_to(&self) -> Option<String> {
        match &self.op {
            Op::Revert(e) if !e.patch.held_by.is_empty() => Some(
                e.patch
                    .held_by
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            _ => None,
        }
    }

    /// The body a create or update sends.
    pub fn write(&self) -> Option<&Write> {
        match &self.op {
            Op::Create(w) | Op::Update { write: w, .. } => Some(w),
            _ => None,
        }
    }

    pub fn write_mut(&mut self) -> Option<&mut Write> {
        match &mut self.op {
            Op::Create(w) | Op::Update { write: w, .. } => Some(w),
            _ => None,
        }
    }

    /// The diff to show, live → planned.
    pub fn diff(&self) -> Option<&str> {
        match &self.op {
            Op::Create(w) | Op::Update { write: w, .. } => w.diff.as_deref(),
            Op::Patch(e) | Op::Revert(e) => e.diff.as_deref(),
            Op::Refused(r) => r.diff.as_deref(),
            _ => None,
        }
    }

    pub fn diff_mut(&mut self) -> Option<&mut String> {
        match &mut self.op {
            Op::Create(w) | Op::Update { write: w, .. } => w.diff.as_mut(),
            Op::Patch(e) | Op::Revert(e) => e.diff.as_mut(),
            Op::Refused(r) => r.diff.as_mut(),
            _ => None,
        }
    }

    pub fn outside_diff(&self) -> Option<&str> {
        match &self.op {
            Op::Update { outside_diff, .. } | Op::NoOp(Keep::Record { outside_diff, .. }) => {
                outside_diff.as_deref()
            }
            Op::Refused(r) => r.outside_diff.as_deref(),
            _ => None,
        }
    }

    /// The live `resourceVersion` the change was planned against; `None`
    /// for an object the plan saw absent.
    pub fn seen_version(&self) -> Option<&str> {
        match &self.op {
            Op::Update { seen, .. } | Op::Delete(seen) => Some(&seen.resource_version),
            Op::Patch(e) | Op::Revert(e) => Some(&e.resource_version),
            _ => None,
        }
    }

    /// Apply only rewrites the state here: nothing is sent to the cluster.
    pub fn records_only(&self) -> bool {
        matches!(
            self.op,
            Op::NoOp(Keep::Record { .. } | Keep::RecordPatch(_)) | Op::Forget
        )
    }
}

/// The flat record a saved plan and `--json` hold for each change.
pub mod wire;

pub use wire::check_links;
