//! How a state is laid out in Secrets. The API refuses a Secret whose data
//! passes 1 MiB, so a larger state (gzip-compressed) is cut into parts, each
//! a Secret of its own, and the state Secret names them in order.
//!
//! A part's name carries the hash of the whole payload, so the parts of one
//! write never overwrite those of another: a write stores its parts first,
//! then switches the state Secret to them in one guarded update, then deletes
//! the parts nothing names any more. A run killed at any point leaves the
//! state Secret naming one whole set of parts, never a mix (Terraform's
//! backend rewrites its chunks in place, which a crash can leave half new).

use std::io::{Read as _, Write as _};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::Digest as _;

use crate::state::State;

/// The API's limit on a Secret's data (`MaxSecretSize`).
pub const PART_BYTES: usize = 1024 * 1024;
/// At most this many parts: a state of 10 000 objects takes about one.
pub const MAX_PARTS: usize = 8;

const DATA_KEY: &str = "state.json.gz";
const PARTS_KEY: &str = "state.parts";
const PART_KEY: &str = "part";
const LINEAGE: &str = "rayform.io/lineage";
const SERIAL: &str = "rayform.io/serial";
const SHA256: &str = "rayform.io/state-sha256";
/// The label every part carries, with the stack it belongs to.
pub const PART_OF: &str = "rayform.io/state-part-of";

/// A state too large for the kubernetes backend, in compressed bytes.
#[derive(Debug, Clone, Copy)]
pub struct TooLarge {
    pub bytes: usize,
    pub limit: usize,
}

/// What a state Secret (the state's or its backup's) records: which state it
/// holds, and its compressed bytes or the names of the parts that do.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub lineage: String,
    pub serial: u64,
    /// sha256 of the compressed bytes; empty in Secrets written before parts existed.
    pub sha256: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Inline(Vec<u8>),
    Parts(Vec<String>),
}

/// A state compressed for storing, with its parts if it needs them.
pub struct Encoded {
    pub record: Record,
    /// (name, bytes) of each part, in order; empty when the state fits inline.
    pub parts: Vec<(String, Vec<u8>)>,
}

/// Compresses `state`, refusing one beyond [`MAX_PARTS`] parts.
pub fn encode(state: &State, base: &str) -> Result<Encoded, EncodeError> {
    encode_within(state, base, PART_BYTES, MAX_PARTS)
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot serialize the state: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot compress the state: {0}")]
    Compress(#[from] std::io::Error),
    #[error("the state is too large")]
    TooLarge(TooLarge),
}

fn encode_within(
    state: &State,
    base: &str,
    part_bytes: usize,
    max_parts: usize,
) -> Result<Encoded, EncodeError> {
    let json = serde_json::to_vec(state)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json)?;
    let data = gz.finish()?;
    let limit = part_bytes * max_parts;
    if data.len() > limit {
        return Err(EncodeError::TooLarge(TooLarge {
            bytes: data.len(),
            limit,
        }));
    }
    let sha256 = crate::util::hex(&sha2::Sha256::digest(&data));
    let (body, parts) = if data.len() <= part_bytes {
        (Body::Inline(data), Vec::new())
    } else {
        let parts: Vec<(String, Vec<u8>)> = data
            .chunks(part_bytes)
            .enumerate()
            .map(|(i, chunk)| (part_name(base, &sha256, i), chunk.to_vec()))
            .collect();
        let names = parts.iter().map(|(n, _)| n.clone()).collect();
        (Body::Parts(names), parts)
    };
    Ok(Encoded {
        record: Record {
            lineage: state.lineage.clone(),
            serial: state.serial,
            sha256,
            body,
        },
        parts,
    })
}

/// `rayform-state-x.<hash>.<i>`: the dots keep it apart from any stack's
/// own Secret names, which are DNS labels.
fn part_name(base: &str, sha256: &str, i: usize) -> String {
    format!("{base}.{}.{i}", &sha256[..12])
}

impl Record {
    /// Reads a state Secret's record; the message says what is wrong with it.
    pub fn from_secret(secret: &Secret) -> Result<Record, String> {
        let annotation = |key: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
        };
        let data = secret.data.as_ref();
        let body = match (
            data.and_then(|d| d.get(DATA_KEY)),
            data.and_then(|d| d.get(PARTS_KEY)),
        ) {
            (Some(bytes), _) => Body::Inline(bytes.0.clone()),
            (None, Some(manifest)) => Body::Parts(
                serde_json::from_slice(&manifest.0)
                    .map_err(|e| format!("its `{PARTS_KEY}` is not a list of names: {e}"))?,
            ),
            (None, None) => return Err(format!("it has neither `{DATA_KEY}` nor `{PARTS_KEY}`")),
        };
        Ok(Record {
            lineage: annotation(LINEAGE).unwrap_or_default(),
            serial: annotation(SERIAL)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            sha256: annotation(SHA256).unwrap_or_default(),
            body,
        })
    }

    /// The Secret `name` holding this record.
    pub fn to_secret(
        &self,
        name: &str,
        namespace: &str,
        stack: &str,
        resource_version: Option<String>,
    ) -> Secret {
        let data = match &self.body {
            Body::Inline(bytes) => (DATA_KEY.to_string(), ByteString(bytes.clone())),
            Body::Parts(names) => (
                PARTS_KEY.to_string(),
                ByteString(serde_json::to_vec(names).unwrap_or_default()),
            ),
        };
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                resource_version,
                labels: Some(labels(&[("rayform.io/state-of", stack)])),
                annotations: Some(labels(&[
                    (LINEAGE, &self.lineage),
                    (SERIAL, &self.serial.to_string()),
                    (SHA256, &self.sha256),
                ])),
                ..Default::default()
            },
            type_: Some("rayform.io/state".into()),
            data: Some([data].into()),
            ..Default::default()
        }
    }

    /// The parts this record needs; none when it holds its bytes itself.
    pub fn parts(&self) -> &[String] {
        match &self.body {
            Body::Inline(_) => &[],
            Body::Parts(names) => names,
        }
    }

    /// Whether `self` is the very write `other` describes.
    pub fn same_write(&self, other: &Record) -> bool {
        self.lineage == other.lineage
            && self.serial == other.serial
            && !self.sha256.is_empty()
            && self.sha256 == other.sha256
    }

    /// The state, from the record's bytes (`parts`: the parts' bytes, in order).
    pub fn decode(&self, parts: Vec<Vec<u8>>) -> Result<String, String> {
        let bytes = match &self.body {
            Body::Inline(bytes) => bytes.clone(),
            Body::Parts(_) => parts.concat(),
        };
        if !self.sha256.is_empty() && crate::util::hex(&sha2::Sha256::digest(&bytes)) != self.sha256
        {
            return Err(format!(
                "its bytes do not match their hash {} (a part was changed or replaced)",
                self.sha256
            ));
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .map_err(|e| format!("it is not gzip-compressed text: {e}"))?;
        Ok(text)
    }
}

/// One part of a state, as its own Secret.
pub fn part_secret(name: &str, namespace: &str, stack: &str, serial: u64, bytes: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(&[(PART_OF, stack)])),
            annotations: Some(labels(&[(SERIAL, &serial.to_string())])),
            ..Default::default()
        },
        type_: Some("rayform.io/state-part".into()),
        data: Some([(PART_KEY.to_string(), ByteString(bytes.to_vec()))].into()),
        ..Default::default()
    }
}

/// A part's bytes, if the Secret is one.
pub fn part_bytes(secret: Secret) -> Option<Vec<u8>> {
    secret.data?.remove(PART_KEY).map(|b| b.0)
}

/// The serial a part was written for (0 if unreadable).
pub fn part_serial(metadata: &ObjectMeta) -> u64 {
    metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERIAL))
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    std::iter::once(("app.kubernetes.io/managed-by", "rayform"))
        .chain(pairs.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(n: usize) -> State {
        let mut state = State::new("big").unwrap();
        for i in 0..n {
            // Random text compresses no better than the hashes a state holds.
            state.released.insert(
                crate::stack::Address::new(crate::stack::ResourceType::Manifest, format!("cm{i}")),
                crate::util::random_hex(32).unwrap(),
            );
        }
        state
    }

    #[test]
    fn a_small_state_stays_inline_in_one_secret() {
        let state = state_of(10);
        let encoded = encode_within(&state, "rayform-state-big", 4096, 4).unwrap();
        assert!(encoded.parts.is_empty());
        assert!(matches!(encoded.record.body, Body::Inline(_)));
        let text = encoded.record.decode(Vec::new()).unwrap();
        assert_eq!(text, serde_json::to_string(&state).unwrap());
    }

    #[test]
    fn a_large_state_is_cut_into_parts_named_by_its_hash_and_joins_back() {
        let state = state_of(200);
        let encoded = encode_within(&state, "rayform-state-big", 4096, 8).unwrap();
        assert!(encoded.parts.len() > 1, "{} parts", encoded.parts.len());
        assert!(encoded.parts.iter().all(|(_, b)| b.len() <= 4096));
        let prefix = format!("rayform-state-big.{}.", &encoded.record.sha256[..12]);
        assert!(encoded.parts.iter().all(|(n, _)| n.starts_with(&prefix)));
        assert_eq!(encoded.record.parts().len(), encoded.parts.len());
        let bytes = encoded.parts.iter().map(|(_, b)| b.clone()).collect();
        let text = encoded.record.decode(bytes).unwrap();
        assert_eq!(text, serde_json::to_string(&state).unwrap());
    }

    #[test]
    fn parts_in_the_wrong_order_are_refused_by_the_hash() {
        let encoded = encode_within(&state_of(200), "s", 4096, 8).unwrap();
        let mut bytes: Vec<Vec<u8>> = encoded.parts.iter().map(|(_, b)| b.clone()).collect();
        bytes.swap(0, 1);
        let error = encoded.record.decode(bytes).unwrap_err();
        assert!(error.contains("do not match their hash"), "{error}");
    }

    #[test]
    fn a_state_beyond_the_last_part_is_refused_with_its_size() {
        let Err(EncodeError::TooLarge(too)) = encode_within(&state_of(200), "s", 1024, 2) else {
            panic!("a state over 2 KiB compressed must be refused");
        };
        assert!(too.bytes > 2048);
        assert_eq!(too.limit, 2048);
    }

    #[test]
    fn a_record_reads_back_from_its_secret() {
        let encoded = encode_within(&state_of(200), "s", 4096, 8).unwrap();
        let secret = encoded.record.to_secret("s", "ns", "big", None);
        let read = Record::from_secret(&secret).unwrap();
        assert_eq!(read, encoded.record);
        assert!(read.same_write(&encoded.record));
    }
}
