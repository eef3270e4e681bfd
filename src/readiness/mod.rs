//! Readiness: the terminal node. Placeholder until the readiness issue lands.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::stack::WaitSpec;

#[derive(Debug, Clone)]
pub struct Ready {
    pub endpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("{0}")]
    Failed(String),
}

pub async fn wait(
    _cluster: &Cluster,
    _namespace: &str,
    spec: &WaitSpec,
    _progress: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<Ready, ReadinessError> {
    Err(ReadinessError::Failed(format!(
        "waiting for {} is not available yet; use --no-wait",
        spec.path
    )))
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Serving at {}", self.endpoint)
    }
}
