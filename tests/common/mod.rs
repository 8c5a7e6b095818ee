//! Test harness: a real circusd on unique ipc endpoints in a private temp dir, and a raw
//! DEALER to check its state independently of the code under test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Circusd {
    pub dir: tempfile::TempDir,
    pub control: String,
    pub pubsub: String,
    child: Option<Child>,
}

/// The circusd program: `.venv/bin/circusd` in the repository, else the one on PATH.
pub fn circusd_program() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/circusd");
    if venv.is_file() {
        return venv;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("circusd"))
        .find(|p| p.is_file())
        .expect("circusd not found: run `make venv` or put circusd on PATH")
}

impl Circusd {
    pub fn start() -> Circusd {
        let dir = tempfile::Builder::new().prefix("cw-test-").tempdir_in("/tmp").unwrap();
        let control = format!("ipc://{}/control.sock", dir.path().display());
        let pubsub = format!("ipc://{}/pubsub.sock", dir.path().display());
        std::fs::write(
            dir.path().join("circus.ini"),
            format!(
                "[circus]\nendpoint = {control}\npubsub_endpoint = {pubsub}\nmulticast_endpoint =\nstatsd = False\numask = 077\ncheck_delay = 5\n"
            ),
        )
        .unwrap();
        let mut c = Circusd { dir, control, pubsub, child: None };
        c.spawn();
        c
    }

    /// Starts (or restarts) circusd on the same endpoints and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("circusd.log")).unwrap();
        let child = Command::new(circusd_program())
            .arg(self.dir.path().join("circus.ini"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if raw_call(&self.control, "list", json!({}), Duration::from_millis(300)).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("circusd did not start; see {}", self.dir.path().join("circusd.log").display());
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGSTOPs circusd and waits until every one of its threads is stopped: `kill` returns
    /// before that, and libzmq's I/O thread could otherwise still complete a handshake.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        let stopped = eventually(Duration::from_secs(5), || {
            std::fs::read_dir(&tasks).map_or(false, |entries| {
                entries.flatten().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                })
            })
        });
        assert!(stopped, "circusd did not stop");
    }

    /// Kills circusd and its watchers' processes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = raw_call(&self.control, "quit", json!({}), Duration::from_millis(500));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn call(&self, command: &str, properties: Value) -> Value {
        raw_call(&self.control, command, properties, Duration::from_secs(5)).expect("circusd answers")
    }

    pub fn watchers(&self) -> Vec<String> {
        let v = self.call("list", json!({}));
        v["watchers"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Circusd {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// One request on a fresh DEALER; `None` on timeout.
pub fn raw_call(endpoint: &str, command: &str, properties: Value, timeout: Duration) -> Option<Value> {
    let s = circus_warden::circus::zmq_context().socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(timeout.as_millis() as i32).unwrap();
    s.connect(endpoint).unwrap();
    let msg = json!({"id": "test", "command": command, "properties": properties});
    s.send(msg.to_string().as_bytes(), 0).ok()?;
    let reply = s.recv_bytes(0).ok()?;
    serde_json::from_slice(&reply).ok()
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
