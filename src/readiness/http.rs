//! A tiny HTTP/1.1 client over any byte stream, so the same code probes a
//! URL (a TCP connection) and a pod (a port-forward through the API server).
//! Every request carries its own deadline: a Serve proxy queues requests
//! until a replica exists, so a request without one can hang for minutes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;

use super::Endpoint;
use crate::cluster::{Cluster, PodStream};
use crate::secret::SecretValue;
use crate::util::format_duration;

/// Which of the head's ports a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Serve,
    Dashboard,
}

/// One request, with its own deadline.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a str>,
    pub timeout: Duration,
    /// The Ray dashboard's token ([`super::auth`]), for the dashboard only.
    pub token: Option<&'a SecretValue>,
}

impl<'a> Ask<'a> {
    pub fn get(path: &'a str, timeout: Duration) -> Ask<'a> {
        Ask {
            method: "GET",
            path,
            body: None,
            timeout,
            token: None,
        }
    }

    pub fn with_token(self, token: Option<&'a SecretValue>) -> Ask<'a> {
        Ask { token, ..self }
    }
}

/// The wait's HTTP connections to the head pod, one per port, kept alive
/// for the whole wait: opening a port-forward is a round trip through the
/// API server and the node, most of what one look used to cost. A
/// connection that fails, times out or is closed is dropped and reopened on
/// the next request; one to another pod (a new head) replaces it.
///
/// One slot per port, as separate fields, so that a look can ask the
/// dashboard and Serve's proxy at the same time (an HTTP/1.1 connection
/// carries one request at a time; two ports are two connections).
pub struct Connections {
    pub(super) dashboard: Slot,
    pub(super) serve: Slot,
    /// The dashboard's token, read once a head pod.
    pub(super) tokens: super::auth::Tokens,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            dashboard: Slot::new(Port::Dashboard),
            serve: Slot::new(Port::Serve),
            tokens: super::auth::Tokens::default(),
        }
    }
}

/// The kept connection to one port of the head pod, if one is open.
pub struct Slot {
    port: Port,
    kept: Option<((String, String, u16), Kept)>,
}

/// One port-forwarded HTTP/1.1 connection, with the node's word on it.
struct Kept {
    sender: SendRequest<Full<Bytes>>,
    error: Pin<Box<dyn Future<Output = Option<String>> + Send>>,
}

impl Slot {
    fn new(port: Port) -> Slot {
        Slot { port, kept: None }
    }

    /// Whether a connection from an earlier request is open, and to this
    /// endpoint's pod: the next request on it costs no port-forward.
    pub fn is_open_to(&self, endpoint: &Endpoint) -> bool {
        match (&self.kept, target(endpoint, self.port)) {
            (Some((open_to, kept)), Ok(To::Pod(key))) => {
                *open_to == key && !kept.sender.is_closed()
            }
            _ => false,
        }
    }

    /// Sends one request to the endpoint: over TCP to a URL, or through the
    /// kept port-forward to the head pod, where the node's error for the
    /// connection (e.g. "connection refused") is reported instead of a
    /// broken handshake.
    pub async fn send(
        &mut self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        ask: Ask<'_>,
    ) -> Result<Answer, String> {
        let Ask {
            method,
            path,
            body,
            timeout,
            token,
        } = ask;
        let key = match target(endpoint, self.port)? {
            To::Url(url) => return to_url(url, method, path, body, timeout).await,
            To::Pod(key) => key,
        };
        let kept = match &mut self.kept {
            Some((open_to, kept)) if *open_to == key && !kept.sender.is_closed() => kept,
            slot => {
                // Dropped before the new one opens: a replaced head keeps no forward.
                *slot = None;
                let (namespace, pod, port) = &key;
                let fresh = open(cluster, namespace, pod, *port, timeout).await?;
                &mut slot.insert((key.clone(), fresh)).1
            }
        };
        // Serve's proxy checks no token: one is never sent past the dashboard.
        let token = token.filter(|_| self.port == Port::Dashboard);
        let request = build(method, path, body, token)?;
        let forward = format!("port-forward to {}:{}", key.1, key.2);
        let sent = std::time::Instant::now();
        let (answer, usable) = exchange(kept, request, timeout, &forward).await;
        tracing::trace!(%forward, path, took = ?sent.elapsed(), "answered");
        if !usable {
            self.kept = None;
        }
        answer
    }
}

/// Where a request to one port of an endpoint goes.
enum To<'a> {
    Url(&'a str),
    /// `(namespace, pod, port)`, through a port-forward.
    Pod((String, String, u16)),
}

fn target(endpoint: &Endpoint, port: Port) -> Result<To<'_>, String> {
    match (endpoint, port) {
        (Endpoint::Url(url), Port::Serve) => Ok(To::Url(url)),
        (Endpoint::Url(_), Port::Dashboard) => Err("no dashboard behind a URL endpoint".into()),
        (
            Endpoint::Pod {
                namespace,
                pod,
                serve_port,
                dashboard_port,
            },
            port,
        ) => {
            let number = match port {
                Port::Serve => *serve_port,
                Port::Dashboard => *dashboard_port,
            };
            Ok(To::Pod((namespace.clone(), pod.clone(), number)))
        }
    }
}

async fn open(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    port: u16,
    timeout: Duration,
) -> Result<Kept, String> {
    let forward = tokio::time::timeout(timeout, cluster.port_forward(namespace, pod, port))
        .await
        .map_err(|_| {
            format!(
                "port-forward to {pod}:{port} did not open within {}",
                format_duration(timeout)
            )
        })?
        .map_err(|e| e.to_string())?;
    let (sender, connection) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(forward.stream)),
    )
    .await
    .map_err(|_| format!("no HTTP handshake within {}", format_duration(timeout)))?
    .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(connection);
    Ok(Kept {
        sender,
        error: forward.error,
    })
}

/// One request on a kept connection; the flag says whether it may carry the next.
async fn exchange(
    kept: &mut Kept,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
    forward: &str,
) -> (Result<Answer, String>, bool) {
    let Kept { sender, error } = kept;
    let answered = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        read(response).await
    };
    let outcome = tokio::time::timeout(timeout, async {
        tokio::select! {
            answer = answered => (answer, true),
            // The node's word ends this connection; it cannot be asked twice.
            said = error => match said {
                Some(message) => (Err(format!("{forward}: {message}")), false),
                None => (Err(format!("{forward}: closed")), false),
            },
        }
    })
    .await;
    match outcome {
        Ok((Ok(answer), usable)) => (Ok(answer), usable),
        Ok((Err(e), _)) => (Err(e), false),
        // A late answer would be read as the next request's: never reuse.
        Err(_) => (
            Err(format!("no answer within {}", format_duration(timeout))),
            false,
        ),
    }
}

async fn to_url(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let address = if authority.contains(':') {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot connect to {address} within {}",
                format_duration(timeout)
            ));
        }
    };
    request(Box::new(stream), &authority, method, path, body, timeout).await
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Sends one request on `stream` and reads the answer, within `timeout`.
pub async fn request(
    stream: Box<dyn PodStream>,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        tokio::spawn(connection);
        let mut request = build(method, path, body, None)?;
        if let Ok(host) = http::HeaderValue::from_str(host) {
            request.headers_mut().insert("host", host);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        read(response).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", format_duration(timeout))))
}

fn build(
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&SecretValue>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(token) = token {
        req = req.header("x-ray-authorization", bearer(token)?);
    }
    req.body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| format!("bad request: {e}"))
}

/// `Bearer <token>`, as KubeRay's dashboard client sends it, marked
/// sensitive so that no `Debug` of the request shows it.
fn bearer(token: &SecretValue) -> Result<http::HeaderValue, String> {
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token.expose());
    let mut header = http::HeaderValue::from_bytes(&value).map_err(|_| {
        "the Ray dashboard's token holds bytes an HTTP header cannot carry".to_string()
    })?;
    header.set_sensitive(true);
    Ok(header)
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_token_is_sent_as_kuberay_sends_it_and_never_shown() {
        let token = SecretValue::new(b"s3cr3t-dashboard-token".to_vec());
        let request = build("GET", "/api/serve/applications/", None, Some(&token)).expect("built");
        let header = request
            .headers()
            .get("x-ray-authorization")
            .expect("the token rides in KubeRay's header");
        assert_eq!(header.as_bytes(), b"Bearer s3cr3t-dashboard-token");
        assert!(header.is_sensitive());
        assert!(!format!("{request:?}").contains("s3cr3t"), "{request:?}");
        let plain = build("GET", "/-/routes", None, None).expect("built");
        assert!(plain.headers().get("x-ray-authorization").is_none());
        let broken = SecretValue::new(b"line\nbreak".to_vec());
        let e = build("GET", "/", None, Some(&broken)).expect_err("no newline in a header");
        assert!(!e.contains("line"), "{e}");
    }

    /// A dashboard stand-in that demands the token, as Ray's middleware does
    /// (401 without one, 403 for a wrong one), over a real TCP connection.
    #[tokio::test]
    async fn a_stand_in_that_demands_the_token_lets_it_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let status = match req
                        .headers()
                        .get("x-ray-authorization")
                        .map(|v| v.as_bytes())
                    {
                        None => 401,
                        Some(b"Bearer right") => 200,
                        Some(_) => 403,
                    };
                    let answer = http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()));
                    answer.map_err(|e| e.to_string())
                },
            );
            while let Ok((stream, _)) = listener.accept().await {
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        let ask = |token: Option<&SecretValue>| {
            let request = build("GET", "/api/serve/applications/", None, token).expect("built");
            async move {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                let response = sender.send_request(request).await.expect("answer");
                read(response).await.expect("read").status
            }
        };
        assert_eq!(ask(None).await, 401);
        assert_eq!(ask(Some(&SecretValue::new(b"wrong".to_vec()))).await, 403);
        assert_eq!(ask(Some(&SecretValue::new(b"right".to_vec()))).await, 200);
    }

    fn pod() -> Endpoint {
        Endpoint::Pod {
            namespace: "ns".into(),
            pod: "head".into(),
            serve_port: 8000,
            dashboard_port: 8265,
        }
    }

    #[test]
    fn each_port_of_a_head_is_its_own_connection() {
        let key = |port| match target(&pod(), port) {
            Ok(To::Pod(key)) => key,
            _ => panic!("a pod endpoint is reached by port-forward"),
        };
        assert_eq!(key(Port::Serve), ("ns".into(), "head".into(), 8000));
        assert_eq!(key(Port::Dashboard), ("ns".into(), "head".into(), 8265));
    }

    #[test]
    fn a_url_serves_requests_but_has_no_dashboard() {
        let url = Endpoint::Url("http://gw:8080".into());
        assert!(matches!(
            target(&url, Port::Serve),
            Ok(To::Url("http://gw:8080"))
        ));
        assert!(target(&url, Port::Dashboard).is_err());
    }

    #[test]
    fn a_slot_with_nothing_open_is_open_to_no_one() {
        let connections = Connections::default();
        assert!(!connections.dashboard.is_open_to(&pod()));
        assert!(!connections.serve.is_open_to(&pod()));
    }
}
