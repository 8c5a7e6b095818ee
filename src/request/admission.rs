//! The admission lock: a cap check and the change it admits happen under one lock, held until
//! circusd has answered, so that no interleaving of calls can pass a cap that each one alone
//! would fit under. Inside one warden it is a mutex; across wardens on one host it is also a
//! `flock` on a file beside circusd's ipc control socket (`<socket>.lock`), which every warden
//! of that circusd finds at the same path. A tcp endpoint has no such place: one warden per
//! circusd (docs/policy.md, Caps).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{ErrorKind, ToolError};

/// The lock of one circusd.
#[derive(Clone, Default)]
pub struct AdmissionLock {
    local: Arc<Mutex<()>>,
    /// The shared lock file; `None` for tcp endpoints.
    file: Option<PathBuf>,
}

/// Held while a change is admitted and sent; released when dropped.
pub struct Admission {
    _file: Option<Flock<File>>,
    _local: OwnedMutexGuard<()>,
}

impl AdmissionLock {
    /// The lock for a control endpoint: the file `<socket>.lock` for `ipc://<socket>`.
    pub fn for_endpoint(control: &str) -> AdmissionLock {
        let file = control.strip_prefix("ipc://").map(|p| PathBuf::from(format!("{p}.lock")));
        AdmissionLock { local: Arc::default(), file }
    }

    pub fn path(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// Takes the lock, waiting at most `budget`. Every failure is an error: nothing is
    /// admitted without it.
    pub async fn acquire(&self, budget: Duration) -> Result<Admission, ToolError> {
        let deadline = Instant::now() + budget;
        let local = tokio::time::timeout(budget, self.local.clone().lock_owned())
            .await
            .map_err(|_| busy(format!("another change held the admission lock for {} ms", budget.as_millis())))?;
        let Some(path) = &self.file else { return Ok(Admission { _file: None, _local: local }) };
        let mut delay = Duration::from_millis(1);
        loop {
            let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(|e| {
                ToolError::new(ErrorKind::CircusUnavailable, format!("cannot open the admission lock {}: {e}", path.display()))
            })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(held) => return Ok(Admission { _file: Some(held), _local: local }),
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(20));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(busy(format!("another warden of this circusd held {} for {} ms", path.display(), budget.as_millis())));
                }
                Err((_, e)) => {
                    return Err(ToolError::new(ErrorKind::CircusUnavailable, format!("cannot lock {}: {e}", path.display())));
                }
            }
        }
    }
}

fn busy(message: String) -> ToolError {
    ToolError::new(ErrorKind::Busy, format!("{message}; nothing was checked or sent, retry later"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_locks_on_one_file_exclude_each_other_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("ipc://{}/control.sock", dir.path().display());
        // Two wardens: separate locks, one file.
        let (a, b) = (AdmissionLock::for_endpoint(&endpoint), AdmissionLock::for_endpoint(&endpoint));
        assert_eq!(a.path(), Some(&dir.path().join("control.sock.lock")));
        let held = a.acquire(Duration::from_secs(1)).await.unwrap();
        let e = b.acquire(Duration::from_millis(50)).await.err().expect("the file lock must exclude the second warden");
        assert_eq!(e.kind, ErrorKind::Busy);
        drop(held);
        b.acquire(Duration::from_millis(500)).await.expect("free again once released");
        // One warden: the mutex excludes a second caller too.
        let held = a.acquire(Duration::from_secs(1)).await.unwrap();
        assert!(a.acquire(Duration::from_millis(30)).await.is_err());
        drop(held);
        assert!(AdmissionLock::for_endpoint("tcp://127.0.0.1:5555").path().is_none());
    }
}
