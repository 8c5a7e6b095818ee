//! Isolation of the managed processes from the control plane: the account they run as, and
//! whether that account can reach circusd's sockets, the output files, the audit log or the
//! warden's configuration. The level the warden achieved, `uid` or `none`, is assessed when it
//! starts and again every reconcile interval, and shown in the log, the metrics, `/readyz`
//! and `config check`.
//!
//! - [`users`]: resolving run-as accounts as circus does;
//! - [`access`]: what an account can do to a path, from owners and modes;
//! - [`level`]: the levels.

pub mod access;
pub mod level;
pub mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::circus::{CircusClient, Command};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::policy::compile::RunAsRule;
use crate::policy::reload::ActivePolicy;
use access::Who;
pub use level::Level;
use users::Account;

/// The paths a managed process must not reach.
#[derive(Debug, Clone, Default)]
pub struct ControlPlane {
    /// Directories it must not even enter (the embedded runtime directory, the output dir).
    pub dirs: Vec<PathBuf>,
    /// Files and sockets it must not read, write, connect to or replace.
    pub files: Vec<PathBuf>,
    /// A TCP control endpoint: reachable by any local process, whatever its uid.
    pub tcp_endpoint: Option<String>,
}

impl ControlPlane {
    /// What the configuration names: an external circusd's endpoints, the output directory,
    /// the audit log, and the config file when it holds tokens. An embedded circusd's runtime
    /// directory is added by whoever creates it.
    pub fn of(config: &crate::config::Config) -> ControlPlane {
        let mut plane = ControlPlane::default();
        if let Some(control) = &config.circus.endpoint {
            plane.add_endpoint(control);
            if let Some(p) = &config.circus.pubsub_endpoint {
                plane.add_endpoint(p);
            }
        }
        if config.output.enabled {
            plane.dirs.push(config.output.dir());
        }
        plane.files.extend(config.audit.path.iter().chain(config.secret_files()).cloned());
        plane
    }

    /// The ipc socket paths of an endpoint list (`ipc:///path`); anything else is TCP.
    fn add_endpoint(&mut self, endpoint: &str) {
        match endpoint.strip_prefix("ipc://") {
            Some(path) => self.files.push(PathBuf::from(path)),
            None => self.tcp_endpoint = Some(endpoint.to_string()),
        }
    }
}

/// One assessment: the level and, below `uid`, every reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Assessment {
    pub level: Level,
    /// circusd's user as circusd reports it (`dstats`); `None` while it has not answered.
    pub circusd_user: Option<String>,
    /// The policy-wide run-as account, when it resolves.
    pub run_as: Option<Account>,
    pub reasons: Vec<String>,
}

impl Assessment {
    /// Whether circusd can start processes under another uid. Unknown counts as yes, so that
    /// a decision then insists on a run-as account (fail closed).
    pub fn circusd_switches(&self) -> bool {
        self.circusd_user.as_deref().is_none_or(|u| u == "root")
    }

    /// One line for logs and probes: `uid (run as circus-run, uid 10002)` or `none: reasons`.
    pub fn summary(&self) -> String {
        match (self.level, &self.run_as) {
            (Level::Uid, Some(a)) => format!("uid (managed processes run as {}, uid {}, gid {})", a.user, a.uid, a.gid),
            _ => format!("none: {}", self.reasons.join("; ")),
        }
    }
}

/// Assesses the level: circusd must be root, the policy must name a run-as account for every
/// program (policy-wide or per program), and every such account must be unprivileged, hold
/// none of the warden's groups, and reach nothing in `plane`.
pub fn assess(policy: &Policy, circusd_user: Option<&str>, plane: &ControlPlane) -> Assessment {
    let mut reasons = Vec::new();
    match circusd_user {
        None => reasons.push("circusd has not answered, so whether it can switch users is not known".to_string()),
        Some("root") => {}
        Some(u) => reasons.push(format!(
            "circusd runs as {u}, not root, so it cannot start processes under another uid: every managed process runs as {u}"
        )),
    }
    if let Some(tcp) = &plane.tcp_endpoint {
        reasons.push(format!("circusd listens on {tcp}, which every local process can reach whatever its uid; use an ipc:// endpoint"));
    }
    // The level speaks for every program, including those a later policy version adds.
    if policy.run_as.is_none() {
        reasons.push("the policy has no top-level run_as: a program without its own runs as circusd's user".into());
    }
    let (warden_uid, warden_groups) = users::current();
    let mut rules: Vec<&RunAsRule> = Vec::new();
    for rule in policy.run_as.iter().chain(policy.programs.iter().filter_map(|p| p.run_as.as_ref())) {
        if !rules.iter().any(|r| r.who == rule.who) {
            rules.push(rule);
        }
    }
    let mut default_account = None;
    for (i, rule) in rules.iter().enumerate() {
        let account = match users::resolve(&rule.who) {
            Ok(a) => a,
            Err(e) => {
                reasons.push(format!("run_as {}: {e}", rule.who));
                continue;
            }
        };
        if account.uid == 0 || account.gid == 0 {
            reasons.push(format!("run_as {} is root", rule.who));
        }
        if account.uid == warden_uid {
            reasons.push(format!("run_as {} is the warden's own uid {warden_uid}", rule.who));
        }
        if let Some(g) = account.groups.iter().find(|g| warden_groups.contains(g)) {
            reasons.push(format!("run_as {} ({}) is in group {g}, which the warden holds too", rule.who, account.user));
        }
        let who = Who { uid: account.uid, groups: &account.groups };
        for path in plane.dirs.iter().chain(&plane.files) {
            if let Some(what) = access::exposure(path, who) {
                reasons.push(format!("the run-as user {} (uid {}): {what}", account.user, account.uid));
            }
        }
        if i == 0 && policy.run_as.is_some() {
            default_account = Some(account);
        }
    }
    reasons.dedup();
    let level = if reasons.is_empty() { Level::Uid } else { Level::None };
    Assessment { level, circusd_user: circusd_user.map(str::to_string), run_as: default_account, reasons }
}

/// circusd's user, from `dstats`.
pub async fn circusd_user(client: &CircusClient) -> Option<String> {
    let reply = client.call(Command::DStats).await.ok()?;
    reply.pointer("/info/username").and_then(serde_json::Value::as_str).map(str::to_string)
}

/// circusd's user, from one `dstats` on a one-off socket (for `config check`, which has no
/// client): `None` when circusd does not answer within a second.
pub fn circusd_user_once(endpoint: &str) -> Option<String> {
    let frame = crate::circus::one_off(endpoint, &Command::DStats.encode("config-check"), Duration::from_secs(1)).ok()?;
    let reply: serde_json::Value = serde_json::from_slice(&frame).ok()?;
    reply.pointer("/info/username").and_then(serde_json::Value::as_str).map(str::to_string)
}

/// What `config check` can assess without running: circusd's user (the warden's own for an
/// embedded circusd, else asked), the policy's accounts, and the paths that exist already.
pub fn assess_config(config: &crate::config::Config, policy: &Policy) -> Assessment {
    let plane = ControlPlane::of(config);
    let user = match &config.circus.endpoint {
        Some(control) => circusd_user_once(control),
        None => nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name),
    };
    assess(policy, user.as_deref(), &plane)
}

/// The current assessment, shared by the gate, the probes and the metrics.
#[derive(Clone, Default)]
pub struct Isolation {
    current: Arc<ArcSwap<Assessment>>,
    /// The level below which no process may be added (`isolation.require`).
    pub required: Level,
}

impl Isolation {
    pub fn new(required: Level) -> Isolation {
        Isolation { current: Arc::default(), required }
    }

    pub fn get(&self) -> Arc<Assessment> {
        self.current.load_full()
    }

    /// Assesses now, publishes the result, logs a change of level, and returns it.
    pub async fn refresh(&self, client: &CircusClient, policy: &Policy, plane: &ControlPlane, metrics: &Metrics) -> Arc<Assessment> {
        // A circusd that misses one answer (busy, frozen for a moment) is still the same
        // process: keep its last known user rather than flap the level.
        let user = match circusd_user(client).await {
            Some(u) => Some(u),
            None => self.current.load().circusd_user.clone(),
        };
        let next = Arc::new(assess(policy, user.as_deref(), plane));
        let previous = self.current.swap(next.clone());
        if previous.level != next.level || previous.reasons != next.reasons || previous.circusd_user.is_none() {
            match next.level {
                Level::Uid => tracing::info!(level = "uid", "isolation level: {}", next.summary()),
                Level::None => tracing::warn!(
                    level = "none",
                    "isolation level: NONE. Managed processes can reach circusd, the logs or the warden: {}",
                    next.reasons.join("; ")
                ),
            }
        }
        for level in Level::ALL {
            metrics.isolation_level.with_label_values(&[level.as_str()]).set(i64::from(level == next.level));
        }
        next
    }

    /// Re-assesses every `every` (circusd may have been restarted as another user, the policy
    /// reloaded, a mode changed); every second while circusd has not answered.
    pub async fn watch(
        self,
        client: CircusClient,
        policy: ActivePolicy,
        plane: ControlPlane,
        metrics: Metrics,
        every: Duration,
        stop: CancellationToken,
    ) {
        loop {
            let a = self.refresh(&client, &policy.get(), &plane, &metrics).await;
            let wait = if a.circusd_user.is_none() { every.min(Duration::from_secs(1)) } else { every };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(run_as: &str) -> Policy {
        Policy::compile("p", &format!("version: 1\nidentities: {{}}\n{run_as}programs:\n  - {{id: a, path: /bin/a}}\n")).unwrap()
    }

    #[test]
    fn non_root_circusd_tcp_and_a_missing_user_each_give_none_with_a_reason() {
        let p = policy("run_as: {user: no-such-user-cw}\n");
        let plane = ControlPlane { tcp_endpoint: Some("tcp://127.0.0.1:5555".into()), ..ControlPlane::default() };
        let a = assess(&p, Some("circus"), &plane);
        assert_eq!(a.level, Level::None);
        let all = a.reasons.join("\n");
        assert!(all.contains("circusd runs as circus, not root"), "{all}");
        assert!(all.contains("tcp://127.0.0.1:5555"), "{all}");
        assert!(all.contains("no-such-user-cw does not exist"), "{all}");
        assert!(!a.circusd_switches());
        assert!(assess(&p, None, &plane).circusd_switches(), "unknown must fail closed");
    }

    #[test]
    fn no_run_as_is_none_and_root_run_as_is_none() {
        assert!(assess(&policy(""), Some("root"), &ControlPlane::default()).reasons.iter().any(|r| r.contains("no top-level run_as")));
        let p = policy("run_as: {uid: 0, gid: 0, allow_root: true}\n");
        let a = assess(&p, Some("root"), &ControlPlane::default());
        assert_eq!(a.level, Level::None);
        assert!(a.reasons.iter().any(|r| r.contains("is root")), "{:?}", a.reasons);
    }
}
