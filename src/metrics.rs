//! The Prometheus registry and the warden's metric handles. Built once at startup; handles are
//! cheap clones passed to the component that records them. Every series is listed in
//! docs/metrics.md.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

const NS: &str = "circus_warden";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub tool_calls: IntCounterVec,
    pub decisions: IntCounterVec,
    pub circus_call_seconds: HistogramVec,
    pub circus_up: IntGauge,
    pub watchers: IntGaugeVec,
    pub spawns: IntCounterVec,
    pub reaps: IntCounterVec,
    pub restarts: IntCounterVec,
    pub crash_looping: IntGaugeVec,
    pub http_sessions: IntGauge,
    pub policy_reloads: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub audit_write_failures: prometheus::IntCounter,
    pub rate_limited: IntCounterVec,
    pub log_lines: IntCounterVec,
    pub log_bytes: IntCounterVec,
    pub log_dropped_bytes: IntCounterVec,
    pub log_evicted_lines: IntCounterVec,
    pub log_evicted_bytes: IntCounterVec,
    pub log_buffer_bytes: IntGaugeVec,
    pub log_buffer_limit: IntGaugeVec,
    pub log_alerts: IntCounterVec,
    pub log_followers: IntGauge,
    pub log_follow_skipped: prometheus::IntCounter,
    pub isolation_level: IntGaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(opts(name, help), labels).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(opts(name, help), labels).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::with_opts(opts(name, help)).expect("valid metric"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = gauge_vec(&r, "build_info", "The running build (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, NS)))
            .expect("metric names are unique");
        let timing = HistogramOpts::new("circus_call_duration_seconds", "circusd round trips by command, lock retries included.")
            .namespace(NS)
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        Metrics {
            tool_calls: counter(&r, "tool_calls_total", "MCP tool calls by tool and outcome (ok or an error kind).", &["tool", "outcome"]),
            decisions: counter(
                &r,
                "policy_decisions_total",
                "Gate decisions by tool, decision (allow or deny) and the rule that fired.",
                &["tool", "decision", "rule"],
            ),
            circus_call_seconds: register(&r, HistogramVec::new(timing, &["command"]).expect("valid metric")),
            circus_up: gauge(&r, "circus_up", "1 while circusd answered the last reconcile, else 0."),
            isolation_level: gauge_vec(
                &r,
                "isolation_level",
                "1 for the isolation level the warden achieved (uid: managed processes run under their own uid and cannot reach the control plane; none: they can), 0 for the other.",
                &["level"],
            ),
            watchers: gauge_vec(&r, "watchers", "Watchers by state, as circusd last reported them.", &["state"]),
            spawns: counter(&r, "process_spawns_total", "Processes spawned, by watcher.", &["watcher"]),
            reaps: counter(
                &r,
                "process_reaps_total",
                "Processes reaped, by watcher and exit class (ok, error, signal).",
                &["watcher", "exit_class"],
            ),
            restarts: counter(
                &r,
                "process_restarts_total",
                "Processes respawned after dying while their watcher was active, and reloads.",
                &["watcher"],
            ),
            crash_looping: gauge_vec(
                &r,
                "crash_looping",
                "1 while a watcher restarted at least circus.crash_loop_restarts times within circus.crash_loop_window_s.",
                &["watcher"],
            ),
            http_sessions: gauge(&r, "http_sessions", "Open Streamable HTTP sessions."),
            policy_reloads: counter(&r, "policy_reloads_total", "Policy reloads by result (success or failure).", &["result"]),
            policy_info: gauge_vec(&r, "policy_info", "The active policy's generation and SHA-256 (always 1).", &["generation", "hash"]),
            audit_write_failures: register(
                &r,
                prometheus::IntCounter::with_opts(opts("audit_write_failures_total", "Audit records that could not be written."))
                    .expect("valid metric"),
            ),
            rate_limited: counter(&r, "rate_limited_total", "Mutating calls refused by an identity's rate limit.", &["identity", "tool"]),
            log_lines: counter(
                &r,
                "log_lines_total",
                "Output entries read, by watcher and level (a grouped traceback is one).",
                &["watcher", "level"],
            ),
            log_bytes: counter(&r, "log_bytes_total", "Output text bytes read, by watcher and level.", &["watcher", "level"]),
            log_dropped_bytes: counter(
                &r,
                "log_dropped_bytes_total",
                "Output bytes read but never stored: cut from lines longer than output.max_line_bytes.",
                &["watcher"],
            ),
            log_evicted_lines: counter(
                &r,
                "log_evicted_lines_total",
                "Stored entries evicted to stay under a cap, by watcher and cause (stream_cap or global_cap).",
                &["watcher", "cause"],
            ),
            log_evicted_bytes: counter(
                &r,
                "log_evicted_bytes_total",
                "Text bytes of evicted entries, by watcher and cause.",
                &["watcher", "cause"],
            ),
            log_buffer_bytes: gauge_vec(
                &r,
                "log_buffer_bytes",
                "Bytes held for a watcher's output (both streams, overhead included).",
                &["watcher"],
            ),
            log_buffer_limit: gauge_vec(&r, "log_buffer_limit_bytes", "The configured caps: per stream and global.", &["scope"]),
            log_alerts: counter(
                &r,
                "log_alerts_total",
                "Log alert firings, by watcher, rule and severity.",
                &["watcher", "rule", "severity"],
            ),
            log_followers: gauge(&r, "log_followers", "Open GET /logs/{name}?follow=true streams."),
            log_follow_skipped: register(
                &r,
                prometheus::IntCounter::with_opts(opts(
                    "log_follow_skipped_lines_total",
                    "Lines a slow follower missed because they were evicted before it read them.",
                ))
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    /// Forgets a removed watcher's series, so label values stay bounded by live watchers.
    pub fn forget_watcher(&self, watcher: &str) {
        let _ = self.spawns.remove_label_values(&[watcher]);
        let _ = self.restarts.remove_label_values(&[watcher]);
        let _ = self.crash_looping.remove_label_values(&[watcher]);
        for class in ["ok", "error", "signal"] {
            let _ = self.reaps.remove_label_values(&[watcher, class]);
        }
    }

    /// Forgets a watcher's log series when its output is dropped from memory.
    pub fn forget_log_series(&self, watcher: &str) {
        for level in crate::output::classify::Level::ALL {
            let _ = self.log_lines.remove_label_values(&[watcher, level.as_str()]);
            let _ = self.log_bytes.remove_label_values(&[watcher, level.as_str()]);
        }
        for cause in ["stream_cap", "global_cap"] {
            let _ = self.log_evicted_lines.remove_label_values(&[watcher, cause]);
            let _ = self.log_evicted_bytes.remove_label_values(&[watcher, cause]);
        }
        let _ = self.log_dropped_bytes.remove_label_values(&[watcher]);
        let _ = self.log_buffer_bytes.remove_label_values(&[watcher]);
    }

    /// The exposition in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        m.tool_calls.with_label_values(&["list_processes", "ok"]).inc();
        m.circus_call_seconds.with_label_values(&["status"]).observe(0.001);
        m.spawns.with_label_values(&["w"]).inc();
        let text = m.encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("circus_warden_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert!(text.contains("circus_warden_build_info{version="));
        m.forget_watcher("w");
        assert!(!m.encode().contains("watcher=\"w\""));
    }
}
