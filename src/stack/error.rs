//! Errors in a stack file, each pointing at the file, line, column and field.

use std::path::PathBuf;

use super::model::Location;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{location}: {}{message}{}", field_prefix(field), help_suffix(help))]
    Invalid {
        location: Location,
        /// Dotted path of the offending key, e.g. `secret.hf-token.data`.
        field: String,
        message: String,
        help: Option<String>,
    },
    /// Several of the errors above, in the order of the file.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<StackError>),
}

impl StackError {
    /// Where the (first) error is.
    pub fn location(&self) -> Option<&Location> {
        match self {
            StackError::Invalid { location, .. } => Some(location),
            StackError::Read { .. } => None,
            StackError::Several(all) => all.first().and_then(StackError::location),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            StackError::Invalid { field, .. } => Some(field),
            StackError::Read { .. } => None,
            StackError::Several(all) => all.first().and_then(StackError::field),
        }
    }

    /// Each error on its own, in the order of the file.
    pub fn each(&self) -> Vec<&StackError> {
        match self {
            StackError::Several(all) => all.iter().collect(),
            e => vec![e],
        }
    }

    /// `errors` as one error, in the order of the file; `Ok` if there are none.
    pub(crate) fn all(mut errors: Vec<StackError>) -> Result<(), StackError> {
        errors.sort_by_key(|e| e.location().map(|l| (l.line, l.column)));
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(StackError::Several(errors)),
        }
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("`{field}`: ")
    }
}

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref()
        .map(|h| format!("\n  help: {h}"))
        .unwrap_or_default()
}

/// The closest candidate to a misspelt key, for "did you mean" hints.
pub(crate) fn suggest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(given, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        assert_eq!(
            suggest("rayservices", ["rayservice", "secret"]),
            Some("rayservice")
        );
        assert_eq!(suggest("emptyttl", ["empty_ttl"]), Some("empty_ttl"));
        assert_eq!(suggest("bogus", ["rayservice", "secret"]), None);
    }
}
