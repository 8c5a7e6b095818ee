//! The warden's configuration: types, defaults, layered loading (defaults → YAML → env) and
//! validation. Every error names its source, the key and the rule that failed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized};
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

/// The file read when `--config` is not given and it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "config/circus-warden.yaml";
/// Prefix of the environment variables that override the file; `__` separates levels.
pub const ENV_PREFIX: &str = "CIRCUS_WARDEN_";

#[derive(Debug, Clone, Default, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[validate(nested)]
    pub circus: CircusConfig,
    #[validate(nested)]
    pub server: ServerConfig,
    #[validate(nested)]
    pub policy: PolicyConfig,
    #[validate(nested)]
    pub audit: AuditConfig,
    #[validate(nested)]
    pub log: LogConfig,
    #[validate(nested)]
    pub output: OutputConfig,
    #[validate(nested)]
    pub isolation: IsolationConfig,
    /// The YAML file the configuration was read from, if any (not a setting).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// How far managed processes must be kept from the control plane (docs/policy.md, Isolation).
#[derive(Debug, Clone, Default, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// `uid`: refuse to start, and to add processes, unless managed processes run under their
    /// own uid and cannot reach circusd, the logs or the warden. `none` (the default): take
    /// the best level available and warn when it is `none`.
    pub require: crate::isolation::Level,
}

/// How to reach circusd, or how to run the embedded one.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct CircusConfig {
    /// `tcp://…` or `ipc://…` of an external circusd; absent means the warden runs its own.
    #[validate(custom(function = "validate_endpoint"))]
    pub endpoint: Option<String>,
    /// Pub/sub endpoint of an external circusd; absent means ask circusd (`globaloptions`).
    #[validate(custom(function = "validate_endpoint"))]
    pub pubsub_endpoint: Option<String>,
    /// The circusd program for embedded mode; absent means look it up on `PATH`.
    pub circusd_path: Option<PathBuf>,
    /// Parent of the private socket directory in embedded mode.
    pub runtime_dir: Option<PathBuf>,
    #[validate(range(min = 10, max = 60_000))]
    pub connect_timeout_ms: u64,
    #[validate(range(min = 10, max = 600_000))]
    pub read_timeout_ms: u64,
    #[validate(range(min = 10, max = 600_000))]
    pub mutation_timeout_ms: u64,
    #[validate(range(max = 20))]
    pub lock_retries: u32,
    #[validate(range(min = 1, max = 10_000))]
    pub lock_retry_delay_ms: u64,
    #[validate(range(min = 100, max = 3_600_000))]
    pub reconcile_interval_ms: u64,
    #[validate(range(min = 10, max = 60_000))]
    pub restart_backoff_initial_ms: u64,
    #[validate(range(min = 10, max = 600_000))]
    pub restart_backoff_max_ms: u64,
    /// A watcher with this many restarts …
    #[validate(range(min = 1, max = 1000))]
    pub crash_loop_restarts: u32,
    /// … within this many seconds is crash-looping.
    #[validate(range(min = 1, max = 86_400))]
    pub crash_loop_window_s: u32,
}

impl Default for CircusConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            pubsub_endpoint: None,
            circusd_path: None,
            runtime_dir: None,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 5_000,
            mutation_timeout_ms: 30_000,
            lock_retries: 5,
            lock_retry_delay_ms: 100,
            reconcile_interval_ms: 5_000,
            restart_backoff_initial_ms: 250,
            restart_backoff_max_ms: 10_000,
            crash_loop_restarts: 5,
            crash_loop_window_s: 60,
        }
    }
}

impl CircusConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }
    pub fn mutation_timeout(&self) -> Duration {
        Duration::from_millis(self.mutation_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Stdio,
    Http,
}

/// The MCP edge.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub transport: Transport,
    pub bind: SocketAddr,
    /// A separate admin listener for `/metrics`, `/healthz` and `/readyz` (any transport).
    /// The HTTP transport serves them on `bind` as well.
    pub metrics_bind: Option<SocketAddr>,
    /// `Host` values accepted on `/mcp` (DNS-rebinding guard). Empty is refused: say `["*"]`
    /// nowhere; list the names the warden is reached by.
    #[validate(length(min = 1, max = 64))]
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted on `/mcp` (`scheme://host:port`, `:*` for any port); a request
    /// carrying any other `Origin` is refused. Empty refuses every request with an `Origin`.
    #[validate(length(max = 64))]
    pub allowed_origins: Vec<String>,
    #[validate(range(min = 1024, max = 67_108_864))]
    pub max_body_bytes: usize,
    #[validate(range(min = 1, max = 100_000))]
    pub max_sessions: usize,
    /// Open HTTP connections at once; more are closed on accept.
    #[validate(range(min = 1, max = 100_000))]
    pub max_connections: usize,
    /// The identity of callers without a token: the stdio session, and HTTP callers when no
    /// tokens are configured. It must be an identity in the policy to be allowed anything.
    #[validate(length(min = 1, max = 64))]
    pub default_identity: String,
    /// Bearer tokens; when any is configured, `/mcp` requires one.
    #[validate(nested, length(max = 1024))]
    pub tokens: Vec<TokenConfig>,
    /// On SIGTERM or SIGINT, how long calls in flight may take to finish (new calls are
    /// refused meanwhile); changes still unanswered then are recorded as such.
    #[validate(range(max = 600_000))]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Stdio,
            bind: SocketAddr::from(([127, 0, 0, 1], 8731)),
            metrics_bind: None,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"].map(String::from).to_vec(),
            max_body_bytes: 1 << 20,
            max_sessions: 64,
            max_connections: 256,
            default_identity: "local".into(),
            shutdown_grace_ms: 10_000,
            tokens: Vec::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    #[validate(length(min = 1, max = 64))]
    pub identity: String,
    /// At least 16 bytes; compared in constant time.
    #[validate(length(min = 16, max = 4096))]
    pub token: String,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// Where the policy comes from.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The policy file (see docs/policy.md). A missing or invalid file stops the warden at
    /// startup; later, a bad version keeps the active policy.
    pub path: PathBuf,
    /// How often the file is checked for changes.
    #[validate(range(min = 100, max = 3_600_000))]
    pub reload_interval_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("policies/default.yaml"), reload_interval_ms: 2_000 }
    }
}

/// The audit log of decisions.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON-lines file; absent means stderr.
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this.
    #[validate(range(min = 4096, max = 17_179_869_184u64))]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `.keep`).
    #[validate(range(max = 100))]
    pub keep: u32,
    /// Deny mutations whose decision record cannot be written.
    pub fail_closed: bool,
    /// Record allowed reads too (mutations and denials are always recorded).
    pub reads: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { path: None, max_bytes: 10 << 20, keep: 5, fail_closed: true, reads: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    #[validate(length(min = 1, max = 1024))]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

/// Capture, buffering, classification and alerting of the processes' output.
#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
#[validate(schema(function = "validate_output"))]
pub struct OutputConfig {
    /// Set `stdout_stream`/`stderr_stream` on every `add` and follow the files. Off means
    /// circus does not capture the output (it goes to circusd's own stdout and stderr) and the
    /// log tools answer that capture is off.
    pub enabled: bool,
    /// Where circusd writes `<watcher>/stdout.log` and `stderr.log`: the same path for
    /// circusd and the warden (a shared volume in the pod). Absent: `$XDG_STATE_HOME/
    /// circus-warden/output` (or `~/.local/state/…`).
    pub dir: Option<PathBuf>,
    /// circus's FileStream rotates a file when it would grow past this…
    #[validate(range(min = 4096, max = 17_179_869_184u64))]
    pub max_file_bytes: u64,
    /// …keeping this many old files (`stdout.log.1` …). Disk use per stream is bounded by
    /// `max_file_bytes × (backup_count + 1)`.
    #[validate(range(min = 1, max = 100))]
    pub backup_count: u32,
    /// Bytes held in memory per watcher and stream (text plus per-entry overhead).
    #[validate(range(min = 16_384, max = 1_073_741_824))]
    pub stream_cap_bytes: usize,
    /// Bytes held in memory over all watchers; the fullest ring gives way first.
    #[validate(range(min = 65_536, max = 17_179_869_184usize))]
    pub global_cap_bytes: usize,
    /// A longer line (or traceback) is cut; the rest is counted as dropped.
    #[validate(range(min = 256, max = 1_048_576))]
    pub max_line_bytes: usize,
    /// Watchers whose output is kept in memory; beyond it, the one written to longest ago is
    /// forgotten (this also bounds the log metrics' label values).
    #[validate(range(min = 1, max = 100_000))]
    pub max_watchers: usize,
    /// Use inotify to notice writes; the poll interval applies either way.
    pub inotify: bool,
    #[validate(range(min = 10, max = 60_000))]
    pub poll_interval_ms: u64,
    /// An unfinished line or an open traceback is stored after this much silence.
    #[validate(range(min = 10, max = 60_000))]
    pub flush_after_ms: u64,
    /// How often read positions are saved for a restart.
    #[validate(range(min = 100, max = 600_000))]
    pub checkpoint_interval_ms: u64,
    /// Subscribed MCP clients hear about new lines and alerts at most this often.
    #[validate(range(min = 100, max = 600_000))]
    pub notify_interval_ms: u64,
    /// Most entries one `get_logs` (or a follow backlog) returns.
    #[validate(range(min = 1, max = 100_000))]
    pub max_read_entries: usize,
    /// Most text bytes one `get_logs` returns. An MCP answer carries the text twice (content
    /// and structuredContent), escaped: keep it well under the clients' message cap (1 MiB
    /// for the Python SDK).
    #[validate(range(min = 1024, max = 67_108_864))]
    pub max_read_bytes: usize,
    /// Concurrent `GET /logs/{name}?follow=true` streams.
    #[validate(range(min = 0, max = 10_000))]
    pub max_followers: usize,
    /// Firings kept for `list_alerts`.
    #[validate(range(min = 1, max = 100_000))]
    pub max_alerts: usize,
    /// The level of a line nothing recognises, per stream.
    pub default_level: DefaultLevels,
    /// Checked before the built-in recognisers; the first match sets the level.
    #[validate(length(max = 256))]
    pub patterns: Vec<crate::output::classify::LevelPattern>,
    /// Alert rules (see docs/logs.md). Absent: a CRITICAL-line rule and an ERROR-burst rule.
    #[validate(nested, length(max = 256))]
    pub alerts: Vec<crate::output::alerts::AlertRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultLevels {
    pub stdout: crate::output::classify::Level,
    pub stderr: crate::output::classify::Level,
}

impl Default for DefaultLevels {
    fn default() -> Self {
        use crate::output::classify::Level;
        Self { stdout: Level::Info, stderr: Level::Info }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_file_bytes: 10 << 20,
            backup_count: 3,
            stream_cap_bytes: 1 << 20,
            global_cap_bytes: 64 << 20,
            max_line_bytes: 16 << 10,
            max_watchers: 512,
            inotify: true,
            poll_interval_ms: 250,
            flush_after_ms: 500,
            checkpoint_interval_ms: 1_000,
            notify_interval_ms: 1_000,
            max_read_entries: 1_000,
            max_read_bytes: 256 << 10,
            max_followers: 16,
            max_alerts: 256,
            default_level: DefaultLevels::default(),
            patterns: Vec::new(),
            alerts: crate::output::alerts::default_rules(),
        }
    }
}

impl OutputConfig {
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(crate::output::default_dir)
    }

    pub fn classifier(&self) -> Result<crate::output::classify::Classifier, String> {
        crate::output::classify::Classifier::new(&self.patterns, self.default_level.stdout, self.default_level.stderr)
    }

    pub fn alerting(&self) -> Result<crate::output::alerts::Alerting, String> {
        crate::output::alerts::Alerting::new(&self.alerts, self.max_alerts)
    }
}

fn validate_output(o: &OutputConfig) -> Result<(), validator::ValidationError> {
    let err = |m: String| Err(validator::ValidationError::new("output").with_message(m.into()));
    if o.max_line_bytes * 4 > o.stream_cap_bytes {
        return err("max_line_bytes must be at most a quarter of stream_cap_bytes".into());
    }
    if o.stream_cap_bytes > o.global_cap_bytes {
        return err("stream_cap_bytes must not exceed global_cap_bytes".into());
    }
    if let Err(e) = o.classifier() {
        return err(e);
    }
    if let Err(e) = o.alerting() {
        return err(e);
    }
    Ok(())
}

/// Values given on the command line; they override every other source.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// A configuration error, already phrased for a person: `source: key: rule`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then the YAML file (`explicit`, or the default file if present), then
    /// `CIRCUS_WARDEN_*` variables, then `overrides`; then validates the result.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match explicit {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!("{}: config file not found", path.display())));
            }
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            figment = figment.merge(serde_saphyr::figment::Yaml::file_exact(path));
        }
        // Every setting lives in a section, so only `<SECTION>__<KEY>` names are settings;
        // other CIRCUS_WARDEN_* variables (a test's CIRCUS_WARDEN_BIN) are not config.
        figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(|k| k.as_str().contains("__")).split("__"));
        let mut cli = Figment::new();
        if let Some(t) = overrides.transport {
            cli = cli.merge(Serialized::default("server.transport", t));
        }
        if let Some(b) = overrides.bind {
            cli = cli.merge(Serialized::default("server.bind", b));
        }
        if let Some(e) = &overrides.endpoint {
            cli = cli.merge(Serialized::default("circus.endpoint", e));
        }
        if let Some(f) = overrides.log_format {
            cli = cli.merge(Serialized::default("log.format", f));
        }
        let mut config: Config = figment
            .merge(cli)
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(|e| describe_figment_error(&e)).collect::<Vec<_>>().join("\n")))?;
        let source = file.as_ref().map_or("config".to_string(), |p| p.display().to_string());
        config.validate().map_err(|e| ConfigError(describe_validation(&source, &e)))?;
        config.file = file;
        Ok(config)
    }

    /// The files that hold secrets (the config file, when it lists tokens): the managed
    /// processes must not read them.
    pub fn secret_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.file.iter().filter(|_| !self.server.tokens.is_empty())
    }

    /// The effective configuration as YAML, with token values redacted.
    pub fn to_yaml(&self) -> String {
        let mut shown = self.clone();
        for t in &mut shown.server.tokens {
            t.token = "<redacted>".into();
        }
        serde_saphyr::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn describe_figment_error(e: &figment::Error) -> String {
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(src) => src.to_string(),
            None => m.name.to_string(),
        })
        .unwrap_or_else(|| "config".into());
    let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".") };
    format!("{source}: {key}: {}", e.kind)
}

/// Flattens nested validator errors into `source: a.b.c: rule (message)` lines.
fn describe_validation(source: &str, errors: &ValidationErrors) -> String {
    fn walk(prefix: &str, errors: &ValidationErrors, out: &mut Vec<String>) {
        for (field, kind) in errors.errors() {
            let key = match (prefix, field.as_ref()) {
                // A check over a whole section (validator's `schema`) is reported on the section.
                (p, "__all__") if !p.is_empty() => p.to_string(),
                ("", f) => f.to_string(),
                (p, f) => format!("{p}.{f}"),
            };
            match kind {
                ValidationErrorsKind::Field(list) => {
                    for e in list {
                        let detail = e.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default();
                        let bounds: Vec<String> =
                            ["min", "max"].iter().filter_map(|k| e.params.get(*k).map(|v| format!("{k}={v}"))).collect();
                        let bounds = if bounds.is_empty() { String::new() } else { format!(" ({})", bounds.join(", ")) };
                        out.push(format!("{key}: rule `{}`{bounds}{detail}", e.code));
                    }
                }
                ValidationErrorsKind::Struct(inner) => walk(&key, inner, out),
                ValidationErrorsKind::List(items) => {
                    for (i, inner) in items {
                        walk(&format!("{key}[{i}]"), inner, out);
                    }
                }
            }
        }
    }
    let mut lines = Vec::new();
    walk("", errors, &mut lines);
    lines.sort();
    lines.into_iter().map(|l| format!("{source}: {l}")).collect::<Vec<_>>().join("\n")
}

fn validate_endpoint(endpoint: &str) -> Result<(), validator::ValidationError> {
    let ok = match endpoint.split_once("://") {
        Some(("tcp", rest)) => rest.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
        Some(("ipc", rest)) => rest.starts_with('/') && rest.len() < 100,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(validator::ValidationError::new("endpoint")
            .with_message("must be tcp://HOST:PORT or ipc:///absolute/path (under 100 bytes)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let f = write("circus:\n  endpont: tcp://127.0.0.1:5555\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        // figment may show the path relative to the working directory: match the file name.
        let file = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&file), "{err}");
        assert!(err.contains("endpont"), "{err}");
    }

    #[test]
    fn range_violation_names_key_and_rule() {
        let f = write("audit:\n  keep: 1000\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("audit.keep: rule `range`"), "{err}");
    }

    #[test]
    fn bad_endpoint_is_refused() {
        let f = write("circus:\n  endpoint: http://x\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("circus.endpoint: rule `endpoint`"), "{err}");
    }

    #[test]
    fn overrides_win_over_file() {
        let f = write("server:\n  transport: stdio\n");
        let o = Overrides { transport: Some(Transport::Http), ..Default::default() };
        assert_eq!(Config::load(Some(f.path()), &o).unwrap().server.transport, Transport::Http);
    }

    #[test]
    fn tokens_are_redacted_when_printed() {
        let mut c = Config::default();
        c.server.tokens.push(TokenConfig { identity: "ci".into(), token: "s3cr3t-s3cr3t-s3cr3t".into() });
        let y = c.to_yaml();
        assert!(!y.contains("s3cr3t") && y.contains("<redacted>"), "{y}");
    }
}
