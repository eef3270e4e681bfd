//! Cluster errors that say what went wrong and what to do next.

use crate::target::ClusterId;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "kubeconfig: {message}\n  help: pass --kubeconfig PATH, set KUBECONFIG, or run e.g. `aws eks update-kubeconfig`"
    )]
    Kubeconfig { message: String },
    #[error("context `{context}` is not in the kubeconfig; it has: {}", available.join(", "))]
    UnknownContext {
        context: String,
        available: Vec<String>,
    },
    #[error(
        "cannot reach the cluster at {server} ({context}): {message}\n  help: check that the API server is up and that the kubeconfig context is the one you mean (--context)"
    )]
    Unreachable {
        server: String,
        context: String,
        message: String,
    },
    #[error(
        "the cluster at {server} rejected rayform's credentials: {message}\n  help: refresh them (e.g. `aws eks update-kubeconfig`) or pick another context with --context"
    )]
    Unauthorized { server: String, message: String },
    #[error(
        "forbidden: cannot {verb} {resource}{name}: {message}\n  help: ask a cluster admin for RBAC permission to {verb} {resource}, or use a context that has it (--context)"
    )]
    Forbidden {
        verb: String,
        resource: String,
        name: String,
        message: String,
    },
    #[error("{verb} {resource}{name}: conflict: {message}")]
    Conflict {
        verb: String,
        resource: String,
        name: String,
        message: String,
        causes: Vec<(String, String)>,
    },
    #[error("{verb} {resource}{name}: rejected by the API server: {message}")]
    Invalid {
        verb: String,
        resource: String,
        name: String,
        message: String,
    },
    #[error("{verb} {resource}{name}: not found: {message}")]
    NotFound {
        verb: String,
        resource: String,
        name: String,
        message: String,
    },
    #[error("{verb} {resource}{name}: {message}")]
    Api {
        verb: String,
        resource: String,
        name: String,
        message: String,
    },
}

/// Every kube error as what failed and what to do. Long on purpose: one
/// match over the kinds of failure, read top to bottom like a table.
pub(super) fn classify(
    e: kube::Error,
    verb: &str,
    resource: &str,
    name: &str,
    id: &ClusterId,
) -> ClusterError {
    let name = if name.is_empty() {
        String::new()
    } else {
        format!(" `{name}`")
    };
    let (verb, resource) = (verb.to_string(), resource.to_string());
    match e {
        kube::Error::Api(s) => {
            // kube's own log of this response is silenced (it holds the
            // whole body); this one carries what rayform shows, masked by
            // the CLI like everything it prints.
            tracing::debug!(
                code = s.code,
                reason = s.reason,
                message = s.message,
                "the API server refused: {verb} {resource}{name}"
            );
            let message = s.message.clone();
            match s.code {
                401 => ClusterError::Unauthorized {
                    server: id.server.clone(),
                    message,
                },
                403 => ClusterError::Forbidden {
                    verb,
                    resource,
                    name,
                    message,
                },
                404 => ClusterError::NotFound {
                    verb,
                    resource,
                    name,
                    message,
                },
                409 => ClusterError::Conflict {
                    verb,
                    resource,
                    name,
                    message,
                    causes: s
                        .details
                        .map(|d| d.causes.into_iter().map(|c| (c.field, c.message)).collect())
                        .unwrap_or_default(),
                },
                // Server-side apply converts to the schema's types before
                // validating; a wrong type surfaces as this 500.
                500 if message.contains("failed to create typed patch object") => {
                    ClusterError::Invalid {
                        verb,
                        resource,
                        name,
                        message,
                    }
                }
                400 | 422 => ClusterError::Invalid {
                    verb,
                    resource,
                    name,
                    message,
                },
                _ => ClusterError::Api {
                    verb,
                    resource,
                    name,
                    message: format!("{message} (HTTP {})", s.code),
                },
            }
        }
        other => ClusterError::Unreachable {
            server: id.server.clone(),
            context: id
                .context
                .clone()
                .map_or_else(|| "no context".into(), |c| format!("context {c}")),
            message: error_chain(&other),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// What to say of a kind the cluster does not serve: for KubeRay's, that
/// the operator is not installed, and how to install it.
pub fn missing_kind_message(api_version: &str, kind: &str) -> String {
    if api_version.starts_with("ray.io/") {
        format!(
            "the cluster does not serve {api_version} {kind}: the KubeRay CRDs are not installed\n  \
             help: install the KubeRay operator first (e.g. `helm install kuberay-operator kuberay/kuberay-operator`)"
        )
    } else {
        format!(
            "the cluster does not serve {api_version} {kind}: install the CRD or operator that provides it"
        )
    }
}
