//! Which cluster a run is aimed at, as plain data: the cluster layer fills
//! it in when it connects, the state records it, plans carry it. It sits
//! below both, so neither the state nor the cluster layer imports the other.

use serde::{Deserialize, Serialize};

/// Which cluster a state belongs to, so a run against another cluster is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterId {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}
