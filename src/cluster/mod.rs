//! Talking to Kubernetes: connecting through a kubeconfig context, finding
//! which APIs the cluster serves, and the handful of calls the engine makes.
//!
//! Every kube error is turned into a [`ClusterError`] that says what failed
//! and what the user can do about it; nothing above this module sees
//! `kube::Error`.

mod error;
mod inspect;
mod kubeconfig;
pub mod kuberay;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery, Scope};
use kube::{Client, Config};
use serde_json::Value;

pub use error::{ClusterError, missing_kind_message};
pub use inspect::Access;

use crate::target::ClusterId;

/// How to reach the cluster: kubectl's `--kubeconfig` and `--context`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// A connected cluster and what it serves.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// The same connection settings without a read timeout: watches and
    /// port-forwards are quiet for long stretches by design.
    stream_client: Client,
    pub id: ClusterId,
    discovery: std::sync::Arc<Discovery>,
    /// Object requests made since connecting (discovery not counted), so
    /// `-v` can show that a no-op plan costs a few LISTs, not one call per resource.
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Where a kind lives in the API.
#[derive(Debug, Clone)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl Kind {
    /// `nodepools.karpenter.sh`, as kubectl names a resource.
    pub fn plural_name(&self) -> String {
        if self.resource.group.is_empty() {
            self.resource.plural.clone()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        }
    }
}

/// Objects per LIST request: small pages keep a large stack's plan small in memory.
const LIST_PAGE: u32 = 250;

/// How a server-side apply is made.
#[derive(Debug, Clone, Copy)]
pub struct Ssa<'a> {
    pub manager: &'a str,
    /// Take fields other managers own.
    pub force: bool,
    pub dry_run: bool,
}

impl Cluster {
    pub async fn connect(options: &ConnectOptions) -> Result<Cluster, ClusterError> {
        let (mut config, context) = kubeconfig::config(options).await?;
        config.connect_timeout = Some(Duration::from_secs(10));
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let build = |config: Config| {
            kube::client::ClientBuilder::try_from(config)
                .map(kube::client::ClientBuilder::build)
                .map_err(|e| ClusterError::Kubeconfig {
                    message: e.to_string(),
                })
        };
        let stream_client = build(config.clone())?;
        config.read_timeout = Some(Duration::from_secs(60));
        config.reset_reader_on_write = true;
        let client = build(config)?;
        let id = ClusterId { server, context };
        let discovery = discover(&client, &id).await?;
        Ok(Cluster {
            client,
            stream_client,
            id,
            discovery: std::sync::Arc::new(discovery),
            requests: std::sync::Arc::default(),
        })
    }

    /// Resolves `apiVersion` + `kind` to its resource, or `None` if the cluster does not serve it.
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        self.discovery
            .resolve_gvk(&gvk)
            .map(|(resource, caps)| Kind {
                resource,
                namespaced: caps.scope == Scope::Namespaced,
            })
    }

    /// Versions the cluster serves for an API group, preferred first.
    pub fn group_versions(&self, group: &str) -> Vec<String> {
        self.discovery
            .get(group)
            .map(|g| {
                let mut v: Vec<String> = g.versions().map(str::to_string).collect();
                if let Some(p) = g.preferred_version() {
                    v.retain(|x| x != p);
                    v.insert(0, p.to_string());
                }
                v
            })
            .unwrap_or_default()
    }

    /// Object requests made so far through this connection.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every object request goes through here (one `api` per request).
    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        tracing::trace!(resource = %kind.plural_name(), namespace, "request");
        self.api_on(&self.client, kind, namespace)
    }

    /// One request's API on `client`, counted.
    fn api_on(&self, client: &Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &kind.resource),
            _ => Api::all_with(client.clone(), &kind.resource),
        }
    }

    pub async fn get(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ClusterError> {
        self.api(kind, namespace)
            .get_opt(name)
            .await
            .map(|o| o.map(to_json))
            .map_err(|e| self.error(e, "get", kind, name))
    }

    /// Lists the objects of a kind that carry a label selector.
    pub async fn list(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        self.list_each(kind, namespace, selector, Some).await
    }

    /// Lists a kind a page at a time, keeping of each object what `keep`
    /// returns: a thousand full objects never need to be in memory at once.
    pub async fn list_each<T>(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        selector: &str,
        mut keep: impl FnMut(Value) -> Option<T>,
    ) -> Result<Vec<T>, ClusterError> {
        let mut kept = Vec::new();
        let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
        loop {
            let page = self
                .api(kind, namespace)
                .list(&params)
                .await
                .map_err(|e| self.error(e, "list", kind, ""))?;
            for mut o in page.items {
                // Nothing rayform plans with reads them, and they are a third
                // of an object's size.
                o.metadata.managed_fields = None;
                // List items come without apiVersion/kind; give them theirs
                // so they compare equal to single GETs.
                let mut v = to_json(o);
                v["apiVersion"] = Value::String(kind.resource.api_version.clone());
                v["kind"] = Value::String(kind.resource.kind.clone());
                kept.extend(keep(v));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(kept),
            }
        }
    }

    /// Server-side apply; with `dry_run` the server answers what it would store.
    pub async fn apply(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
        how: Ssa<'_>,
    ) -> Result<Value, ClusterError> {
        let Ssa {
            manager,
            force,
            dry_run,
        } = how;
        let mut params = PatchParams::apply(manager);
        params.force = force;
        params.dry_run = dry_run;
        self.api(kind, namespace)
            .patch(name, &params, &Patch::Apply(body))
            .await
            .map(to_json)
            .map_err(|e| {
                self.error(
                    e,
                    if dry_run { "dry-run apply" } else { "apply" },
                    kind,
                    name,
                )
            })
    }

    /// JSON merge patch: how rayform edits fields of objects it does not own.
    pub async fn merge_patch(
        &self,
        kind: &Kind,
        name: &str,
        body: &Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ClusterError> {
        let params = PatchParams {
            field_manager: Some(manager.to_string()),
            dry_run,
            ..Default::default()
        };
        self.api(kind, None)
            .patch(name, &params, &Patch::Merge(body))
            .await
            .map(to_json)
            .map_err(|e| {
                self.error(
                    e,
                    if dry_run { "dry-run patch" } else { "patch" },
                    kind,
                    name,
                )
            })
    }

    /// Deletes an object, only if it is still the one rayform knows (`uid`).
    pub async fn delete(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), ClusterError> {
        let mut params = DeleteParams::background();
        if let Some(uid) = uid {
            params.preconditions = Some(kube::api::Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        match self.api(kind, namespace).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.error(e, "delete", kind, name)),
        }
    }

    /// Built-in objects rayform keeps for itself (the state Secret, the lock
    /// Lease), handled as their Rust types.
    fn typed<K: Builtin>(&self, namespace: &str) -> Api<K> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Api::namespaced(self.client.clone(), namespace)
    }

    pub async fn get_typed<K: Builtin>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, ClusterError> {
        self.typed::<K>(namespace)
            .get_opt(name)
            .await
            .map_err(|e| self.typed_error::<K>(e, "get", namespace, name))
    }

    pub async fn create_typed<K: Builtin>(
        &self,
        namespace: &str,
        object: &K,
    ) -> Result<K, ClusterError> {
        let name = object.meta().name.clone().unwrap_or_default();
        self.typed::<K>(namespace)
            .create(&PostParams::default(), object)
            .await
            .map_err(|e| self.typed_error::<K>(e, "create", namespace, &name))
    }

    /// Replaces an object; its `metadata.resourceVersion` makes this fail
    /// with a conflict if anyone wrote it since it was read.
    pub async fn replace_typed<K: Builtin>(
        &self,
        namespace: &str,
        object: &K,
    ) -> Result<K, ClusterError> {
        let name = object.meta().name.clone().unwrap_or_default();
        self.typed::<K>(namespace)
            .replace(&name, &PostParams::default(), object)
            .await
            .map_err(|e| self.typed_error::<K>(e, "update", namespace, &name))
    }

    /// Deletes an object rayform keeps for itself; one already gone is fine.
    pub async fn delete_typed<K: Builtin>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(), ClusterError> {
        match self
            .typed::<K>(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.typed_error::<K>(e, "delete", namespace, name)),
        }
    }

    /// Built-in objects in a namespace, whole, that match the list parameters
    /// (label and field selectors); the readiness wait reads pods and Events so.
    pub async fn list_typed<K: Builtin>(
        &self,
        namespace: &str,
        params: &ListParams,
    ) -> Result<Vec<K>, ClusterError> {
        self.typed::<K>(namespace)
            .list(params)
            .await
            .map(|list| list.items)
            .map_err(|e| self.typed_error::<K>(e, "list", namespace, ""))
    }

    /// The metadata (not the data) of objects rayform keeps for itself
    /// that carry a label selector.
    pub async fn list_meta_typed<K: Builtin>(
        &self,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<ObjectMeta>, ClusterError> {
        self.typed::<K>(namespace)
            .list_metadata(&ListParams::default().labels(selector))
            .await
            .map(|list| list.items.into_iter().map(|o| o.metadata).collect())
            .map_err(|e| self.typed_error::<K>(e, "list", namespace, ""))
    }

    fn typed_error<K: Builtin>(
        &self,
        e: kube::Error,
        verb: &str,
        namespace: &str,
        name: &str,
    ) -> ClusterError {
        let resource = format!("{} in namespace {namespace}", K::plural(&()));
        error::classify(e, verb, &resource, name, &self.id)
    }

    fn error(&self, e: kube::Error, verb: &str, kind: &Kind, name: &str) -> ClusterError {
        error::classify(e, verb, &kind.plural_name(), name, &self.id)
    }
}

async fn discover(client: &Client, id: &ClusterId) -> Result<Discovery, ClusterError> {
    match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => Ok(d),
        // Servers older than 1.26 have no aggregated discovery.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 406 => {
            Discovery::new(client.clone())
                .run()
                .await
                .map_err(|e| error::classify(e, "discover", "APIs", "", id))
        }
        Err(e) => Err(error::classify(e, "discover", "APIs", "", id)),
    }
}

/// A namespaced built-in kind with its Rust type (Secret, Lease).
pub trait Builtin:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
{
}

impl<K> Builtin for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
{
}

/// The object as JSON, its body moved rather than copied.
fn to_json(o: DynamicObject) -> Value {
    let DynamicObject {
        types,
        metadata,
        data,
    } = o;
    let mut v = match data {
        Value::Object(map) => Value::Object(map),
        _ => Value::Object(serde_json::Map::new()),
    };
    if let Some(t) = types {
        v["apiVersion"] = Value::String(t.api_version);
        v["kind"] = Value::String(t.kind);
    }
    v["metadata"] = serde_json::to_value(metadata).unwrap_or(Value::Null);
    v
}

/// A byte stream to a pod port, through the API server (what `kubectl port-forward` does).
pub trait PodStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PodStream for T {}

/// The latest word on a watched object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Followed {
    /// The newest version seen; `None` before the first or once deleted.
    pub object: Option<Value>,
    pub trouble: Option<WatchTrouble>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WatchTrouble {
    /// The watch broke and is being restarted (e.g. 410 Gone, a dropped connection).
    Retrying(String),
    /// It cannot work without the user changing something (401, 403, 404).
    Fatal(String),
}

impl Cluster {
    /// An API on the client without a read timeout, for watches (one request).
    fn stream_api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        self.api_on(&self.stream_client, kind, namespace)
    }

    /// Resolves once the object is gone: deleted, or (with `uid`) replaced by
    /// another of the same name. kube-runtime's `await_condition` on a watch,
    /// so a finalizer that takes minutes costs one request, not a GET a beat.
    pub async fn deleted(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), ClusterError> {
        use kube::runtime::wait::{await_condition, conditions};
        let api = self.stream_api(kind, namespace);
        let outcome = match uid {
            Some(uid) => await_condition(api, name, conditions::is_deleted(uid)).await,
            None => await_condition(api, name, |o: Option<&DynamicObject>| o.is_none()).await,
        };
        outcome.map(|_| ()).map_err(|e| {
            use kube::runtime::{wait::Error as Wait, watcher::Error as Watch};
            let resource = kind.plural_name();
            match e {
                Wait::ProbeFailed(
                    Watch::InitialListFailed(e)
                    | Watch::WatchStartFailed(e)
                    | Watch::WatchFailed(e),
                ) => error::classify(e, "watch", &resource, name, &self.id),
                other => ClusterError::Api {
                    verb: "watch".into(),
                    resource,
                    name: format!(" `{name}`"),
                    message: other.to_string(),
                },
            }
        })
    }

    /// Follows one object with a watch; the receiver always holds the latest
    /// version and says when the watch is in trouble. The watch stops when
    /// the receiver is dropped, or for good on an error no retry can fix.
    pub fn watch(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> tokio::sync::watch::Receiver<Followed> {
        use futures::StreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        let (tx, rx) = tokio::sync::watch::channel(Followed::default());
        let api = self.stream_api(kind, namespace);
        let what = format!(
            "watch {} `{name}`{}",
            kind.plural_name(),
            namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        );
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            loop {
                let event = tokio::select! {
                    () = tx.closed() => break,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                        tx.send_replace(Followed {
                            object: Some(to_json(o)),
                            trouble: None,
                        });
                    }
                    Some(Ok(watcher::Event::Delete(_))) => {
                        tx.send_replace(Followed::default());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let trouble = watch_trouble(&what, &e);
                        let fatal = matches!(trouble, WatchTrouble::Fatal(_));
                        tx.send_modify(|f| f.trouble = Some(trouble));
                        if fatal {
                            break;
                        }
                    }
                    None => break,
                }
            }
        });
        rx
    }

    /// Pods in a namespace with a label selector.
    pub async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Value>, ClusterError> {
        let kind = Kind {
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            namespaced: true,
        };
        self.list(&kind, Some(namespace), selector).await
    }

    /// Opens a stream to `port` of a pod, with the error the node reports
    /// for it (a refused connection arrives there, not on the stream).
    pub async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<PortForward, ClusterError> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.stream_client.clone(), namespace);
        let kind = Kind {
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
            namespaced: true,
        };
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut forwarder = pods
            .portforward(pod, &[port])
            .await
            .map_err(|e| self.error(e, "port-forward to", &kind, pod))?;
        let missing = || ClusterError::Api {
            verb: "port-forward to".into(),
            resource: "pods".into(),
            name: format!(" `{pod}`"),
            message: format!("no stream for port {port}"),
        };
        let stream = forwarder.take_stream(port).ok_or_else(missing)?;
        let error = forwarder.take_error(port).ok_or_else(missing)?;
        Ok(PortForward {
            stream: Box::new(stream),
            error: Box::pin(error),
        })
    }
}

/// One port-forwarded connection: its bytes, and the node's word if it fails.
pub struct PortForward {
    pub stream: Box<dyn PodStream>,
    /// Resolves with the node's message when the connection to the pod fails
    /// (e.g. "connection refused"); with `None` when the forward ends without one.
    pub error: std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>,
}

fn watch_trouble(what: &str, e: &kube::runtime::watcher::Error) -> WatchTrouble {
    use kube::runtime::watcher::Error as W;
    let status = match e {
        W::InitialListFailed(kube::Error::Api(s))
        | W::WatchStartFailed(kube::Error::Api(s))
        | W::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        W::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.code == 403 => WatchTrouble::Fatal(format!(
            "cannot {what}: forbidden ({}); rayform needs get, list and watch on it: ask for `watch` in your Role, or check with `kubectl auth can-i watch` for the resource",
            s.message
        )),
        Some(s) if s.code == 401 => WatchTrouble::Fatal(format!(
            "cannot {what}: unauthorized ({}); your credentials were refused: log in again or check the kubeconfig user",
            s.message
        )),
        Some(s) if s.code == 404 => WatchTrouble::Fatal(format!(
            "cannot {what}: not found ({}); is the CRD installed?",
            s.message
        )),
        Some(s) => WatchTrouble::Retrying(format!("{what}: {} {}", s.code, s.message)),
        None => WatchTrouble::Retrying(format!("{what}: {e}")),
    }
}
