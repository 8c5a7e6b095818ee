//! The HTTP edge on hyper: `/mcp` (rmcp's Streamable HTTP service behind bearer auth, a body
//! cap and a session cap), `/healthz`, `/readyz` and `/metrics`, plus the optional admin
//! listener that serves only the last three. Host and Origin checks against DNS rebinding are
//! rmcp's, configured from `server.allowed_hosts` / `allowed_origins`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use super::{Identity, Server};
use crate::circus::{CircusClient, Command};
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The request head rmcp hands to handlers (they find [`Identity`] in its extensions).
pub type Parts = http::request::Parts;
type Body = BoxBody<Bytes, Infallible>;

/// A client has this long to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at once on the admin listener.
const ADMIN_CONNECTIONS: usize = 16;

/// Bearer tokens, stored as SHA-256 digests so comparison time does not depend on length or
/// on how much of a token matches.
struct Tokens(Vec<([u8; 32], Identity)>);

impl Tokens {
    fn identify(&self, presented: &[u8]) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (d, id) in &self.0 {
            // Every entry is compared; no early exit.
            if bool::from(d.ct_eq(&digest)) {
                found = Some(id.clone());
            }
        }
        found
    }
}

struct Edge {
    mcp: StreamableHttpService<Server, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    tokens: Tokens,
    max_body: usize,
    max_sessions: usize,
    probes: Probes,
}

/// `/healthz`, `/readyz` and `/metrics`: unauthenticated, read-only, served on both listeners.
#[derive(Clone)]
struct Probes {
    circus: CircusClient,
    metrics: Metrics,
}

impl Probes {
    async fn answer(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        if req.method() != Method::GET {
            return None;
        }
        Some(match req.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok"),
            "/readyz" => match self.circus.call(Command::Status { name: None }).await {
                Ok(_) => plain(StatusCode::OK, "ready: circusd answers"),
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {e}")),
            },
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())).boxed());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => return None,
        })
    }
}

/// Serves only the probes and metrics on `listener` until `stop` is cancelled.
pub async fn serve_admin(listener: TcpListener, metrics: Metrics, circus: CircusClient, stop: CancellationToken) {
    let probes = Probes { circus, metrics };
    accept_loop(listener, ADMIN_CONNECTIONS, stop, move |req| {
        let probes = probes.clone();
        async move { probes.answer(&req).await.unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found")) }
    })
    .await
}

/// Serves HTTP on `listener` until `stop` is cancelled.
pub async fn serve(
    server: Server,
    cfg: &ServerConfig,
    circus: CircusClient,
    metrics: Metrics,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let sessions = Arc::new(LocalSessionManager::default());
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(cfg.allowed_hosts.clone())
        .with_allowed_origins(cfg.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(cfg.max_body_bytes)
        .with_cancellation_token(stop.child_token());
    let mcp = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), mcp_config);
    let edge = Arc::new(Edge {
        mcp,
        sessions,
        tokens: Tokens(
            cfg.tokens.iter().map(|t| (Sha256::digest(t.token.as_bytes()).into(), Identity(t.identity.clone()))).collect(),
        ),
        max_body: cfg.max_body_bytes,
        max_sessions: cfg.max_sessions,
        probes: Probes { circus, metrics },
    });
    // The session gauge is also read on the admin listener, which cannot see the sessions:
    // refresh it every second here.
    let (sessions, gauge, ticker_stop) = (edge.sessions.clone(), edge.probes.metrics.http_sessions.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker_stop.cancelled() => return,
                _ = tick.tick() => gauge.set(sessions.sessions.read().await.len() as i64),
            }
        }
    });
    accept_loop(listener, cfg.max_connections, stop, move |req| {
        let edge = edge.clone();
        async move { edge.route(req).await }
    })
    .await;
    Ok(())
}

/// Accepts connections (at most `limit` open; more are closed at once) and serves each with
/// `handle` until `stop` is cancelled. Request heads must arrive within [`HEADER_READ_TIMEOUT`].
async fn accept_loop<F, Fut>(listener: TcpListener, limit: usize, stop: CancellationToken, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limit));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing the new connection");
            continue;
        };
        let handle = handle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let fut = handle(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with an error") },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

impl Edge {
    async fn route(&self, mut req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/metrics" {
            self.probes.metrics.http_sessions.set(self.sessions.sessions.read().await.len() as i64);
        }
        if let Some(r) = self.probes.answer(&req).await {
            return r;
        }
        match (req.method(), req.uri().path()) {
            (_, "/mcp") => {
                if let Err(r) = self.admit(&mut req).await {
                    return r;
                }
                match self.mcp.clone().call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
            _ => plain(StatusCode::NOT_FOUND, "not found: the MCP endpoint is /mcp"),
        }
    }

    /// Authentication, body and session caps. Attaches the caller's [`Identity`].
    async fn admit(&self, req: &mut Request<Incoming>) -> Result<(), Response<Body>> {
        if !self.tokens.0.is_empty() {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .and_then(|t| self.tokens.identify(t));
            let Some(identity) = presented else {
                let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <token>");
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Err(r);
            };
            req.extensions_mut().insert(identity);
        }
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {} bytes", self.max_body)));
        }
        let new_session = req.method() == Method::POST && !req.headers().contains_key("mcp-session-id");
        if new_session && self.sessions.sessions.read().await.len() >= self.max_sessions {
            return Err(plain(StatusCode::SERVICE_UNAVAILABLE, "session limit reached; close a session and retry"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_exactly() {
        let t = Tokens(vec![
            (Sha256::digest(b"token-one-0123456789").into(), Identity("one".into())),
            (Sha256::digest(b"token-two-0123456789").into(), Identity("two".into())),
        ]);
        assert_eq!(t.identify(b"token-two-0123456789"), Some(Identity("two".into())));
        assert_eq!(t.identify(b"token-two-012345678"), None);
        assert_eq!(t.identify(b""), None);
    }
}
