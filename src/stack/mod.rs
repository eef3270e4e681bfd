//! The stack: the TOML file a user writes, read and checked without a cluster.
//!
//! `load` is the first stage of the pipeline. It reads the file, resolves
//! manifest files next to it, and returns a [`Stack`] or a [`StackError`]
//! that names file, line, column and field.

mod error;
mod manifest;
mod model;
mod parse;

use std::path::Path;

pub use error::StackError;
pub use model::*;

/// Reads and validates a stack file. `state_override` (command-line flags)
/// replaces where the stack says its state is kept.
pub fn load(path: &Path, state_override: &StateOverride) -> Result<Stack, StackError> {
    let text = std::fs::read_to_string(path).map_err(|source| StackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(path, &text, state_override)
}

/// Validates stack text as if it were read from `path` (used by tests and `validate -`).
pub fn parse_str(
    path: &Path,
    text: &str,
    state_override: &StateOverride,
) -> Result<Stack, StackError> {
    parse::parse(&parse::Source { file: path, text }, state_override)
}
