//! `circus-warden serve`: wires circusd (external or embedded), the client, the process view,
//! the gate and the chosen transport together, and shuts them down in order.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::circus::client::Limits;
use crate::circus::events::{CrashLoop, ProcessView, follow};
use crate::circus::supervisor::{Layout, find_circusd, supervise};
use crate::circus::{CircusClient, Command, Endpoints};
use crate::config::{Config, Transport};
use crate::isolation::{ControlPlane, Isolation, Level};
use crate::mcp::{self, Identity, Server};
use crate::metrics::Metrics;
use crate::output::store::{Caps, Store};
use crate::output::{Files, Logs, ReadLimits, tail};
use crate::policy::Policy;
use crate::policy::reload::ActivePolicy;
use crate::request::admission::AdmissionLock;
use crate::request::{Gate, Warden};

/// How long the server keeps running after the last call in flight returned, so that its
/// answer is written out before the listener closes.
const FLUSH_AFTER_DRAIN: Duration = Duration::from_millis(500);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Group-shared, never world-accessible: what the warden and the embedded circusd create
    // (output directories, positions, audit log) is closed to the managed processes' uid.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o007) };
    let stop = CancellationToken::new();
    let metrics = Metrics::new();
    // The policy and the audit log come first: without them nothing may run.
    let policy = Policy::load(&config.policy.path).map_err(|e| anyhow::anyhow!("cannot load the policy:\n{e}"))?;
    tracing::info!(path = %config.policy.path.display(), hash = %policy.hash, "policy loaded");
    let policy = ActivePolicy::new(config.policy.path.clone(), policy, metrics.clone());
    tokio::spawn(policy.clone().watch(Duration::from_millis(config.policy.reload_interval_ms), stop.clone()));
    let audit = Audit::open(&config.audit, metrics.clone()).context("cannot open the audit log")?;

    let mut supervisor = None;
    let mut plane = ControlPlane::of(&config);
    let endpoints = match &config.circus.endpoint {
        Some(control) => Endpoints { control: control.clone(), pubsub: config.circus.pubsub_endpoint.clone() },
        None => {
            let program = find_circusd(config.circus.circusd_path.as_deref()).map_err(anyhow::Error::msg)?;
            let layout =
                Layout::create(config.circus.runtime_dir.as_deref()).context("cannot create the private runtime directory for circusd")?;
            tracing::info!(circusd = %program.display(), runtime_dir = %layout.runtime_dir.display(), "starting the embedded circusd");
            let endpoints = layout.endpoints.clone();
            plane.dirs.push(layout.runtime_dir.clone());
            supervisor = Some(tokio::spawn(supervise(program, layout, config.circus.clone(), stop.clone())));
            endpoints
        }
    };

    let client = CircusClient::start(&endpoints.control, Limits::from(&config.circus), Some(metrics.circus_call_seconds.clone()))
        .context("cannot start the circus client")?;
    let crash_loop =
        CrashLoop { restarts: config.circus.crash_loop_restarts as usize, window_s: f64::from(config.circus.crash_loop_window_s) };
    let view = ProcessView::new(Some(metrics.clone()), crash_loop);
    let interval = Duration::from_millis(config.circus.reconcile_interval_ms);
    tokio::spawn(follow(client.clone(), endpoints.pubsub.clone(), view.clone(), interval, stop.clone()));
    let required = config.isolation.require;
    if supervisor.is_some() || required > Level::None {
        wait_ready(&client, Duration::from_secs(10)).await;
    }

    let output = start_output(&config, &metrics)?;
    let isolation = Isolation::new(required);
    let first = isolation.refresh(&client, &policy.get(), &plane, &metrics).await;
    if first.level < required {
        anyhow::bail!("isolation.require is {}, but the isolation level is {}", required.as_str(), first.summary());
    }
    tokio::spawn(isolation.clone().watch(client.clone(), policy.clone(), plane, metrics.clone(), interval, stop.clone()));

    let admission = AdmissionLock::for_endpoint(&endpoints.control);
    match admission.path() {
        Some(path) => {
            tracing::info!(lock = %path.display(), "changes are admitted under this lock, shared with every warden of this circusd")
        }
        None => tracing::warn!(
            endpoint = %endpoints.control,
            "circusd listens on tcp: caps hold only if this is the only warden changing it (docs/policy.md, Caps)"
        ),
    }
    let mut gate = Gate::new(policy, audit, isolation.clone(), admission, config.circus.mutation_timeout(), metrics.clone());
    let (logs, tailer) = match output {
        Some((logs, files, tailer)) => {
            gate.output = Some(files);
            (Some(logs), Some(tailer))
        }
        None => (None, None),
    };
    let warden = Warden { client: client.clone(), view, gate, metrics: metrics.clone(), logs };
    if let Some(addr) = config.server.metrics_bind {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "admin endpoints: /metrics /healthz /readyz");
        tokio::spawn(mcp::http::serve_admin(listener, metrics.clone(), client.clone(), isolation.clone(), stop.clone()));
    }
    let gate = warden.gate.clone();
    let server = Server::new(warden, Identity(config.server.default_identity.clone()));
    let serving = async {
        match config.server.transport {
            Transport::Stdio => {
                eprintln!(
                    "circus-warden: serving MCP on stdin/stdout (circusd at {}).\n\
                     Connect an MCP client by having it run this command, e.g.\n  \
                     npx @modelcontextprotocol/inspector {} serve --transport stdio",
                    endpoints.control,
                    std::env::args().next().unwrap_or_else(|| "circus-warden".into()),
                );
                mcp::serve_stdio(server).await
            }
            Transport::Http => {
                let listener = tokio::net::TcpListener::bind(config.server.bind)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.bind))?;
                let addr = listener.local_addr()?;
                let auth = if config.server.tokens.is_empty() { "" } else { " --header 'Authorization: Bearer <token>'" };
                eprintln!(
                    "circus-warden: MCP (Streamable HTTP) at http://{addr}/mcp  (circusd at {})\n\
                     health: http://{addr}/healthz  readiness: http://{addr}/readyz\n\
                     Connect an MCP client to that URL, e.g.\n  \
                     npx @modelcontextprotocol/inspector --cli http://{addr}/mcp --transport http{auth} --method tools/list",
                    endpoints.control
                );
                mcp::http::serve(server, &config.server, client.clone(), metrics.clone(), isolation.clone(), listener, stop.clone()).await
            }
        }
    };
    tokio::pin!(serving);
    let result = tokio::select! {
        r = &mut serving => r,
        _ = shutdown_signal() => {
            // Keep serving while the calls in flight finish, so their clients get answers.
            let grace = Duration::from_millis(config.server.shutdown_grace_ms);
            tracing::info!(grace_ms = config.server.shutdown_grace_ms, "shutting down: refusing new calls, finishing those in flight");
            tokio::select! {
                r = &mut serving => r,
                () = async {
                    gate.close(grace).await;
                    // A handler has returned, but its answer may still be on its way into the
                    // response stream: serve a moment longer so it reaches the client.
                    tokio::time::sleep(FLUSH_AFTER_DRAIN).await;
                } => Ok(()),
            }
        }
    };
    tracing::info!("shutting down");
    stop.cancel();
    if let Some((flag, handle)) = tailer {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    result
}

type TailerHandle = (Arc<AtomicBool>, std::thread::JoinHandle<()>);

/// Creates the output directory, the store and the tailer thread (when capture is on).
fn start_output(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<(Logs, Files, TailerHandle)>> {
    let o = &config.output;
    if !o.enabled {
        tracing::warn!("output capture is off: circusd discards the processes' output");
        return Ok(None);
    }
    let dir = o.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    close_to_others(&dir);
    let caps = Caps { stream: o.stream_cap_bytes, global: o.global_cap_bytes, max_watchers: o.max_watchers };
    let store = Store::new(caps, o.alerting().map_err(anyhow::Error::msg)?, Some(metrics.clone()));
    let limits = ReadLimits {
        max_entries: o.max_read_entries,
        max_bytes: o.max_read_bytes,
        max_followers: o.max_followers,
        notify_interval: Duration::from_millis(o.notify_interval_ms),
    };
    let logs = Logs::new(store, limits);
    let settings = tail::Settings {
        dir: dir.clone(),
        poll: Duration::from_millis(o.poll_interval_ms),
        flush_after: Duration::from_millis(o.flush_after_ms),
        checkpoint_every: Duration::from_millis(o.checkpoint_interval_ms),
        max_line: o.max_line_bytes,
        backup_count: o.backup_count,
        inotify: o.inotify,
    };
    let tailer = tail::Tailer::new(settings, logs.clone(), o.classifier().map_err(anyhow::Error::msg)?)
        .with_context(|| format!("cannot follow {}", dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new().name("output-tailer".into()).spawn(move || tailer.run(flag))?;
    tracing::info!(dir = %dir.display(), "following process output");
    let files = Files { dir, max_bytes: o.max_file_bytes, backup_count: o.backup_count };
    Ok(Some((logs, files, (stop, handle))))
}

/// Takes every permission for "others" off a directory the warden owns: managed processes
/// run under a uid of their own and must not enter the output directory.
fn close_to_others(dir: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(dir) else { return };
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o007 != 0 {
        let mode = meta.mode() & 0o7770;
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => tracing::info!(dir = %dir.display(), mode = format!("{mode:o}"), "closed the output directory to other users"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot close the output directory to other users"),
        }
    }
}

/// Waits until circusd answers, so a freshly started warden is ready when it says so.
async fn wait_ready(client: &CircusClient, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if client.call(Command::Status { name: None }).await.is_ok() {
            tracing::info!("circusd is ready");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("circusd is not answering yet; serving anyway (tools report it as unavailable)");
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
