//! The state file: what rayform last applied, so the next run can tell its
//! own changes from changes made outside it, and destroy can undo exactly.
//!
//! State holds fingerprints, never secret values. It is written atomically
//! (see [`store`]) under a lock (see [`lock`]); during an apply, each finished
//! resource adds a line to a journal instead (see [`journal`]).

pub mod journal;
pub mod lock;
pub mod store;

pub use crate::target::ClusterId;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stack::Address;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} state file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("state file {} is not valid: {message}\n  help: `rayform state restore STACK` puts back the state as it was before the last command that wrote it ({}); or move it away to start over (rayform will not adopt the objects it lists)", path.display(), store::backup_path(path).display())]
    Corrupt {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("state file {} has format_version {found}; this rayform reads {FORMAT_VERSION}", path.display())]
    Version {
        path: std::path::PathBuf,
        found: u32,
    },
    #[error("state is locked by {0}")]
    Locked(Box<lock::LockInfo>),
    #[error("lock ID `{given}` does not match the current lock `{actual}`")]
    WrongLockId { given: String, actual: String },
    #[error("the lock is held by a running process ({0}); stop it before force-unlocking")]
    HolderAlive(Box<lock::LockInfo>),
    #[error("no lock is held on {}", path.display())]
    NotLocked { path: std::path::PathBuf },
    #[error("the state does not track {}", .0.join(", "))]
    NotTracked(Vec<String>),
    #[error("the state already tracks {0}")]
    AlreadyTracked(String),
    #[error(
        "{from} and {to} are resources of different types; an entry can only move to another name of its type"
    )]
    OtherType { from: String, to: String },
    #[error(transparent)]
    Random(#[from] crate::util::NoRandom),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// Random at creation and never changed: tells apart two states of the same name.
    pub lineage: String,
    /// Bumped on every write; a saved plan records it to detect staleness.
    pub serial: u64,
    pub stack: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    /// Key for secret fingerprints, so a fingerprint seen elsewhere (a pod
    /// annotation) cannot be checked against guessed tokens without this file.
    pub fingerprint_key: String,
    #[serde(default)]
    pub resources: BTreeMap<Address, ResourceState>,
    /// Objects let go with `state rm` → their uid. They keep this stack's
    /// label, which would otherwise make a later run take them back (destroy
    /// deletes labelled objects the state missed after a crash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub released: BTreeMap<Address, String>,
}

impl State {
    /// Forgets `addresses` (all or none), returning what was recorded for each.
    pub fn forget(
        &mut self,
        addresses: &[Address],
    ) -> Result<Vec<(Address, ResourceState)>, StateError> {
        let missing: Vec<String> = addresses
            .iter()
            .filter(|a| !self.resources.contains_key(a))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            return Err(StateError::NotTracked(missing));
        }
        let removed: Vec<(Address, ResourceState)> = addresses
            .iter()
            .filter_map(|a| Some((a.clone(), self.resources.remove(a)?)))
            .collect();
        for (address, recorded) in &removed {
            if let Some(uid) = &recorded.uid {
                self.released.insert(address.clone(), uid.clone());
            }
        }
        Ok(removed)
    }

    /// Records what `from` tracks under `to` instead (after a rename in
    /// the stack), refusing to overwrite an entry or to change its type.
    pub fn rename(&mut self, from: &Address, to: &Address) -> Result<(), StateError> {
        if from.kind != to.kind {
            return Err(StateError::OtherType {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        if self.resources.contains_key(to) {
            return Err(StateError::AlreadyTracked(to.to_string()));
        }
        let recorded = self
            .resources
            .remove(from)
            .ok_or_else(|| StateError::NotTracked(vec![from.to_string()]))?;
        self.resources.insert(to.clone(), recorded);
        Ok(())
    }

    /// Whether `live` is an object let go with `state rm` (by uid: a new object
    /// of the same name is not).
    pub fn is_released(&self, address: &Address, live: &serde_json::Value) -> bool {
        let uid = live
            .pointer("/metadata/uid")
            .and_then(serde_json::Value::as_str);
        uid.is_some() && self.released.get(address).map(String::as_str) == uid
    }

    pub fn new(stack: &str) -> Result<State, StateError> {
        Ok(State {
            format_version: FORMAT_VERSION,
            lineage: crate::util::random_hex(16)?,
            serial: 0,
            stack: stack.to_string(),
            cluster: None,
            fingerprint_key: crate::util::random_hex(32)?,
            resources: BTreeMap::new(),
            released: BTreeMap::new(),
        })
    }
}

/// One resource as rayform last left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Fingerprint of the desired object (secret values as fingerprints).
    pub desired_fingerprint: String,
    /// Fingerprint of the live object's fields that rayform writes, right after it wrote them.
    pub live_fingerprint: String,
    /// Those fields themselves (secret data as fingerprints), to show what changed outside rayform.
    #[serde(default)]
    pub applied: Applied,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_fingerprints: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchState>,
}

/// The fields rayform wrote, as they read back, kept as compact JSON text
/// and parsed only when a plan shows what changed outside rayform: at a
/// thousand objects, a parsed tree for each was most of a plan's memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Applied(Box<serde_json::value::RawValue>);

impl Applied {
    pub fn new(value: &serde_json::Value) -> Applied {
        Applied(serde_json::value::to_raw_value(value).unwrap_or_else(|_| Applied::default().0))
    }

    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }
}

impl Default for Applied {
    fn default() -> Applied {
        Applied(serde_json::value::RawValue::NULL.to_owned())
    }
}

impl PartialEq for Applied {
    fn eq(&self, other: &Applied) -> bool {
        self.0.get() == other.0.get()
    }
}

/// The Karpenter fields a stack patched: what they were before and what it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchState {
    /// e.g. `karpenter.sh/v1`.
    pub api_version: String,
    /// JSON pointer (`/spec/disruption/consolidateAfter`) → values.
    pub fields: BTreeMap<String, PatchedField>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchedField {
    pub original: FieldValue,
    pub written: serde_json::Value,
}

/// A field's value, or the fact that it was not set (revert removes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldValue {
    Absent,
    Value(serde_json::Value),
}

impl FieldValue {
    pub fn from_option(v: Option<&serde_json::Value>) -> FieldValue {
        v.map_or(FieldValue::Absent, |v| FieldValue::Value(v.clone()))
    }

    pub fn as_option(&self) -> Option<&serde_json::Value> {
        match self {
            FieldValue::Absent => None,
            FieldValue::Value(v) => Some(v),
        }
    }

    pub fn display(&self) -> String {
        match self {
            FieldValue::Absent => "(absent)".into(),
            FieldValue::Value(v) => crate::util::compact_json(v),
        }
    }
}
