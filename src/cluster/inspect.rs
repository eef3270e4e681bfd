//! Reads that only `rayform doctor` makes: the server's version, whether the
//! user may do something (a SelfSubjectAccessReview asks and changes
//! nothing), and objects found by name across namespaces.

use std::fmt;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;

use super::{Cluster, ClusterError, Kind, error, to_json};

/// One permission: a verb on a resource, in a namespace or cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    /// Plural resource name, e.g. `nodepools`.
    pub resource: String,
    pub subresource: Option<&'static str>,
    pub namespace: Option<String>,
}

impl Access {
    pub fn on(verb: &'static str, kind: &Kind, namespace: Option<&str>) -> Access {
        Access {
            verb,
            group: kind.resource.group.clone(),
            resource: kind.resource.plural.clone(),
            subresource: None,
            namespace: namespace.filter(|_| kind.namespaced).map(str::to_string),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

impl Cluster {
    /// The API server's version, e.g. `v1.37.2`.
    pub async fn server_version(&self) -> Result<String, ClusterError> {
        self.client
            .apiserver_version()
            .await
            .map(|info| info.git_version)
            .map_err(|e| error::classify(e, "get", "version", "", &self.id))
    }

    /// Whether the current user may do `access`, as the API server decides.
    pub async fn may(&self, access: &Access) -> Result<bool, ClusterError> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_string()),
                    group: Some(access.group.clone()),
                    resource: Some(access.resource.clone()),
                    subresource: access.subresource.map(str::to_string),
                    namespace: access.namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                error::classify(
                    e,
                    "create",
                    "selfsubjectaccessreviews.authorization.k8s.io",
                    "",
                    &self.id,
                )
            })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// Objects of a kind with this name, in every namespace.
    pub async fn named_anywhere(
        &self,
        kind: &Kind,
        name: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        self.api(kind, None)
            .list(&params)
            .await
            .map(|l| l.items.into_iter().map(to_json).collect())
            .map_err(|e| self.error(e, "list", kind, name))
    }
}
