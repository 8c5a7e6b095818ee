//! The circusd control client: one thread owns every ZeroMQ socket; callers send typed
//! commands over a bounded channel and await a oneshot reply matched by message id.
//!
//! Why it is built this way (each point is a failure seen against a real circusd):
//! - Every socket has `ZMQ_IMMEDIATE`, so nothing is queued while circusd is unreachable and a
//!   command the caller was told failed is never delivered later.
//! - Reads share one persistent DEALER; replies may come out of order and are matched by id.
//!   When a read times out, that socket is dropped and a fresh one is opened (a wedged
//!   connection stays wedged).
//! - Mutations run one at a time, each on a **fresh** DEALER that must finish its ZMTP
//!   handshake (become writable) before the command is handed over. A circusd that is frozen
//!   or gone never completes the handshake, so the mutation is never sent and cannot run after
//!   the caller was told it failed.
//! - A monitor on each socket reports a dropped connection at once (circusd died or was
//!   restarted): reads sent on it are sent again on the new connection; a mutation sent on it
//!   fails with [`CircusError::Lost`] (its outcome is unknown) instead of holding every later
//!   mutation for the whole mutation timeout.
//! - A queued mutation's connect timeout starts when its turn comes, not when it was queued.
//! - Messages are only ever built by [`Command::encode`], never from caller bytes.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus::HistogramVec;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::{CircusError, Command};
use crate::config::CircusConfig;

/// How many calls may wait for the actor before callers are told it is overloaded.
const QUEUE_CAPACITY: usize = 1024;
/// The longest the actor sleeps in `poll` when nothing is due.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Where circusd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub control: String,
    /// `None` means ask circusd with `globaloptions`.
    pub pubsub: Option<String>,
}

/// Per-call limits, from [`CircusConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub read: Duration,
    pub mutation: Duration,
    pub lock_retries: u32,
    pub lock_retry_delay: Duration,
}

impl From<&CircusConfig> for Limits {
    fn from(c: &CircusConfig) -> Self {
        Limits {
            connect: c.connect_timeout(),
            read: c.read_timeout(),
            mutation: c.mutation_timeout(),
            lock_retries: c.lock_retries,
            lock_retry_delay: Duration::from_millis(c.lock_retry_delay_ms),
        }
    }
}

/// A cheap, cloneable handle to the client actor.
#[derive(Clone)]
pub struct CircusClient {
    inner: Arc<Handle>,
}

struct Handle {
    tx: mpsc::SyncSender<Call>,
    wake: OwnedFd,
    limits: Limits,
    /// Round-trip durations by command (`circus_warden_circus_call_duration_seconds`).
    timing: Option<HistogramVec>,
}

struct Call {
    cmd: Command,
    /// Until when the call may wait for a connected socket; after it nothing is sent. For a
    /// mutation, set again when its turn comes.
    connect_by: Instant,
    /// The connect timeout, to set `connect_by` again.
    connect: Duration,
    /// Until when a sent call may wait for its reply.
    reply_by: Instant,
    /// The whole budget, for the timeout message.
    budget_ms: u64,
    reply: oneshot::Sender<Result<Value, CircusError>>,
}

impl CircusClient {
    /// Starts the actor thread for `endpoint`; `timing` records each call's duration.
    pub fn start(endpoint: &str, limits: Limits, timing: Option<HistogramVec>) -> std::io::Result<CircusClient> {
        // SAFETY: eventfd returns a new descriptor or -1; ownership passes to OwnedFd.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let actor = Actor::new(endpoint.to_string(), rx, wake.as_raw_fd());
        std::thread::Builder::new().name("circus-client".into()).spawn(move || actor.run())?;
        Ok(CircusClient { inner: Arc::new(Handle { tx, wake, limits, timing }) })
    }

    /// Sends one command and waits for its reply payload (circusd's reply object, minus
    /// `status`, `time` and `id` unless `status` carries a watcher state). Mutations that hit
    /// circusd's global lock are retried with doubling delays, within the mutation timeout.
    pub async fn call(&self, cmd: Command) -> Result<Value, CircusError> {
        let _timer = self.inner.timing.as_ref().map(|h| h.with_label_values(&[cmd.verb()]).start_timer());
        let limits = self.inner.limits;
        let budget = if cmd.is_mutation() { limits.mutation } else { limits.read };
        let deadline = Instant::now() + budget;
        let mut delay = limits.lock_retry_delay;
        let mut attempt = 0;
        loop {
            match self.call_once(cmd.clone(), deadline, budget.as_millis() as u64).await {
                Err(e) if e.is_lock_conflict() && cmd.is_mutation() => {
                    if attempt >= limits.lock_retries || Instant::now() + delay >= deadline {
                        return Err(CircusError::Busy { retries: attempt, reason: e.to_string() });
                    }
                    attempt += 1;
                    tracing::debug!(verb = cmd.verb(), attempt, "circusd lock busy; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, cmd: Command, reply_by: Instant, budget_ms: u64) -> Result<Value, CircusError> {
        let connect = self.inner.limits.connect;
        let connect_by = (Instant::now() + connect).min(reply_by);
        let (reply, rx) = oneshot::channel();
        let call = Call { cmd, connect_by, connect, reply_by, budget_ms, reply };
        match self.inner.tx.try_send(call) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(CircusError::Unavailable("the circus client queue is full".into()));
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(CircusError::Closed),
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.inner.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        rx.await.unwrap_or(Err(CircusError::Closed))
    }
}

/// A call that has been given a message id.
struct Pending {
    id: String,
    call: Call,
}

impl Pending {
    fn finish(self, result: Result<Value, CircusError>) {
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = self.call.reply.send(result);
    }
}

/// The single mutation in progress, on its own fresh socket.
struct Mutation {
    socket: Monitored,
    pending: Pending,
    sent: bool,
}

/// A DEALER and the PAIR socket that hears its connection events.
struct Monitored {
    socket: zmq::Socket,
    events: zmq::Socket,
}

impl Monitored {
    /// Whether the connection dropped since the last look (drains the pending events).
    fn disconnected(&self) -> bool {
        let mut dropped = false;
        while let Ok(frames) = self.events.recv_multipart(zmq::DONTWAIT) {
            let event = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
            dropped |= event == Some(zmq::SocketEvent::DISCONNECTED as u16);
        }
        dropped
    }
}

struct Actor {
    endpoint: String,
    rx: mpsc::Receiver<Call>,
    wake: i32,
    id_prefix: String,
    seq: u64,
    /// Numbers the monitor endpoints of the sockets this actor opens.
    sockets: u64,
    reads: Option<Monitored>,
    reads_unsent: VecDeque<Pending>,
    reads_sent: HashMap<String, Pending>,
    mutations: VecDeque<Pending>,
    mutation: Option<Mutation>,
}

impl Actor {
    fn new(endpoint: String, rx: mpsc::Receiver<Call>, wake: i32) -> Actor {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom fills at most the given number of bytes of our buffer.
        unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        Actor {
            endpoint,
            rx,
            wake,
            id_prefix: format!("{:016x}", u64::from_ne_bytes(seed)),
            seq: 0,
            sockets: 0,
            reads: None,
            reads_unsent: VecDeque::new(),
            reads_sent: HashMap::new(),
            mutations: VecDeque::new(),
            mutation: None,
        }
    }

    fn run(mut self) {
        loop {
            if !self.drain_channel() {
                break;
            }
            self.start_next_mutation();
            let timeout = self.next_deadline().map_or(IDLE_POLL, |d| d.saturating_duration_since(Instant::now()));
            let (wake_ready, reads_in, reads_out, mut_in, mut_out, events) = match self.poll(timeout.min(IDLE_POLL)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "zmq poll failed; resetting sockets");
                    self.reset_reads(CircusError::Unavailable(format!("poll failed: {e}")));
                    continue;
                }
            };
            if wake_ready {
                let mut buf = [0u8; 8];
                // SAFETY: reads at most 8 bytes into our buffer from our own eventfd.
                unsafe { libc::read(self.wake, buf.as_mut_ptr().cast(), 8) };
            }
            if reads_out {
                self.send_reads();
            }
            if reads_in {
                self.receive_reads();
            }
            if mut_out {
                self.send_mutation();
            }
            if mut_in {
                self.receive_mutation();
            }
            if events {
                self.handle_disconnects();
            }
            self.expire(Instant::now());
        }
        tracing::debug!("circus client actor stopped");
    }

    /// Moves every queued call into the actor's queues. Returns false once every handle is gone.
    fn drain_channel(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(call) => {
                    self.seq += 1;
                    let pending = Pending { id: format!("{}{:016x}", self.id_prefix, self.seq), call };
                    if pending.call.cmd.is_mutation() {
                        self.mutations.push_back(pending);
                    } else {
                        self.reads_unsent.push_back(pending);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return !(self.reads_unsent.is_empty()
                        && self.reads_sent.is_empty()
                        && self.mutations.is_empty()
                        && self.mutation.is_none());
                }
            }
        }
    }

    fn open(&mut self) -> Result<Monitored, zmq::Error> {
        let ctx = super::zmq_context();
        let s = ctx.socket(zmq::DEALER)?;
        s.set_linger(0)?;
        s.set_immediate(true)?;
        s.set_reconnect_ivl(100)?;
        s.set_reconnect_ivl_max(1000)?;
        self.sockets += 1;
        let monitor = format!("inproc://circus-client-{}-{}", self.id_prefix, self.sockets);
        s.monitor(&monitor, zmq::SocketEvent::DISCONNECTED as i32)?;
        let events = ctx.socket(zmq::PAIR)?;
        events.set_linger(0)?;
        events.connect(&monitor)?;
        s.connect(&self.endpoint)?;
        Ok(Monitored { socket: s, events })
    }

    fn start_next_mutation(&mut self) {
        if self.mutation.is_some() {
            return;
        }
        let Some(mut pending) = self.mutations.pop_front() else { return };
        // The connect timeout counts from now: time spent queued behind other mutations says
        // nothing about circusd's health.
        pending.call.connect_by = (Instant::now() + pending.call.connect).min(pending.call.reply_by);
        match self.open() {
            Ok(socket) => self.mutation = Some(Mutation { socket, pending, sent: false }),
            Err(e) => pending.finish(Err(CircusError::Unavailable(format!("cannot open a socket: {e}")))),
        }
    }

    #[allow(clippy::type_complexity)]
    fn poll(&mut self, timeout: Duration) -> Result<(bool, bool, bool, bool, bool, bool), zmq::Error> {
        if self.reads.is_none() && !self.reads_unsent.is_empty() {
            match self.open() {
                Ok(s) => self.reads = Some(s),
                Err(e) => self.reset_reads(CircusError::Unavailable(format!("cannot open a socket: {e}"))),
            }
        }
        let mut items = vec![zmq::PollItem::from_fd(self.wake, zmq::POLLIN)];
        let reads_at = self.reads.as_ref().map(|s| {
            let mut ev = zmq::POLLIN;
            if !self.reads_unsent.is_empty() {
                ev |= zmq::POLLOUT;
            }
            items.push(s.socket.as_poll_item(ev));
            items.len() - 1
        });
        let mut_at = self.mutation.as_ref().map(|m| {
            items.push(m.socket.socket.as_poll_item(if m.sent { zmq::POLLIN } else { zmq::POLLOUT }));
            items.len() - 1
        });
        let first_event = items.len();
        for m in self.reads.iter().chain(self.mutation.as_ref().map(|m| &m.socket)) {
            items.push(m.events.as_poll_item(zmq::POLLIN));
        }
        zmq::poll(&mut items, timeout.as_millis().max(1) as i64)?;
        let r = |i: Option<usize>| i.map_or((false, false), |i| (items[i].is_readable(), items[i].is_writable()));
        let (reads_in, reads_out) = r(reads_at);
        let (mut_in, mut_out) = r(mut_at);
        let events = items[first_event..].iter().any(|i| i.is_readable());
        Ok((items[0].is_readable(), reads_in, reads_out, mut_in, mut_out, events))
    }

    /// A dropped connection: reads sent on it go out again once the socket has reconnected
    /// (they change nothing); a mutation sent on it has an unknown outcome and fails now.
    fn handle_disconnects(&mut self) {
        if self.reads.as_ref().is_some_and(Monitored::disconnected) && !self.reads_sent.is_empty() {
            tracing::warn!(reads = self.reads_sent.len(), "circusd's connection dropped; sending the pending reads again");
            let now = Instant::now();
            for (_, mut p) in self.reads_sent.drain() {
                p.call.connect_by = (now + p.call.connect).min(p.call.reply_by);
                self.reads_unsent.push_back(p);
            }
        }
        if self.mutation.as_ref().is_some_and(|m| m.socket.disconnected() && m.sent) {
            let m = self.mutation.take().expect("checked above");
            tracing::warn!(verb = m.pending.call.cmd.verb(), "circusd's connection dropped after a mutation was sent");
            m.pending.finish(Err(CircusError::Lost(
                "the connection to circusd dropped after the command was sent; circusd may or may not have carried it out".into(),
            )));
        }
    }

    fn send_reads(&mut self) {
        let Some(Monitored { socket, .. }) = &self.reads else { return };
        while let Some(p) = self.reads_unsent.pop_front() {
            match socket.send(p.call.cmd.encode(&p.id), zmq::DONTWAIT) {
                Ok(()) => {
                    self.reads_sent.insert(p.id.clone(), p);
                }
                Err(zmq::Error::EAGAIN) => {
                    self.reads_unsent.push_front(p);
                    break;
                }
                Err(e) => p.finish(Err(CircusError::Unavailable(format!("send failed: {e}")))),
            }
        }
    }

    fn receive_reads(&mut self) {
        let Some(Monitored { socket, .. }) = &self.reads else { return };
        while let Ok(frame) = socket.recv_bytes(zmq::DONTWAIT) {
            match parse_reply(&frame) {
                Ok((id, result)) => match self.reads_sent.remove(&id) {
                    Some(p) => p.finish(result),
                    None => tracing::debug!(%id, "reply for a call nobody waits for"),
                },
                Err(e) => tracing::warn!(error = %e, "discarding a malformed reply from circusd"),
            }
        }
    }

    fn send_mutation(&mut self) {
        let Some(m) = &mut self.mutation else { return };
        if m.sent {
            return;
        }
        match m.socket.socket.send(m.pending.call.cmd.encode(&m.pending.id), zmq::DONTWAIT) {
            Ok(()) => m.sent = true,
            Err(zmq::Error::EAGAIN) => {}
            Err(e) => {
                let m = self.mutation.take().expect("checked above");
                m.pending.finish(Err(CircusError::Unavailable(format!("send failed: {e}"))));
            }
        }
    }

    fn receive_mutation(&mut self) {
        let Some(m) = &self.mutation else { return };
        while let Ok(frame) = m.socket.socket.recv_bytes(zmq::DONTWAIT) {
            match parse_reply(&frame) {
                Ok((id, result)) if id == m.pending.id => {
                    let m = self.mutation.take().expect("checked above");
                    m.pending.finish(result);
                    return;
                }
                Ok((id, _)) => tracing::debug!(%id, "stray reply on a mutation socket"),
                Err(e) => tracing::warn!(error = %e, "discarding a malformed reply from circusd"),
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let unsent = self.reads_unsent.iter().map(|p| p.call.connect_by);
        let sent = self.reads_sent.values().map(|p| p.call.reply_by);
        let queued = self.mutations.iter().map(|p| p.call.reply_by);
        let current = self.mutation.iter().map(|m| if m.sent { m.pending.call.reply_by } else { m.pending.call.connect_by });
        unsent.chain(sent).chain(queued).chain(current).min()
    }

    /// Fails every call whose time is up. A sent read that timed out takes its socket with it.
    fn expire(&mut self, now: Instant) {
        let (late, keep): (Vec<_>, Vec<_>) = self.reads_unsent.drain(..).partition(|p| p.call.connect_by <= now);
        self.reads_unsent.extend(keep);
        for p in late {
            p.finish(Err(CircusError::Unavailable("no connection to circusd within the connect timeout".into())));
        }
        if self.reads_sent.values().any(|p| p.call.reply_by <= now) {
            tracing::warn!("a circusd read timed out; dropping the socket and reconnecting");
            self.reset_reads(CircusError::Timeout(0));
        }
        let (late, keep): (Vec<_>, Vec<_>) = self.mutations.drain(..).partition(|p| p.call.reply_by <= now);
        self.mutations.extend(keep);
        for p in late {
            p.finish(Err(CircusError::Unavailable("not sent: still queued behind another mutation at its deadline".into())));
        }
        let expired =
            self.mutation.as_ref().is_some_and(|m| if m.sent { m.pending.call.reply_by <= now } else { m.pending.call.connect_by <= now });
        if expired {
            let m = self.mutation.take().expect("checked");
            let err = if m.sent {
                tracing::warn!(verb = m.pending.call.cmd.verb(), "a circusd mutation timed out; dropping its socket");
                CircusError::Timeout(m.pending.call.budget_ms)
            } else {
                CircusError::Unavailable("no connection to circusd within the connect timeout; nothing was sent".into())
            };
            m.pending.finish(Err(err));
        }
    }

    /// Drops the read socket; every read sent on it fails with `err` (their replies can no
    /// longer arrive). Unsent reads stay queued for the next socket.
    fn reset_reads(&mut self, err: CircusError) {
        self.reads = None;
        for (_, p) in self.reads_sent.drain() {
            let e = match &err {
                CircusError::Timeout(_) => CircusError::Timeout(p.call.budget_ms),
                other => other.clone(),
            };
            p.finish(Err(e));
        }
    }
}

/// Splits a reply frame into its id and the call's outcome.
fn parse_reply(frame: &[u8]) -> Result<(String, Result<Value, CircusError>), String> {
    let value: Value = serde_json::from_slice(frame).map_err(|e| e.to_string())?;
    let Value::Object(mut obj) = value else { return Err("reply is not a JSON object".into()) };
    let id = match obj.remove("id") {
        Some(Value::String(s)) => s,
        _ => return Err("reply has no string id".into()),
    };
    Ok((id, outcome(obj)))
}

fn outcome(mut obj: Map<String, Value>) -> Result<Value, CircusError> {
    obj.remove("time");
    match obj.get("status").and_then(Value::as_str) {
        Some("error") => Err(CircusError::Remote {
            errno: obj.get("errno").and_then(Value::as_i64).unwrap_or(0),
            reason: obj.get("reason").and_then(Value::as_str).unwrap_or("unknown error").to_string(),
        }),
        Some("ok") => {
            obj.remove("status");
            Ok(Value::Object(obj))
        }
        // `status` with a name puts the watcher state where "ok" would be.
        Some(_) => Ok(Value::Object(obj)),
        None => Err(CircusError::BadReply("reply has no status".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_into_id_and_outcome() {
        let (id, r) = parse_reply(br#"{"status":"ok","time":1.0,"watchers":["a"],"id":"x"}"#).unwrap();
        assert_eq!(id, "x");
        assert_eq!(r.unwrap(), serde_json::json!({"watchers": ["a"]}));
        let (_, r) = parse_reply(br#"{"status":"active","time":1.0,"id":"y"}"#).unwrap();
        assert_eq!(r.unwrap()["status"], "active");
        let (_, r) = parse_reply(br#"{"status":"error","reason":"program x not found","errno":3,"id":"z"}"#).unwrap();
        assert!(r.unwrap_err().is_not_found());
    }

    #[test]
    fn malformed_replies_are_refused() {
        assert!(parse_reply(b"[1]").is_err());
        assert!(parse_reply(b"{\"status\":\"ok\"}").is_err());
        assert!(parse_reply(b"\xff").is_err());
    }
}
