//! The embedded circusd: used when no `circus.endpoint` is configured. The warden writes a
//! circus.ini into a private runtime directory (0700; ipc sockets under `umask 077`; no TCP, no
//! multicast discovery), starts circusd, restarts it with backoff when it dies, and stops it
//! with `quit` on shutdown. `quit` is sent only from here: no tool can reach it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::Endpoints;
use crate::config::CircusConfig;

/// A circusd that ran at least this long resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long `quit` may take before circusd is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// The files of one embedded circusd.
#[derive(Debug, Clone)]
pub struct Layout {
    pub runtime_dir: PathBuf,
    pub ini: PathBuf,
    pub endpoints: Endpoints,
}

impl Layout {
    /// Creates the private runtime directory and writes circus.ini into it.
    pub fn create(parent: Option<&Path>) -> std::io::Result<Layout> {
        let parent = parent
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        sweep_stale(&parent);
        let mut suffix = [0u8; 4];
        // SAFETY: getrandom fills at most the given number of bytes of our buffer.
        unsafe { libc::getrandom(suffix.as_mut_ptr().cast(), suffix.len(), 0) };
        let dir = parent.join(format!("circus-warden-{}-{:08x}", std::process::id(), u32::from_ne_bytes(suffix)));
        // Created 0700 in one step, so there is no moment when others could enter it.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let sock = |n: &str| format!("ipc://{}", dir.join(n).display());
        let endpoints = Endpoints { control: sock("control.sock"), pubsub: Some(sock("pubsub.sock")) };
        let ini = dir.join("circus.ini");
        std::fs::write(&ini, ini_text(&endpoints))?;
        Ok(Layout { runtime_dir: dir, ini, endpoints })
    }
}

/// Removes runtime directories left by wardens that are no longer running (killed before
/// they could clean up). Only `circus-warden-<pid>-<hex>` entries whose pid is gone.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("circus-warden-"))
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %entry.path().display(), "removing a stale runtime directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// circus.ini for the embedded circusd. `multicast_endpoint` empty switches discovery off;
/// no `stats_endpoint`, because naming one turns circusd-stats (and a TCP socket) on.
pub fn ini_text(endpoints: &Endpoints) -> String {
    format!(
        "# Written by circus-warden for its embedded circusd.\n\
         [circus]\n\
         endpoint = {}\n\
         pubsub_endpoint = {}\n\
         multicast_endpoint =\n\
         statsd = False\n\
         umask = 077\n\
         check_delay = 5\n",
        endpoints.control,
        endpoints.pubsub.as_deref().unwrap_or_default(),
    )
}

/// Finds the circusd program: the configured path, else the first `circusd` on `PATH`.
pub fn find_circusd(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(format!("circus.circusd_path {} does not exist", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("circusd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "circusd not found on PATH; install circus or set circus.circusd_path".to_string())
}

fn spawn(program: &Path, layout: &Layout) -> std::io::Result<Child> {
    let mut cmd = Command::new(program);
    cmd.arg(&layout.ini)
        .current_dir(&layout.runtime_dir)
        .stdin(Stdio::null())
        // stdout may be the MCP channel (stdio transport): circusd's chatter goes to stderr.
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: umask and prctl are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            // If the warden dies without a chance to send `quit` (SIGKILL), circusd is told.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Runs circusd until `stop` is cancelled, restarting it with exponential backoff.
pub async fn supervise(program: PathBuf, layout: Layout, config: CircusConfig, stop: CancellationToken) {
    let initial = Duration::from_millis(config.restart_backoff_initial_ms);
    let max = Duration::from_millis(config.restart_backoff_max_ms);
    let mut backoff = initial;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&program, &layout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(program = %program.display(), error = %e, "cannot start circusd");
                if sleep_or_stop(backoff, &stop).await {
                    break;
                }
                backoff = (backoff * 2).min(max);
                continue;
            }
        };
        tracing::info!(pid = child.id(), endpoint = %layout.endpoints.control, "embedded circusd started");
        tokio::select! {
            status = child.wait() => {
                let ran = started.elapsed();
                if ran >= STABLE_AFTER {
                    backoff = initial;
                }
                tracing::warn!(?status, ran_ms = ran.as_millis() as u64, retry_in_ms = backoff.as_millis() as u64,
                    "embedded circusd exited; restarting");
                if sleep_or_stop(backoff, &stop).await {
                    break;
                }
                backoff = (backoff * 2).min(max);
            }
            _ = stop.cancelled() => {
                shut_down(&mut child, &layout.endpoints.control).await;
                break;
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&layout.runtime_dir) {
        tracing::debug!(error = %e, "could not remove the runtime directory");
    }
}

/// True when `stop` fired during the sleep.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

async fn shut_down(child: &mut Child, endpoint: &str) {
    let endpoint = endpoint.to_string();
    let sent = tokio::task::spawn_blocking(move || send_quit(&endpoint)).await;
    match sent {
        Ok(Ok(())) => tracing::info!("sent quit to the embedded circusd"),
        other => tracing::warn!(?other, "could not send quit; terminating circusd"),
    }
    if tokio::time::timeout(QUIT_GRACE, child.wait()).await.is_err() {
        tracing::warn!("circusd did not quit in time; killing it");
        let _ = child.kill().await;
    }
}

/// Sends `quit` on a one-off socket and waits briefly for the acknowledgement.
fn send_quit(endpoint: &str) -> Result<(), zmq::Error> {
    let quit = br#"{"id":"warden-quit","command":"quit","properties":{"waiting":false}}"#;
    super::one_off(endpoint, quit, Duration::from_secs(2)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn layout_is_private_and_ipc_only() {
        let parent = tempfile::tempdir().unwrap();
        let l = Layout::create(Some(parent.path())).unwrap();
        let mode = std::fs::metadata(&l.runtime_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let ini = std::fs::read_to_string(&l.ini).unwrap();
        assert!(ini.contains("multicast_endpoint =\n"), "{ini}");
        assert!(ini.contains("umask = 077"));
        assert!(!ini.contains("tcp://"));
        assert!(!ini.contains("stats_endpoint"));
        assert!(l.endpoints.control.starts_with("ipc:///"));
    }

    #[test]
    fn stale_runtime_dirs_of_dead_wardens_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let dead = parent.path().join("circus-warden-999999999-abcd");
        let alive = parent.path().join(format!("circus-warden-{}-abcd", std::process::id()));
        let other = parent.path().join("unrelated-1-2");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).unwrap();
        }
        sweep_stale(parent.path());
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }
}
