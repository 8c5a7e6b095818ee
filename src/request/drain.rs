//! Shutdown without lost answers: once the warden is told to stop, new tool calls are refused,
//! calls in flight finish within the grace period (their clients get answers, their changes get
//! outcome records), and every admitted change still unanswered when the grace ends gets an
//! outcome record that says so.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{ErrorKind, ToolError};

#[derive(Clone, Default)]
pub struct Drain(Arc<Inner>);

#[derive(Default)]
struct Inner {
    closing: AtomicBool,
    calls: AtomicUsize,
    idle: Notify,
    /// Decision ids of admitted changes whose outcome is not recorded yet.
    admitted: Mutex<HashSet<String>>,
}

/// One tool call in flight; dropping it ends the call.
pub struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Starts a tool call, unless the warden is shutting down.
    pub fn enter(&self) -> Result<InFlight, ToolError> {
        self.0.calls.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.clone());
        if self.0.closing.load(Ordering::Acquire) {
            return Err(ToolError::new(ErrorKind::CircusUnavailable, "the warden is shutting down; nothing was checked or sent"));
        }
        Ok(guard)
    }

    pub fn admitted(&self, id: &str) {
        self.0.admitted.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string());
    }

    pub fn answered(&self, id: &str) {
        self.0.admitted.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Refuses new calls from now on, and waits up to `grace` for the calls in flight.
    /// Returns the decision ids of the admitted changes still unanswered.
    pub async fn close(&self, grace: Duration) -> Vec<String> {
        self.0.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.0.idle.notified();
            if self.0.calls.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        self.0.admitted.lock().unwrap_or_else(|p| p.into_inner()).drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_waits_for_calls_in_flight_and_refuses_new_ones() {
        let d = Drain::default();
        let call = d.enter().unwrap();
        d.admitted("a");
        d.admitted("b");
        let d2 = d.clone();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            d2.answered("a");
            drop(call);
        });
        let left = d.close(Duration::from_secs(5)).await;
        finisher.await.unwrap();
        assert_eq!(left, ["b"], "b was admitted and never answered");
        assert_eq!(d.enter().err().map(|e| e.kind), Some(ErrorKind::CircusUnavailable));
    }

    #[tokio::test]
    async fn close_gives_up_after_the_grace() {
        let d = Drain::default();
        let _stuck = d.enter().unwrap();
        let started = std::time::Instant::now();
        d.close(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
