//! Small helpers shared by several stages: durations, hex, canonical JSON.

use std::fmt::Write as _;
use std::time::Duration;

/// Parses `600`, `600s`, `10m`, `1h30m`, `250ms`: the forms Kubernetes users write.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Renders a duration the way `parse_duration` reads it back, e.g. `1m30s`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 {
        let _ = write!(out, "{s}s");
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// JSON with sorted keys and no whitespace, so equal objects hash equally.
pub fn canonical_json(v: &serde_json::Value) -> String {
    // serde_json's map is ordered (BTreeMap) unless `preserve_order` is on;
    // sorting here keeps hashes stable even if some crate turns it on.
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// sha256 of canonical JSON, as `sha256:<hex>`.
pub fn sha256_json(v: &serde_json::Value) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex(&sha2::Sha256::digest(canonical_json(v).as_bytes()))
    )
}

/// Serde for `Duration` as a human string ("600s") in state and plan files.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("bad duration `{s}`")))
    }
}

/// The operating system gave no random bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operating system's random source failed ({0}); rayform makes lineages, fingerprint keys and lock IDs only from it"
)]
pub struct NoRandom(getrandom::Error);

/// Random bytes as hex, for lineages, lock IDs and fingerprint keys. With
/// no secure source there is no fallback: a key made from the clock and the
/// pid could be guessed, and would then check guessed tokens against the
/// fingerprints on the cluster's objects.
pub fn random_hex(bytes: usize) -> Result<String, NoRandom> {
    random_hex_from(bytes, getrandom::fill)
}

fn random_hex_from(
    bytes: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<String, NoRandom> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf).map_err(NoRandom)?;
    Ok(hex(&buf))
}

/// Now, in UTC, as `2026-11-28T07:15:58Z`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

/// Text in a terminal style when colour is on; anstyle writes the escapes.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    pub fn style(self, style: anstyle::Style, text: &str) -> String {
        if self.0 {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    fn fg(self, color: anstyle::AnsiColor, text: &str) -> String {
        self.style(anstyle::Style::new().fg_color(Some(color.into())), text)
    }

    pub fn green(self, text: &str) -> String {
        self.fg(anstyle::AnsiColor::Green, text)
    }

    pub fn red(self, text: &str) -> String {
        self.fg(anstyle::AnsiColor::Red, text)
    }

    pub fn yellow(self, text: &str) -> String {
        self.fg(anstyle::AnsiColor::Yellow, text)
    }

    pub fn cyan(self, text: &str) -> String {
        self.fg(anstyle::AnsiColor::Cyan, text)
    }

    pub fn bold(self, text: &str) -> String {
        self.style(anstyle::Style::new().bold(), text)
    }
}

/// One-line JSON for messages (`"30s"`, `[{"deviceName":...}]`).
/// An object's namespace, empty for a cluster-scoped one.
pub fn namespace_of(object: &serde_json::Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// `namespace/name`, as kubectl names an object in its messages.
pub fn qualified(object: &serde_json::Value) -> String {
    let name = object
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    format!("{}/{name}", namespace_of(object))
}

pub fn compact_json(v: &serde_json::Value) -> String {
    canonical_json(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, secs) in [("600", 600), ("600s", 600), ("10m", 600), ("1h30m", 5400)] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "10x", "m", "-5s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn now_is_whole_seconds_in_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-11-28T07:15:58Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }

    #[test]
    fn without_a_random_source_nothing_is_made_up() {
        let failed = random_hex_from(16, |_| Err(getrandom::Error::UNSUPPORTED)).unwrap_err();
        assert!(
            failed
                .to_string()
                .starts_with("the operating system's random source failed"),
            "{failed}"
        );
        let made = random_hex(16).unwrap();
        assert_eq!(made.len(), 32);
        assert_ne!(made, random_hex(16).unwrap());
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"c":3,"d":2},"b":1}"#).unwrap();
        assert_eq!(sha256_json(&a), sha256_json(&b));
    }
}
