//! A tiny HTTP/1.1 client over any byte stream, so the same code probes a
//! URL (a TCP connection) and a pod (a port-forward through the API server).
//! Every request carries its own deadline: a Serve proxy queues requests
//! until a replica exists, so a request without one can hang for minutes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use super::Endpoint;
use crate::cluster::{Cluster, PodStream};
use crate::util::format_duration;

/// Which of the head's ports a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum Port {
    Serve,
    Dashboard,
}

/// Sends one request to the endpoint: over TCP to a URL, or through a
/// port-forward to the head pod, where the node's error for the connection
/// (e.g. "connection refused") is reported instead of a broken handshake.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    port: Port,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, String> {
    match (endpoint, port) {
        (Endpoint::Url(url), Port::Serve) => {
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
            let stream =
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await
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
            let port = match port {
                Port::Serve => *serve_port,
                Port::Dashboard => *dashboard_port,
            };
            let forward = tokio::time::timeout(timeout, cluster.port_forward(namespace, pod, port))
                .await
                .map_err(|_| {
                    format!(
                        "port-forward to {pod}:{port} did not open within {}",
                        format_duration(timeout)
                    )
                })?
                .map_err(|e| e.to_string())?;
            let exchange = request(forward.stream, "localhost", method, path, body, timeout);
            let mut error = forward.error;
            tokio::pin!(exchange);
            tokio::select! {
                answer = &mut exchange => answer,
                said = &mut error => match said {
                    Some(message) => Err(format!("port-forward to {pod}:{port}: {message}")),
                    // The forward closed without a word; the exchange says how it ended.
                    None => exchange.await,
                },
            }
        }
    }
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
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
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
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", format_duration(timeout))))
}
