//! The stack: the TOML file a user writes, read and checked without a cluster.
//!
//! `load` is the first stage of the pipeline. It reads the file, resolves
//! manifest files next to it, and returns a [`Stack`] or a [`StackError`]
//! that names file, line, column and field.

mod error;
mod manifest;
mod model;
mod parse;
mod resource;
pub mod serving;

use std::path::Path;

pub use error::StackError;
pub use model::*;
pub use resource::{EKS_DEFAULT_CLASS, endpoint};

/// Reads and validates a stack file. `state_override` (command-line flags)
/// replaces where the stack says its state is kept.
pub fn load(path: &Path, state_override: &StateOverride) -> Result<Stack, StackError> {
    let bytes = std::fs::read(path).map_err(|source| StackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text =
        String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    parse_str(path, &text, state_override)
}

/// TOML is UTF-8: say where the first byte that is not sits.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> StackError {
    let valid = &bytes[..e.valid_up_to()];
    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&valid[line_start..])
        .chars()
        .count()
        + 1;
    StackError::Invalid {
        location: Location {
            file: path.to_path_buf(),
            line: valid.iter().filter(|b| **b == b'\n').count() + 1,
            column,
        },
        field: String::new(),
        message: format!(
            "not UTF-8 text (byte 0x{:02x}); TOML files are UTF-8",
            bytes[e.valid_up_to()]
        ),
        help: Some("save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)".into()),
    }
}

/// Validates stack text as if it were read from `path` (used by tests and `validate -`).
pub fn parse_str(
    path: &Path,
    text: &str,
    state_override: &StateOverride,
) -> Result<Stack, StackError> {
    parse::parse(&parse::Source { file: path, text }, state_override)
}
