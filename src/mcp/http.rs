//! The HTTP edge on hyper: `/mcp` (rmcp's Streamable HTTP service behind bearer auth, a body
//! cap and a session cap), `/healthz`, `/readyz` and `/metrics`, plus the optional admin
//! listener that serves only the last three. Host and Origin checks against DNS rebinding are
//! rmcp's, configured from `server.allowed_hosts` / `allowed_origins`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
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

use std::sync::atomic::AtomicUsize;

use super::{Identity, Server, follow};
use crate::circus::{CircusClient, Command, WatcherName};
use crate::config::ServerConfig;
use crate::isolation::Isolation;
use crate::metrics::Metrics;
use crate::policy::Action;
use crate::request::Warden;

/// The request head rmcp hands to handlers (they find [`Identity`] in its extensions).
pub type Parts = http::request::Parts;
pub(super) type Body = BoxBody<Bytes, Infallible>;

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
    warden: Warden,
    followers: Arc<AtomicUsize>,
    allowed_hosts: Vec<String>,
    sessions: Arc<LocalSessionManager>,
    tokens: Tokens,
    max_body: usize,
    max_sessions: usize,
    default_identity: String,
    probes: Probes,
}

/// `/healthz`, `/readyz` and `/metrics`: unauthenticated, read-only, served on both listeners.
#[derive(Clone)]
struct Probes {
    circus: CircusClient,
    metrics: Metrics,
    isolation: Isolation,
}

impl Probes {
    async fn answer(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        if req.method() != Method::GET {
            return None;
        }
        Some(match req.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok"),
            "/readyz" => match self.circus.call(Command::Status { name: None }).await {
                Ok(_) => plain(StatusCode::OK, &format!("ready: circusd answers\nisolation: {}", self.isolation.get().summary())),
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {e}")),
            },
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())).boxed());
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                r
            }
            _ => return None,
        })
    }
}

/// Serves only the probes and metrics on `listener` until `stop` is cancelled.
pub async fn serve_admin(listener: TcpListener, metrics: Metrics, circus: CircusClient, isolation: Isolation, stop: CancellationToken) {
    let probes = Probes { circus, metrics, isolation };
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
    isolation: Isolation,
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
    let warden = server.warden().clone();
    let mcp = StreamableHttpService::new(move || Ok(server.for_session()), sessions.clone(), mcp_config);
    let edge = Arc::new(Edge {
        mcp,
        warden,
        followers: Arc::default(),
        allowed_hosts: cfg.allowed_hosts.clone(),
        sessions,
        tokens: Tokens(cfg.tokens.iter().map(|t| (Sha256::digest(t.token.as_bytes()).into(), Identity(t.identity.clone()))).collect()),
        max_body: cfg.max_body_bytes,
        max_sessions: cfg.max_sessions,
        default_identity: cfg.default_identity.clone(),
        probes: Probes { circus, metrics, isolation },
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

pub(super) fn plain(status: StatusCode, text: &str) -> Response<Body> {
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
            (&Method::GET, path) if path.starts_with("/logs/") => self.logs(req).await,
            _ => plain(StatusCode::NOT_FOUND, "not found: the MCP endpoint is /mcp; output is at /logs/{name}"),
        }
    }

    /// `GET /logs/{name}`: the same tokens and Host check as `/mcp`, and the policy's read gate.
    async fn logs(&self, mut req: Request<Incoming>) -> Response<Body> {
        if let Err(r) = self.authenticate(&mut req) {
            return r;
        }
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let bare = host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
        let bare = bare.trim_start_matches('[').trim_end_matches(']');
        if !self.allowed_hosts.iter().any(|a| a == bare) {
            return plain(StatusCode::FORBIDDEN, "forbidden: Host is not in server.allowed_hosts");
        }
        if req.headers().contains_key(header::ORIGIN) {
            return plain(StatusCode::FORBIDDEN, "forbidden: /logs is not served to browsers");
        }
        let Some(logs) = &self.warden.logs else {
            return plain(StatusCode::NOT_FOUND, "output capture is off in this warden");
        };
        let name = req.uri().path().trim_start_matches("/logs/");
        let Some(name) = WatcherName::parse(name) else {
            return plain(StatusCode::BAD_REQUEST, "bad watcher name: 1-64 lower-case letters, digits, '_' and '-'");
        };
        let identity = req.extensions().get::<Identity>().cloned().unwrap_or_else(|| Identity(self.default_identity.clone()));
        let read = Action::Read { tool: "get_logs".into() };
        if let Err(e) = self.warden.gate.admit(&self.warden.client, &identity.0, read).await {
            return plain(StatusCode::FORBIDDEN, &format!("forbidden: {}", e.message));
        }
        let sse = req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
        match follow::Params::parse(req.uri().query(), sse) {
            Ok(p) => follow::respond(logs, &self.followers, &self.probes.metrics, name.as_str(), p),
            Err(e) => plain(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
        }
    }

    /// Checks the bearer token (when tokens are configured) and attaches its [`Identity`].
    fn authenticate(&self, req: &mut Request<Incoming>) -> Result<(), Response<Body>> {
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
        Ok(())
    }

    /// Authentication, body and session caps. Attaches the caller's [`Identity`].
    async fn admit(&self, req: &mut Request<Incoming>) -> Result<(), Response<Body>> {
        self.authenticate(req)?;
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
