//! Secret values: read from where the stack says, never printed, and known
//! to the rest of the engine only by keyed fingerprints.
//!
//! Some text rayform prints is not its own: an API server's refusal, an
//! admission webhook's or a ValidatingAdmissionPolicy's message, a client
//! library's log line. Such text may quote a value, decoded or not, inside
//! JSON or not; a [`Redactor`] finds every value of a run in all those forms.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;

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

/// What a secret value is replaced by in any text rayform prints.
pub const MASK: &str = "(sensitive value)";

/// Forms shorter than this are not searched for: a two-letter value would
/// mask that pair of letters in every word of every message (its padded
/// base64 form is still masked).
pub const MIN_FOUND: usize = 4;

/// Masks a set of secret values wherever text quotes them: as they are (and
/// without surrounding whitespace, as a file's trailing newline is often
/// dropped), base64 standard and URL-safe with and without padding, and
/// escaped as JSON (Go's encoder, which also escapes `<>&`, and serde's),
/// as Rust's `{:?}`, and as JSON inside a JSON string.
#[derive(Clone, Default)]
pub struct Redactor {
    forms: Vec<String>,
    finder: Option<aho_corasick::AhoCorasick>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Adds `values` to what is masked.
    pub fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a [u8]>) {
        let forms: Vec<String> = values.into_iter().flat_map(forms).collect();
        self.insert(forms);
    }

    /// Adds what `other` masks.
    pub fn merge(&mut self, other: &Redactor) {
        self.insert(other.forms.iter().cloned());
    }

    fn insert(&mut self, forms: impl IntoIterator<Item = String>) {
        let before = self.forms.len();
        for form in forms {
            if !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        if self.forms.len() != before {
            // Longest first at each place: a value's JSON form is masked
            // whole, not as the plain value inside it plus a stray escape.
            self.finder = aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&self.forms)
                .ok();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every form of every value replaced by [`MASK`].
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(finder) = &self.finder else {
            return Cow::Borrowed(text);
        };
        let mut out = String::new();
        let mut from = 0;
        for m in finder.find_iter(text) {
            out.push_str(&text[from..m.start()]);
            out.push_str(MASK);
            from = m.end();
        }
        if from == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[from..]);
        Cow::Owned(out)
    }
}

/// Every form of `value` a message could carry.
fn forms(value: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut raw: Vec<&[u8]> = vec![value, value.trim_ascii()];
    raw.dedup();
    raw.retain(|v| !v.is_empty());
    let mut out = Vec::new();
    for v in &raw {
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            out.push(engine.encode(v));
        }
        let text = String::from_utf8_lossy(v);
        let json = json_escaped(&text);
        out.extend([
            go_escaped(&json),
            json_escaped(&json),
            format!("{text:?}").trim_matches('"').to_string(),
            json,
            text.into_owned(),
        ]);
    }
    out.retain(|f| f.len() >= MIN_FOUND);
    out.sort();
    out.dedup();
    out
}

/// The inside of `text` as a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::Value::from(text).to_string();
    let inside = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
    inside.unwrap_or(&quoted).to_string()
}

/// serde's JSON escaping made Go's: Go's encoder escapes `<`, `>` and `&`
/// (and U+2028/2029), which the API server's messages go through.
fn go_escaped(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    /// A token with what each encoding treats specially: a quote, a
    /// backslash, `<>&` (Go escapes them), bytes whose base64 differs
    /// between the standard and URL-safe alphabets, and a file's newline.
    const TOKEN: &str = "hf_\"q\\<a&b>\u{7f}~~~??>\n";

    fn redactor() -> Redactor {
        let mut r = Redactor::new();
        r.add([TOKEN.as_bytes()]);
        r
    }

    #[test]
    fn every_form_of_a_value_is_masked() {
        let trimmed = TOKEN.trim_end();
        let forms = [
            TOKEN.to_string(),
            trimmed.to_string(),
            STANDARD.encode(TOKEN),
            STANDARD_NO_PAD.encode(TOKEN),
            URL_SAFE.encode(TOKEN),
            URL_SAFE_NO_PAD.encode(TOKEN),
            STANDARD.encode(trimmed),
            URL_SAFE_NO_PAD.encode(trimmed),
            // Go's encoding/json, as the API server writes a message.
            // (DEL is not escaped by either encoder.)
            r#"hf_\"q\\\u003ca\u0026b\u003e"#.to_string() + "\u{7f}" + r#"~~~??\u003e\n"#,
            // serde_json, and JSON quoted again inside a JSON string.
            serde_json::to_string(TOKEN).unwrap(),
            serde_json::to_string(&serde_json::to_string(TOKEN).unwrap()).unwrap(),
            // Rust's Debug, as a client library logs a Status.
            format!("{TOKEN:?}"),
            format!("{trimmed:?}"),
        ];
        let r = redactor();
        for form in forms {
            let message = format!("denied request: token is {form}, go away");
            let masked = r.redact(&message);
            assert!(!masked.contains(&form), "{form} in {masked}");
            assert!(!masked.contains("hf_"), "{form}: {masked}");
            assert!(masked.contains(MASK), "{form}: {masked}");
            assert!(masked.ends_with(", go away"), "{masked}");
        }
    }

    #[test]
    fn text_without_a_value_is_left_alone() {
        let r = redactor();
        let text = "the Secret hf-token was created";
        assert!(matches!(r.redact(text), Cow::Borrowed(t) if t == text));
        assert_eq!(Redactor::new().redact(TOKEN), TOKEN);
    }

    #[test]
    fn a_short_value_masks_no_ordinary_words() {
        let mut r = Redactor::new();
        r.add([b"ab".as_slice()]);
        assert_eq!(r.redact("a table, YWI"), "a table, YWI");
        assert_eq!(r.redact("YWI="), MASK);
    }

    #[test]
    fn merged_redactors_mask_both_sets() {
        let mut r = redactor();
        let mut other = Redactor::new();
        other.add([b"second-token".as_slice()]);
        r.merge(&other);
        let text = format!("{TOKEN} and second-token");
        assert_eq!(r.redact(&text), format!("{MASK} and {MASK}"));
    }
}
