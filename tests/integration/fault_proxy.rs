//! A fault proxy in front of a test API server, for answers lost on the way
//! back: the server did the work, the client never heard.
//!
//! rayform talks plain HTTP to the proxy (a kubeconfig of its own, see
//! [`FaultProxy::kubeconfig`]); the proxy sends each request on over the
//! API server's TLS with the test cluster's admin client certificate (the
//! proxy is a `kube::Client`, so it authenticates as the tests do). Inside
//! TLS a plain relay could not tell one request from another; here each is
//! seen whole. For a request the test names, the proxy waits for the whole
//! answer (the write has landed) and then closes the connection without
//! sending it. Answers are passed on whole, not streamed: a watch through
//! the proxy would wait for its end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

/// Which requests lose their answer: the first `times` with this method and path.
pub struct Drop {
    pub method: Method,
    pub path: String,
    pub times: usize,
}

pub struct FaultProxy {
    kubeconfig: PathBuf,
    dropped: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    /// Starts a proxy to the API server `kubeconfig` names.
    pub async fn start(kubeconfig: &Path, drop: Drop) -> FaultProxy {
        let client = crate::support::client(kubeconfig, None).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let dir = tempfile::tempdir().expect("tempdir");
        let own = dir.path().join("kubeconfig");
        std::fs::write(
            &own,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: proxy\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\ncurrent-context: proxy\n"
            ),
        )
        .expect("write the proxy's kubeconfig");
        let dropped = Arc::new(AtomicUsize::new(0));
        let rule = Arc::new(Rule {
            drop,
            seen: AtomicUsize::new(0),
            dropped: dropped.clone(),
        });
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, rule) = (client.clone(), rule.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(client.clone(), rule.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            kubeconfig: own,
            dropped,
            server,
            _dir: dir,
        }
    }

    /// A kubeconfig that reaches the API server through the proxy.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// How many answers the proxy has dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl std::ops::Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Rule {
    drop: Drop,
    /// Matching requests seen so far.
    seen: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

impl Rule {
    /// Whether this request's answer is to be lost.
    fn fires(&self, method: &Method, path: &str) -> bool {
        *method == self.drop.method
            && path == self.drop.path
            && self.seen.fetch_add(1, Ordering::SeqCst) < self.drop.times
    }
}

type Answer = Response<http_body_util::Full<bytes::Bytes>>;

async fn forward(
    client: kube::Client,
    rule: Arc<Rule>,
    request: Request<Incoming>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let lose = rule.fires(&parts.method, parts.uri.path());
    parts.headers.remove(hyper::header::HOST);
    let answer = client
        .send(Request::from_parts(parts, kube::client::Body::from(body)))
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return Ok(failure(&e)),
    };
    let (parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    if lose {
        rule.dropped.fetch_add(1, Ordering::SeqCst);
        // An error from the service closes the connection unanswered.
        return Err("the answer is dropped on purpose".into());
    }
    Ok(Response::from_parts(parts, http_body_util::Full::new(body)))
}

/// The API server could not be reached: a 502, as a real proxy answers.
fn failure(e: &kube::Error) -> Answer {
    let mut answer = Response::new(http_body_util::Full::new(bytes::Bytes::from(e.to_string())));
    *answer.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    answer
}
