//! Secret values: read from where the stack says, never printed, and known
//! to the rest of the engine only by keyed fingerprints.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{KeyInit as _, Mac as _};

use crate::stack::{Address, SecretSource};

/// A secret value. Its `Debug` and `Display` never show the bytes, so a
/// stray `{:?}` in a log line cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive value)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive value)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{address}: key `{key}` takes its value from environment variable {var}, which is not set\n  help: export {var}=... before running rayform"
    )]
    MissingEnv {
        address: Address,
        key: String,
        var: String,
    },
    #[error("{address}: key `{key}` takes its value from {}, which cannot be read: {source}", path.display())]
    File {
        address: Address,
        key: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{address}: key `{key}` is empty ({origin}); a Secret with an empty token is almost certainly a mistake"
    )]
    Empty {
        address: Address,
        key: String,
        origin: String,
    },
}

/// Reads every value of a secret resource.
pub fn read(
    address: &Address,
    data: &BTreeMap<String, SecretSource>,
) -> Result<BTreeMap<String, SecretValue>, SecretError> {
    let mut out = BTreeMap::new();
    for (key, source) in data {
        let (bytes, origin) = match source {
            SecretSource::Env(var) => match std::env::var_os(var) {
                Some(v) => (
                    v.into_encoded_bytes(),
                    format!("environment variable {var}"),
                ),
                None => {
                    return Err(SecretError::MissingEnv {
                        address: address.clone(),
                        key: key.clone(),
                        var: var.clone(),
                    });
                }
            },
            SecretSource::File(path) => match std::fs::read(path) {
                Ok(b) => (b, format!("file {}", path.display())),
                Err(source) => {
                    return Err(SecretError::File {
                        address: address.clone(),
                        key: key.clone(),
                        path: path.clone(),
                        source,
                    });
                }
            },
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty {
                address: address.clone(),
                key: key.clone(),
                origin,
            });
        }
        out.insert(key.clone(), SecretValue(bytes));
    }
    Ok(out)
}

/// HMAC-SHA256 of a value under the state's key, as `hmac-sha256:<hex>`.
pub fn fingerprint(key_hex: &str, value: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key_hex.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(value);
    format!(
        "hmac-sha256:{}",
        crate::util::hex(&mac.finalize().into_bytes())
    )
}

pub fn is_fingerprint(s: &str) -> bool {
    s.starts_with("hmac-sha256:")
}
