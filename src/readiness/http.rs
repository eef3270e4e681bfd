//! A tiny HTTP/1.1 client over any byte stream, so the same code probes a
//! URL (a TCP connection) and a pod (a port-forward through the API server).
//! Every request carries its own deadline: a Serve proxy queues requests
//! until a replica exists, so a request without one can hang for minutes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;

use super::Endpoint;
use crate::cluster::{Cluster, PodStream};
use crate::util::format_duration;

/// Which of the head's ports a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum Port {
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
}

impl<'a> Ask<'a> {
    pub fn get(path: &'a str, timeout: Duration) -> Ask<'a> {
        Ask {
            method: "GET",
            path,
            body: None,
            timeout,
        }
    }
}

/// The wait's HTTP connections to the head pod, one per port, kept alive
/// for the whole wait: opening a port-forward is a round trip through the
/// API server and the node, most of what one look used to cost. A
/// connection that fails, times out or is closed is dropped and reopened on
/// the next request.
#[derive(Default)]
pub struct Connections {
    open: HashMap<(String, String, u16), Kept>,
}

/// One port-forwarded HTTP/1.1 connection, with the node's word on it.
struct Kept {
    sender: SendRequest<Full<Bytes>>,
    error: Pin<Box<dyn Future<Output = Option<String>> + Send>>,
}

impl Connections {
    /// Sends one request to the endpoint: over TCP to a URL, or through the
    /// kept port-forward to the head pod, where the node's error for the
    /// connection (e.g. "connection refused") is reported instead of a
    /// broken handshake.
    pub async fn send(
        &mut self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        port: Port,
        ask: Ask<'_>,
    ) -> Result<Answer, String> {
        let Ask {
            method,
            path,
            body,
            timeout,
        } = ask;
        let (namespace, pod, port) = match (endpoint, port) {
            (Endpoint::Url(url), Port::Serve) => {
                return to_url(url, method, path, body, timeout).await;
            }
            (Endpoint::Url(_), Port::Dashboard) => {
                return Err("no dashboard behind a URL endpoint".into());
            }
            (
                Endpoint::Pod {
                    namespace,
                    pod,
                    serve_port,
                    ..
                },
                Port::Serve,
            ) => (namespace, pod, *serve_port),
            (
                Endpoint::Pod {
                    namespace,
                    pod,
                    dashboard_port,
                    ..
                },
                Port::Dashboard,
            ) => (namespace, pod, *dashboard_port),
        };
        let key = (namespace.clone(), pod.clone(), port);
        let kept = match self.open.entry(key.clone()) {
            Entry::Occupied(e) if !e.get().sender.is_closed() => e.into_mut(),
            entry => {
                let fresh = open(cluster, namespace, pod, port, timeout).await?;
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert(fresh);
                        e.into_mut()
                    }
                    Entry::Vacant(e) => e.insert(fresh),
                }
            }
        };
        let request = build(method, path, body)?;
        let forward = format!("port-forward to {pod}:{port}");
        let (answer, usable) = exchange(kept, request, timeout, &forward).await;
        if !usable {
            self.open.remove(&key);
        }
        answer
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
        let mut request = build(method, path, body)?;
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
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    req.body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| format!("bad request: {e}"))
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
