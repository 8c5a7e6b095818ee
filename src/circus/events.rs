//! The warden's view of the processes circusd runs: fed by `watcher.*` pub/sub events
//! (state, spawns, reaps with exit codes, restarts) and corrected by a periodic `status` and
//! `list` reconcile, because circusd does not always publish a `reap`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{CircusClient, Command, WatcherName};
use crate::metrics::Metrics;

/// Recent events kept per watcher, for `diagnose_process`.
const EVENTS_PER_WATCHER: usize = 32;
/// Watchers tracked at most; events for more are ignored (reconcile still lists them).
const MAX_WATCHERS: usize = 1024;

/// One watcher as the warden last saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherView {
    pub state: String,
    pub pids: BTreeSet<u32>,
    pub spawns: u64,
    pub reaps: u64,
    /// Processes respawned by circus after one died while the watcher was active, plus reloads.
    pub restarts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
    pub recent_events: VecDeque<Event>,
    /// At least `crash_loop.restarts` restarts within `crash_loop.window_s`.
    pub crash_looping: bool,
    #[serde(skip)]
    awaiting_respawn: u64,
    /// Times of the latest restarts, at most `crash_loop.restarts` of them.
    #[serde(skip)]
    restart_times: VecDeque<f64>,
}

/// When a watcher counts as crash-looping.
#[derive(Debug, Clone, Copy)]
pub struct CrashLoop {
    pub restarts: usize,
    pub window_s: f64,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop { restarts: 5, window_s: 60.0 }
    }
}

impl WatcherView {
    fn restarted(&mut self, time: f64, rule: CrashLoop) {
        self.restarts += 1;
        self.restart_times.push_back(time);
        while self.restart_times.len() > rule.restarts {
            self.restart_times.pop_front();
        }
    }

    fn evaluate(&mut self, now: f64, rule: CrashLoop) {
        self.crash_looping =
            self.restart_times.len() >= rule.restarts && self.restart_times.front().is_some_and(|first| now - first <= rule.window_s);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Exit {
    pub pid: u32,
    /// Negative means killed by that signal.
    pub exit_code: i64,
    pub time: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub time: f64,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// Shared, cheap to clone. A `std::sync::Mutex` is right here: every critical section is a
/// few map operations and never awaits.
#[derive(Clone, Default)]
pub struct ProcessView {
    inner: Arc<Mutex<BTreeMap<String, WatcherView>>>,
    metrics: Option<Metrics>,
    crash_loop: CrashLoop,
}

impl ProcessView {
    pub fn new(metrics: Option<Metrics>, crash_loop: CrashLoop) -> ProcessView {
        ProcessView { inner: Arc::default(), metrics, crash_loop }
    }

    /// Records whether circusd answered the last reconcile.
    pub fn set_up(&self, up: bool) {
        if let Some(m) = &self.metrics {
            m.circus_up.set(up as i64);
        }
    }

    pub fn get(&self, name: &str) -> Option<WatcherView> {
        self.inner.lock().expect("view lock").get(name).cloned()
    }

    /// Applies one pub/sub message (`watcher.<name>.<event>`, JSON body).
    pub fn apply(&self, topic: &str, body: &Value) {
        let Some((name, event)) = topic.strip_prefix("watcher.").and_then(|t| t.rsplit_once('.')) else {
            return;
        };
        let mut map = self.inner.lock().expect("view lock");
        if !map.contains_key(name) && (event == "remove" || map.len() >= MAX_WATCHERS) {
            return;
        }
        if event == "remove" {
            map.remove(name);
            if let Some(m) = &self.metrics {
                m.forget_watcher(name);
            }
            return;
        }
        let rule = self.crash_loop;
        let w = map.entry(name.to_string()).or_default();
        let pid = body.get("process_pid").and_then(Value::as_u64).map(|p| p as u32);
        let exit_code = body.get("exit_code").and_then(Value::as_i64);
        let time = body.get("time").and_then(Value::as_f64).unwrap_or_else(now);
        match event {
            "spawn" => {
                w.spawns += 1;
                if let Some(p) = pid {
                    w.pids.insert(p);
                }
                if w.awaiting_respawn > 0 {
                    w.awaiting_respawn -= 1;
                    w.restarted(time, rule);
                    self.count_restart(name);
                }
                self.count(|m| m.spawns.with_label_values(&[name]).inc());
            }
            "reap" => {
                w.reaps += 1;
                let class = match exit_code.unwrap_or(0) {
                    0 => "ok",
                    c if c > 0 => "error",
                    _ => "signal",
                };
                self.count(|m| m.reaps.with_label_values(&[name, class]).inc());
                if let Some(p) = pid {
                    w.pids.remove(&p);
                    w.last_exit = Some(Exit { pid: p, exit_code: exit_code.unwrap_or(0), time });
                }
                if w.state == "active" {
                    w.awaiting_respawn += 1;
                }
            }
            "kill" => {
                // An intentional kill (stop, scale down, reload) is not a crash to respawn.
                w.awaiting_respawn = 0;
            }
            "start" => w.state = "active".into(),
            "stop" => {
                w.state = "stopped".into();
                w.awaiting_respawn = 0;
            }
            "reload" => {
                w.restarted(time, rule);
                self.count_restart(name);
            }
            "add" => w.state = "stopped".into(),
            _ => {}
        }
        w.evaluate(time, rule);
        let looping = w.crash_looping;
        if w.recent_events.len() == EVENTS_PER_WATCHER {
            w.recent_events.pop_front();
        }
        w.recent_events.push_back(Event { time, event: event.to_string(), pid, exit_code });
        self.count(|m| m.crash_looping.with_label_values(&[name]).set(looping as i64));
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    fn count_restart(&self, name: &str) {
        self.count(|m| m.restarts.with_label_values(&[name]).inc());
    }

    /// Replaces states and pids with what circusd reports; forgets watchers it no longer has.
    pub fn reconcile(&self, states: &BTreeMap<String, String>, pids: &BTreeMap<String, BTreeSet<u32>>) {
        let mut map = self.inner.lock().expect("view lock");
        map.retain(|name, _| {
            let keep = states.contains_key(name);
            if !keep {
                self.count(|m| m.forget_watcher(name));
            }
            keep
        });
        let now = now();
        for (name, state) in states {
            if !map.contains_key(name) && map.len() >= MAX_WATCHERS {
                continue;
            }
            let w = map.entry(name.clone()).or_default();
            w.state = state.clone();
            if let Some(p) = pids.get(name) {
                w.pids = p.clone();
            }
            w.evaluate(now, self.crash_loop);
            let looping = w.crash_looping;
            self.count(|m| m.crash_looping.with_label_values(&[name]).set(looping as i64));
        }
        // Every state is set in one pass (no reset), so a scrape never sees a half-built set.
        self.count(|m| {
            let mut counts: BTreeMap<&str, i64> = ["active", "starting", "stopped", "stopping"].map(|s| (s, 0)).into();
            for state in states.values() {
                *counts.entry(state.as_str()).or_default() += 1;
            }
            for (state, n) in counts {
                m.watchers.with_label_values(&[state]).set(n);
            }
        });
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Asks circusd for every watcher's state and pids.
pub async fn snapshot(client: &CircusClient) -> Result<(BTreeMap<String, String>, BTreeMap<String, BTreeSet<u32>>), super::CircusError> {
    let reply = client.call(Command::Status { name: None }).await?;
    let states: BTreeMap<String, String> = reply
        .get("statuses")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("unknown").to_string())).collect())
        .unwrap_or_default();
    let names: Vec<WatcherName> = states.keys().filter_map(|n| WatcherName::parse(n)).collect();
    let lists = futures::future::join_all(names.iter().map(|n| client.call(Command::List { name: Some(n.clone()) }))).await;
    let mut pids = BTreeMap::new();
    for (name, reply) in names.iter().zip(lists) {
        if let Ok(v) = reply {
            pids.insert(name.to_string(), pid_set(&v));
        }
    }
    Ok((states, pids))
}

/// The `pids` of a `list name=…` reply.
pub fn pid_set(reply: &Value) -> BTreeSet<u32> {
    reply.get("pids").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).map(|p| p as u32).collect()).unwrap_or_default()
}

/// Keeps the view current until `stop`: subscribes to pub/sub (discovering its endpoint from
/// circusd when not configured) and reconciles every `interval`.
pub async fn follow(client: CircusClient, pubsub: Option<String>, view: ProcessView, interval: Duration, stop: CancellationToken) {
    let mut subscribed = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !subscribed {
            let endpoint = match &pubsub {
                Some(e) => Some(e.clone()),
                None => discover_pubsub(&client).await,
            };
            if let Some(endpoint) = endpoint {
                match spawn_subscriber(&endpoint, view.clone(), stop.clone()) {
                    Ok(()) => subscribed = true,
                    Err(e) => tracing::warn!(%endpoint, error = %e, "cannot subscribe to circusd events"),
                }
            }
        }
        match snapshot(&client).await {
            Ok((states, pids)) => {
                view.set_up(true);
                view.reconcile(&states, &pids);
            }
            Err(e) => {
                view.set_up(false);
                tracing::debug!(error = %e, "reconcile skipped");
            }
        }
    }
}

async fn discover_pubsub(client: &CircusClient) -> Option<String> {
    let reply = client.call(Command::GlobalOptions).await.ok()?;
    reply.pointer("/options/pubsub_endpoint").and_then(Value::as_str).map(str::to_string)
}

fn spawn_subscriber(endpoint: &str, view: ProcessView, stop: CancellationToken) -> Result<(), zmq::Error> {
    let socket = super::zmq_context().socket(zmq::SUB)?;
    socket.set_linger(0)?;
    socket.set_rcvtimeo(250)?;
    socket.set_subscribe(b"watcher.")?;
    socket.connect(endpoint)?;
    std::thread::Builder::new()
        .name("circus-events".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                let frames = match socket.recv_multipart(0) {
                    Ok(f) => f,
                    Err(zmq::Error::EAGAIN) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "circus event subscriber failed");
                        std::thread::sleep(Duration::from_millis(250));
                        continue;
                    }
                };
                if let [topic, body] = frames.as_slice() {
                    if let (Ok(topic), Ok(body)) = (std::str::from_utf8(topic), serde_json::from_slice::<Value>(body)) {
                        view.apply(topic, &body);
                    }
                }
            }
        })
        .map_err(|_| zmq::Error::EMFILE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crash_and_respawn_counts_as_restart() {
        let v = ProcessView::default();
        v.apply("watcher.w.add", &json!({"time": 1.0}));
        v.apply("watcher.w.spawn", &json!({"process_pid": 10, "time": 1.1}));
        v.apply("watcher.w.start", &json!({"time": 1.2}));
        v.apply("watcher.w.reap", &json!({"process_pid": 10, "exit_code": 3, "time": 2.0}));
        v.apply("watcher.w.spawn", &json!({"process_pid": 11, "time": 2.1}));
        let w = v.get("w").unwrap();
        assert_eq!(w.state, "active");
        assert_eq!(w.spawns, 2);
        assert_eq!(w.restarts, 1);
        assert_eq!(w.pids, BTreeSet::from([11]));
        assert_eq!(w.last_exit, Some(Exit { pid: 10, exit_code: 3, time: 2.0 }));
    }

    #[test]
    fn stopping_is_not_a_restart() {
        let v = ProcessView::default();
        v.apply("watcher.w.spawn", &json!({"process_pid": 10}));
        v.apply("watcher.w.start", &json!({}));
        v.apply("watcher.w.kill", &json!({"process_pid": 10}));
        v.apply("watcher.w.reap", &json!({"process_pid": 10, "exit_code": -15}));
        v.apply("watcher.w.stop", &json!({}));
        let w = v.get("w").unwrap();
        assert_eq!((w.state.as_str(), w.restarts), ("stopped", 0));
    }

    #[test]
    fn reconcile_forgets_missing_and_replaces_pids() {
        let v = ProcessView::default();
        v.apply("watcher.gone.spawn", &json!({"process_pid": 1}));
        v.apply("watcher.w.spawn", &json!({"process_pid": 2}));
        let states = BTreeMap::from([("w".to_string(), "active".to_string())]);
        let pids = BTreeMap::from([("w".to_string(), BTreeSet::from([3]))]);
        v.reconcile(&states, &pids);
        assert!(v.get("gone").is_none());
        assert_eq!(v.get("w").unwrap().pids, BTreeSet::from([3]));
    }

    #[test]
    fn repeated_crashes_within_the_window_are_a_crash_loop() {
        let m = Metrics::new();
        let v = ProcessView::new(Some(m.clone()), CrashLoop { restarts: 3, window_s: 10.0 });
        v.apply("watcher.w.start", &json!({"time": 0.0}));
        for i in 0..3 {
            let t = 1.0 + i as f64;
            v.apply("watcher.w.reap", &json!({"process_pid": i, "exit_code": 1, "time": t}));
            v.apply("watcher.w.spawn", &json!({"process_pid": i + 100, "time": t + 0.1}));
        }
        assert!(v.get("w").unwrap().crash_looping);
        assert_eq!(m.crash_looping.with_label_values(&["w"]).get(), 1);
        assert_eq!(m.reaps.with_label_values(&["w", "error"]).get(), 3);
        assert_eq!(m.restarts.with_label_values(&["w"]).get(), 3);
        // Long after the last restart, it no longer is.
        v.apply("watcher.w.updated", &json!({"time": 100.0}));
        assert!(!v.get("w").unwrap().crash_looping);
    }

    #[test]
    fn events_per_watcher_are_bounded() {
        let v = ProcessView::default();
        for i in 0..100 {
            v.apply("watcher.w.spawn", &json!({"process_pid": i}));
        }
        assert_eq!(v.get("w").unwrap().recent_events.len(), EVENTS_PER_WATCHER);
    }
}
