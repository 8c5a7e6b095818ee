//! Everything that talks to circusd: the typed commands, the ZeroMQ client actor, the pub/sub
//! view of processes, and the supervisor of an embedded circusd.

pub mod client;
pub mod command;
pub mod events;
pub mod supervisor;

use std::fmt;

pub use client::{CircusClient, Endpoints};
pub use command::Command;

/// The process's one ZeroMQ context, shared by every socket. It is never terminated:
/// `zmq_ctx_term` can block forever even when every socket had LINGER=0 (libzmq#2586; seen
/// here when circusd died under a pending `quit`), and a context per socket buys nothing.
pub fn zmq_context() -> zmq::Context {
    static CONTEXT: std::sync::LazyLock<zmq::Context> = std::sync::LazyLock::new(zmq::Context::new);
    CONTEXT.clone()
}

/// One request on a one-off DEALER, for the few callers that run without the client actor
/// (the supervisor's `quit`, `config check`): sends `message` once circusd is connected (1 s)
/// and waits at most `reply` for one frame.
pub fn one_off(endpoint: &str, message: &[u8], reply: std::time::Duration) -> Result<Vec<u8>, zmq::Error> {
    let s = zmq_context().socket(zmq::DEALER)?;
    s.set_linger(0)?;
    s.set_immediate(true)?;
    s.set_sndtimeo(1000)?;
    s.set_rcvtimeo(i32::try_from(reply.as_millis()).unwrap_or(i32::MAX))?;
    s.connect(endpoint)?;
    s.send(message, 0)?;
    s.recv_bytes(0)
}

/// A watcher name the warden accepts: lower-case ASCII letters, digits, `_` and `-`, starting
/// with a letter or digit, at most 64 bytes.
///
/// circusd compares names case-insensitively and lower-cases them in event topics, and treats
/// names as globs unless told otherwise; this alphabet has no glob, dot, space or case to play
/// with, so one string names one watcher everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatcherName(String);

impl WatcherName {
    pub const MAX_LEN: usize = 64;
    pub const RULE: &'static str = "1-64 characters from a-z, 0-9, '_' and '-', starting with a letter or digit";

    pub fn parse(s: &str) -> Option<WatcherName> {
        let b = s.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= Self::MAX_LEN
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
        valid.then(|| WatcherName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WatcherName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a call to circusd did not succeed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CircusError {
    /// No connection could be made within the connect timeout; nothing was sent.
    #[error("circusd is unavailable: {0}")]
    Unavailable(String),
    /// Sent, but no reply in time. The socket was dropped, so the command cannot run later
    /// from the warden's queue.
    #[error("circusd did not answer within {0} ms")]
    Timeout(u64),
    /// circusd answered with an error.
    #[error("circusd error {errno}: {reason}")]
    Remote { errno: i64, reason: String },
    /// circusd kept reporting its global lock as busy after every retry.
    #[error("circusd is busy with another operation after {retries} retries: {reason}")]
    Busy { retries: u32, reason: String },
    /// The client actor is gone (the warden is shutting down).
    #[error("the circus client is shut down")]
    Closed,
    /// The warden could not prepare the command (for an add, its output directory); nothing
    /// was sent.
    #[error("nothing was sent: {0}")]
    NotSent(String),
    /// Sent, then the connection dropped (circusd died or restarted) before the reply: the
    /// command may or may not have been carried out.
    #[error("outcome unknown: {0}")]
    Lost(String),
    /// circusd's reply was not the JSON object the protocol promises.
    #[error("malformed reply from circusd: {0}")]
    BadReply(String),
}

impl CircusError {
    /// errno 3 with "not found" is circus's way of saying the watcher does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CircusError::Remote { errno: 3, reason } if reason.contains("not found"))
    }

    /// The reasons circusd gives while its global mutation lock is held.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, CircusError::Remote { errno: 5, reason }
            if reason.contains("is already running") || reason.contains("arbiter is restarting"))
    }
}

/// Signal names the warden knows, as circus accepts them (without `SIG`).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
];

/// Normalises `"hup"`, `"SIGHUP"` or `"HUP"` to `("HUP", 1)`; `None` for anything else.
pub fn signal_number(name: &str) -> Option<(&'static str, i32)> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == bare).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_globs_case_and_separators() {
        for bad in ["", "W", "w*", "a.b", "a b", "-x", "é", "a?", "[a]", &"x".repeat(65)] {
            assert!(WatcherName::parse(bad).is_none(), "{bad:?}");
        }
        for good in ["w", "web-1", "a_b", "0x", &"x".repeat(64)] {
            assert!(WatcherName::parse(good).is_some(), "{good:?}");
        }
    }

    #[test]
    fn signals_normalise() {
        assert_eq!(signal_number("sighup"), Some(("HUP", 1)));
        assert_eq!(signal_number("TERM"), Some(("TERM", 15)));
        assert_eq!(signal_number("SIGFOO"), None);
    }

    #[test]
    fn lock_conflicts_are_recognised() {
        let e = CircusError::Remote { errno: 5, reason: "arbiter is already running watcher_stop command".into() };
        assert!(e.is_lock_conflict());
        assert!(!CircusError::Remote { errno: 5, reason: "boom".into() }.is_lock_conflict());
    }
}
