//! Hot reload: the active policy behind an atomic pointer, and a task that re-reads the file.
//! A new version is compiled before it is swapped in; a bad one keeps the old policy, is
//! logged and counted. The file is polled by content (ConfigMap updates swap a symlink, which
//! inotify on the file itself misses).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Policy;
use crate::metrics::Metrics;

/// Stands for "the file could not be read" where a rejected version's hash goes.
const UNREADABLE: &str = "unreadable";

/// The active policy. Readers take a cheap snapshot; a reload swaps it atomically.
#[derive(Clone)]
pub struct ActivePolicy {
    current: Arc<ArcSwap<Policy>>,
    generation: Arc<AtomicU64>,
    path: PathBuf,
    metrics: Metrics,
    /// The hash of the last version that failed, so one bad version is counted and logged once.
    rejected: Arc<std::sync::Mutex<Option<String>>>,
}

impl ActivePolicy {
    pub fn new(path: PathBuf, policy: Policy, metrics: Metrics) -> ActivePolicy {
        let active = ActivePolicy {
            current: Arc::new(ArcSwap::from_pointee(policy)),
            generation: Arc::new(AtomicU64::new(1)),
            path,
            metrics,
            rejected: Arc::default(),
        };
        active.publish_info();
        active
    }

    /// The policy to decide with now.
    pub fn get(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn publish_info(&self) {
        let p = self.current.load();
        self.metrics.policy_info.reset();
        self.metrics.policy_info.with_label_values(&[&self.generation().to_string(), &p.hash]).set(1);
    }

    /// Re-reads the file; swaps when it changed and compiles. Returns whether it swapped.
    pub fn reload(&self) -> bool {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
                if rejected.as_deref() != Some(UNREADABLE) {
                    *rejected = Some(UNREADABLE.into());
                    tracing::error!(path = %self.path.display(), error = %e, "cannot read the policy; keeping the active one");
                    self.metrics.policy_reloads.with_label_values(&["failure"]).inc();
                }
                return false;
            }
        };
        let hash = format!("{:x}", Sha256::digest(text.as_bytes()));
        if hash == self.current.load().hash {
            return false;
        }
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if rejected.as_deref() == Some(hash.as_str()) {
            return false;
        }
        match Policy::compile(&self.path.display().to_string(), &text) {
            Ok(p) => {
                let hash = p.hash.clone();
                self.current.store(Arc::new(p));
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                self.publish_info();
                self.metrics.policy_reloads.with_label_values(&["success"]).inc();
                tracing::info!(generation, %hash, "policy reloaded");
                true
            }
            Err(e) => {
                *rejected = Some(hash);
                self.metrics.policy_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(errors = %e, "the new policy does not compile; keeping the active one");
                false
            }
        }
    }

    /// Polls the file every `interval` until `stop`.
    pub async fn watch(self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nidentities:\n  local: {tools: ['*']}\n";

    #[test]
    fn a_bad_file_keeps_the_old_policy_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let m = Metrics::new();
        let active = ActivePolicy::new(path.clone(), Policy::load(&path).unwrap(), m.clone());
        let before = active.get().hash.clone();

        std::fs::write(&path, "version: 1\nidentities: [\n").unwrap();
        assert!(!active.reload());
        assert!(!active.reload(), "the same bad version again");
        assert_eq!(active.get().hash, before);
        assert_eq!(active.generation(), 1);
        assert_eq!(m.policy_reloads.with_label_values(&["failure"]).get(), 1, "one bad version is counted once");

        std::fs::write(&path, format!("{GOOD}# changed\n")).unwrap();
        assert!(active.reload());
        assert_ne!(active.get().hash, before);
        assert_eq!(active.generation(), 2);
        assert_eq!(m.policy_reloads.with_label_values(&["success"]).get(), 1);
        assert!(m.encode().contains("circus_warden_policy_info{generation=\"2\""));

        assert!(!active.reload(), "an unchanged file is not a reload");
        std::fs::remove_file(&path).unwrap();
        assert!(!active.reload());
        assert!(!active.reload());
        assert_eq!(active.generation(), 2);
        assert_eq!(m.policy_reloads.with_label_values(&["failure"]).get(), 2, "a missing file is counted once");
    }
}
