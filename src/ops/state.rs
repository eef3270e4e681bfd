//! The state commands (`init`, `state list|show|rm|mv|pull|push|restore`):
//! what Terraform users reach for to create, see and correct what rayform
//! tracks, move a state between backends, and go back to the backup kept
//! before the last write. Each works under the lock and touches nothing in
//! the cluster but the state itself.

use super::{Notes, OpsError, Place};
use crate::backend::Backend;
use crate::stack::{self, Address, Stack};
use crate::state::{self, ResourceState, State, StateError};

/// What `init` found.
pub enum Initialized {
    /// A state of this stack was there already.
    Existed(State),
    Created(State),
}

/// Creates the stack's empty state where the stack keeps it, so that a plan
/// can be saved against it without `plan` writing anything.
pub async fn init(place: &Place, notes: &dyn Notes) -> Result<(Stack, Initialized), OpsError> {
    let (s, backend) = stack_and_backend(place).await?;
    let lock = super::lock(&backend, "init", notes).await?;
    if let Some(current) = super::read_state(&backend, notes).await? {
        if current.stack != s.name {
            return Err(OpsError::other_stack(&s, current.stack));
        }
        return Ok((s, Initialized::Existed(current)));
    }
    let mut state = State::new(&s.name).map_err(crate::backend::BackendError::from)?;
    backend.save(&mut state, &lock).await?;
    Ok((s, Initialized::Created(state)))
}

/// The stack's state as it is kept; refused if there is none yet.
pub async fn read(place: &Place, notes: &dyn Notes) -> Result<State, OpsError> {
    let (s, backend) = stack_and_backend(place).await?;
    existing(&backend, &s, notes).await
}

/// `state rm`: the entries of `addresses` forgotten (the objects stay in
/// the cluster); returns what each recorded.
pub async fn forget(
    place: &Place,
    addresses: &[String],
    notes: &dyn Notes,
) -> Result<Vec<(Address, ResourceState)>, OpsError> {
    let addresses = addresses
        .iter()
        .map(|a| address(a))
        .collect::<Result<Vec<_>, _>>()?;
    let (s, backend) = stack_and_backend(place).await?;
    let lock = super::lock(&backend, "state rm", notes).await?;
    let mut state = existing(&backend, &s, notes).await?;
    let removed = state.forget(&addresses).map_err(listed)?;
    backend.save(&mut state, &lock).await?;
    Ok(removed)
}

/// `state mv`: the entry of `from` recorded under `to`, as Terraform's
/// `state mv` after a rename; the object itself is not touched.
pub async fn rename(
    place: &Place,
    from: &str,
    to: &str,
    notes: &dyn Notes,
) -> Result<(Address, Address), OpsError> {
    let (from, to) = (address(from)?, address(to)?);
    let (s, backend) = stack_and_backend(place).await?;
    let lock = super::lock(&backend, "state mv", notes).await?;
    let mut state = existing(&backend, &s, notes).await?;
    state.rename(&from, &to).map_err(listed)?;
    backend.save(&mut state, &lock).await?;
    Ok((from, to))
}

/// `state push`: stores the state in `text` (read from `file`, named in
/// messages) where the stack keeps its state, refusing (unless `force`) what
/// would lose track of objects: another stack's state, another lineage, or
/// an older serial than the one stored. Returns the state as stored.
pub async fn push(
    place: &Place,
    (text, file): (&str, &str),
    force: bool,
    notes: &dyn Notes,
) -> Result<(Stack, State), OpsError> {
    let refuse = |m: String| Err(OpsError::Refused(m));
    let mut pushed = match state::store::decode(text) {
        Ok(pushed) => pushed,
        Err(state::store::Decoded::Corrupt(m)) => {
            return refuse(format!("{file} is not a rayform state: {m}"));
        }
        Err(state::store::Decoded::Version(v)) => {
            return refuse(format!(
                "{file} has state format_version {v}; this rayform reads {}",
                state::FORMAT_VERSION
            ));
        }
    };
    let (s, backend) = stack_and_backend(place).await?;
    if pushed.stack != s.name {
        let (found, stack) = (&pushed.stack, &s.name);
        return refuse(format!(
            "{file} is the state of stack `{found}`, not `{stack}`"
        ));
    }
    let lock = super::lock(&backend, "state push", notes).await?;
    let current = match super::read_state(&backend, notes).await {
        Ok(current) => current,
        // A state that does not read is what a forced push replaces.
        Err(e) if force => {
            notes.warn(&format!("replacing a state that does not read: {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(current) = current {
        let at = &s.state;
        if current.lineage != pushed.lineage && !force {
            return refuse(format!(
                "the state at {at} has lineage {}, {file} has {}: they are not the same state\n  help: pass --force to replace it anyway",
                current.lineage, pushed.lineage
            ));
        }
        if current.serial > pushed.serial && !force {
            return refuse(format!(
                "the state at {at} has serial {}, newer than {} in {file}\n  help: pull it again, or pass --force to replace it anyway",
                current.serial, pushed.serial
            ));
        }
        pushed.serial = pushed.serial.max(current.serial);
    }
    backend.save(&mut pushed, &lock).await?;
    Ok((s, pushed))
}

/// `state restore`: puts back the backup the last command that wrote the
/// state kept (the state as that command found it); the backup stays.
/// Returns the restore and where the backup was.
pub async fn restore(
    place: &Place,
    notes: &dyn Notes,
) -> Result<(Stack, crate::backend::Restored, String), OpsError> {
    let (s, backend) = stack_and_backend(place).await?;
    let lock = super::lock(&backend, "state restore", notes).await?;
    let backup = backend.backup_location();
    let Some(restored) = backend.restore(&lock).await? else {
        return Err(OpsError::Refused(format!(
            "no backup of the state at {}: there is no {backup}\n  help: a backup is kept from the first command that overwrites a state; state push stores a copy you kept (see `rayform state push --help`)",
            s.state
        )));
    };
    Ok((s, restored, backup))
}

async fn stack_and_backend(place: &Place) -> Result<(Stack, Backend), OpsError> {
    let s = stack::load(&place.stack, &place.state)?;
    let backend = super::backend_at(&s.state, &place.connect).await?;
    Ok((s, backend))
}

async fn existing(backend: &Backend, s: &Stack, notes: &dyn Notes) -> Result<State, OpsError> {
    match super::read_state(backend, notes).await? {
        Some(state) => Ok(state),
        None => Err(OpsError::Refused(format!(
            "no state at {}: nothing has been applied with this stack yet",
            s.state
        ))),
    }
}

/// An address given to a state command, checked for shape.
pub fn address(given: &str) -> Result<Address, OpsError> {
    Address::parse(given).ok_or_else(|| {
        OpsError::Refused(format!(
            "`{given}` is not an address\n  help: addresses look like rayservice.mistral-7b or nodepool.default (see `rayform state list STACK`)"
        ))
    })
}

/// A state error, with where to see what the state tracks when it is about
/// an address it does not.
pub fn listed(e: StateError) -> OpsError {
    match e {
        StateError::NotTracked(_) => OpsError::Refused(format!(
            "{e}\n  help: `rayform state list STACK` shows what it tracks"
        )),
        e => OpsError::Backend(e.into()),
    }
}
