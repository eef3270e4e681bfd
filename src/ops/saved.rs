//! Saved plans (`plan --out`, then `apply FILE`): exactly what was reviewed
//! is applied, or nothing is. A saved plan is refused if another rayform
//! wrote its format, if its state moved on since, or if what it was computed
//! from changed in the cluster.

use std::path::{Path, PathBuf};

use super::{Held, Notes, OpsError};
use crate::apply::{self, ApplyError, SecretValues};
use crate::backend::Backend;
use crate::cluster::ConnectOptions;
use crate::plan::{self, Plan};
use crate::stack::{self, StateLocation, StateOverride};

#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("cannot read plan file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write plan file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a rayform plan: {why}", path.display())]
    NotAPlan { path: PathBuf, why: String },
    #[error("{} has plan format {found}; this rayform reads {}", path.display(), plan::FORMAT_VERSION)]
    Format { path: PathBuf, found: String },
    #[error("{} is a plan with errors; it cannot be applied", path.display())]
    HasErrors { path: PathBuf },
    #[error(
        "the state {} was made from is gone from {location}\n  help: create it again with `rayform init STACK`, then make the plan again with `rayform plan STACK --out {}`",
        path.display(), path.display()
    )]
    StateGone {
        path: PathBuf,
        location: StateLocation,
    },
    #[error(
        "the saved plan is stale: {why}; nothing was changed\n  help: make it again with `rayform plan STACK --out {}`, and review it before applying it",
        path.display()
    )]
    Stale { path: PathBuf, why: String },
}

/// A plan saved with `plan --out`, refused if another rayform wrote its format.
pub fn read_plan(path: &Path) -> Result<Plan, PlanFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanFileError::Read {
        path: path.into(),
        source,
    })?;
    let not_a_plan = |why: String| PlanFileError::NotAPlan {
        path: path.into(),
        why,
    };
    let plan: Plan = serde_json::from_str(&text).map_err(|e| not_a_plan(e.to_string()))?;
    plan.check_saved().map_err(not_a_plan)?;
    if plan.format_version != plan::FORMAT_VERSION {
        return Err(PlanFileError::Format {
            path: path.into(),
            found: plan.format_version,
        });
    }
    Ok(plan)
}

/// Writes `plan` (fingerprints, never values; masked all the same, as
/// everything rayform writes out) by a rename, so a reader never sees half.
pub fn save_plan(plan: &Plan, path: &Path, notes: &dyn Notes) -> Result<(), PlanFileError> {
    let write = |source| PlanFileError::Write {
        path: path.into(),
        source,
    };
    let json = serde_json::to_string_pretty(plan).map_err(|e| write(e.into()))?;
    let text = notes.redact(&json);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(write)?;
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}

/// Everything `apply FILE` needs before it changes anything: the state the
/// plan was made from under its lock, the secret values it pins by
/// fingerprint (read again from where the stack says), and the check that
/// nothing it was computed from has moved.
pub async fn saved_session(
    path: &Path,
    plan: &Plan,
    location: &StateLocation,
    connect: &ConnectOptions,
    notes: &dyn Notes,
) -> Result<(Held, SecretValues), OpsError> {
    let cluster = super::connect(connect).await?;
    let backend = Backend::open(location, Some(&cluster))?;
    let lock = super::lock(&backend, "apply", notes).await?;
    // `plan --out` needs a state (made by `init`), so a missing one was removed since.
    let Some(state) = super::read_state(&backend, notes).await? else {
        return Err(PlanFileError::StateGone {
            path: path.into(),
            location: location.clone(),
        }
        .into());
    };
    if !plan.errors.is_empty() || plan.changes.iter().any(|c| c.error().is_some()) {
        return Err(PlanFileError::HasErrors { path: path.into() }.into());
    }
    let secrets = if plan
        .changes
        .iter()
        .filter_map(plan::Change::write)
        .any(|w| !w.payload.secret_fingerprints.is_empty())
    {
        let stack = stack::load(&plan.stack_file, &state_override(location))?;
        super::read_secrets(&stack, notes)?
    } else {
        SecretValues::new()
    };
    apply::check_fresh(&cluster, plan, &state, &secrets)
        .await
        .map_err(|e| match e {
            ApplyError::Stale(why) => OpsError::PlanFile(PlanFileError::Stale {
                path: path.into(),
                why,
            }),
            e => e.into(),
        })?;
    backend.check_size(&state, plan)?;
    let held = Held {
        cluster,
        backend,
        lock,
        state,
    };
    Ok((held, secrets))
}

/// The flags that make a stack's own state setting say `location`, for
/// reading the stack a saved plan was made from.
fn state_override(location: &StateLocation) -> StateOverride {
    match location {
        StateLocation::File { path } => StateOverride {
            backend: Some(stack::BackendKind::File),
            path: Some(path.clone()),
            namespace: None,
        },
        StateLocation::Kubernetes { namespace, .. } => StateOverride {
            backend: Some(stack::BackendKind::Kubernetes),
            path: None,
            namespace: Some(namespace.clone()),
        },
    }
}
