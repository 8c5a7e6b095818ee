//! The tailer: one thread that follows every `<dir>/<watcher>/{stdout,stderr}.log`. inotify
//! wakes it when a file changes; a poll interval catches whatever inotify missed (and is the
//! only trigger when inotify is unavailable). It survives rotation (drains the old file,
//! reads any newer backups, then opens the new file) and truncation, and saves its positions
//! so that a restarted warden resumes where it stopped: lines still on disk are neither lost
//! nor read twice.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::classify::Classifier;
use super::lines::{Output, Splitter};
use super::{Logs, Stream, now_ms};
use crate::circus::WatcherName;

/// The tailer's knobs, from `output.*`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub poll: Duration,
    pub flush_after: Duration,
    pub checkpoint_every: Duration,
    pub max_line: usize,
    /// circus keeps this many rotated files (`output.backup_count`).
    pub backup_count: u32,
    pub inotify: bool,
}

/// Saved positions: `<dir>/.circus-warden-positions.json`.
const POSITIONS: &str = ".circus-warden-positions.json";
/// Read at most this much of one file before giving the others a turn.
const TURN: usize = 4 << 20;

/// A file's identity: device, inode and birth time. Inode numbers are reused as soon as circus
/// deletes its oldest backup; the birth time tells the new file from the old.
type FileId = (u64, u64, i128);

fn file_id(m: &std::fs::Metadata) -> FileId {
    let birth = m.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i128);
    (m.dev(), m.ino(), birth)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Position {
    dev: u64,
    ino: u64,
    /// Birth time in ns (0 where the filesystem does not record it).
    #[serde(default)]
    birth: i128,
    offset: u64,
    /// An unfinished line that began in a file already rotated away (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    partial: String,
}

struct Tracked {
    watcher: String,
    stream: Stream,
    path: PathBuf,
    file: Option<(File, FileId)>,
    offset: u64,
    splitter: Splitter,
    last_data: Instant,
    /// Files already read to their end (rotated away), newest last; never read again.
    read: VecDeque<FileId>,
}

impl Tracked {
    fn done(&mut self, id: FileId) {
        if !self.read.contains(&id) {
            if self.read.len() == 1024 {
                self.read.pop_front();
            }
            self.read.push_back(id);
        }
    }
}

pub struct Tailer {
    s: Settings,
    logs: Logs,
    classifier: Classifier,
    files: FxHashMap<(String, Stream), Tracked>,
    saved: FxHashMap<String, Position>,
    last_saved: FxHashMap<String, Position>,
    inotify: Option<Inotify>,
    buf: Vec<u8>,
}

impl Tailer {
    pub fn new(s: Settings, logs: Logs, classifier: Classifier) -> std::io::Result<Tailer> {
        std::fs::create_dir_all(&s.dir)?;
        let saved: FxHashMap<String, Position> = match std::fs::read(s.dir.join(POSITIONS)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the saved output positions are unreadable; reading every file from its start");
                FxHashMap::default()
            }),
            Err(_) => FxHashMap::default(),
        };
        let inotify = if s.inotify {
            Inotify::new(&s.dir).map_err(|e| tracing::warn!(error = %e, "inotify is unavailable; polling output files")).ok()
        } else {
            None
        };
        Ok(Tailer { s, logs, classifier, files: FxHashMap::default(), last_saved: saved.clone(), saved, inotify, buf: vec![0; 64 << 10] })
    }

    /// Runs until `stop` is set, then saves positions.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let mut last_checkpoint = Instant::now();
        self.scan();
        let mut busy = self.poll_all(None);
        while !stop.load(Ordering::Relaxed) {
            let timeout = if busy { Duration::ZERO } else { self.s.poll };
            let woke = match &mut self.inotify {
                Some(i) => i.wait(timeout),
                None => {
                    std::thread::sleep(timeout);
                    Wake::Timeout
                }
            };
            busy = match woke {
                Wake::Dirs(dirs) if !busy => self.poll_all(Some(&dirs)),
                // A timeout, a rescan, or a busy round: look at everything.
                _ => {
                    self.scan();
                    self.poll_all(None)
                }
            };
            self.flush_idle();
            if last_checkpoint.elapsed() >= self.s.checkpoint_every {
                self.checkpoint();
                last_checkpoint = Instant::now();
            }
        }
        self.checkpoint();
    }

    /// Finds watcher directories (new ones get an inotify watch) and forgets vanished ones.
    fn scan(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.s.dir) else { return };
        let mut seen = FxHashSet::default();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().and_then(WatcherName::parse) else { continue };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            for stream in [Stream::Stdout, Stream::Stderr] {
                let key = (name.to_string(), stream);
                if !self.files.contains_key(&key) {
                    if let Some(i) = &mut self.inotify {
                        i.watch(&dir, name.as_str());
                    }
                    let path = dir.join(stream.file_name());
                    self.files.insert(
                        key,
                        Tracked {
                            watcher: name.to_string(),
                            stream,
                            path,
                            file: None,
                            offset: 0,
                            splitter: Splitter::new(stream, self.s.max_line),
                            last_data: Instant::now(),
                            read: VecDeque::new(),
                        },
                    );
                }
            }
            seen.insert(name.to_string());
        }
        self.files.retain(|(w, _), _| seen.contains(w));
    }

    /// Reads what is new in every file (or those of `only`); true if a file had more to read.
    fn poll_all(&mut self, only: Option<&FxHashSet<String>>) -> bool {
        let keys: Vec<(String, Stream)> = self.files.keys().filter(|(w, _)| only.is_none_or(|o| o.contains(w))).cloned().collect();
        let mut more = false;
        for key in keys {
            let Some(mut t) = self.files.remove(&key) else { continue };
            more |= self.poll(&mut t);
            self.files.insert(key, t);
        }
        more
    }

    fn poll(&mut self, t: &mut Tracked) -> bool {
        let current = open_regular(&t.path);
        let behind = match (&t.file, current) {
            (None, Some((f, id))) => match self.saved.remove(&relative(t)) {
                Some(p) => self.resume(t, p, f, id),
                // A new stream, or one caught between a rename and its new file (or still
                // catching up): read the backups not read yet, then the file.
                None => {
                    drop(f);
                    self.catch_up(t)
                }
            },
            (None, None) => return false,
            (Some((_, old)), Some((_, new))) if *old != new => {
                // Rotated: finish the old file, then the backups newer than it, then the new file.
                let old = *old;
                if let Some((f, _)) = t.file.take() {
                    self.read_file(t, f, usize::MAX);
                }
                t.done(old);
                self.catch_up(t)
            }
            (Some((cur, _)), Some(_)) => {
                if cur.metadata().is_ok_and(|m| m.len() < t.offset) {
                    // Truncated in place: start again from the top.
                    tracing::info!(path = %t.path.display(), "output file truncated; reading from its start");
                    if let Some((f, _)) = &mut t.file {
                        let _ = f.seek(SeekFrom::Start(0));
                    }
                    t.offset = 0;
                }
                false
            }
            (Some(_), None) => false,
        };
        let Some((mut f, id)) = t.file.take() else { return behind };
        let (read, more) = self.read_some(t, &mut f, TURN);
        t.offset += read as u64;
        t.file = Some((f, id));
        more
    }

    /// Picks up where a previous run stopped, from the saved position of this stream.
    fn resume(&mut self, t: &mut Tracked, p: Position, current: File, id: FileId) -> bool {
        if let Some(partial) = unhex(&p.partial) {
            t.splitter.restore_partial(partial);
        }
        let saved = (p.dev, p.ino, p.birth);
        if saved == id {
            let mut f = current;
            let len = f.metadata().map_or(0, |m| m.len());
            t.offset = if p.offset <= len { p.offset } else { 0 };
            let _ = f.seek(SeekFrom::Start(t.offset));
            t.file = Some((f, id));
            return false;
        }
        // Rotated while the warden was away: the saved file (if still on disk) from the saved
        // offset, then the newer backups in order, then the current file.
        drop(current);
        let mut list = backups(&t.path, self.s.backup_count);
        if let Some(at) = list.iter().position(|(_, b)| *b == saved) {
            // Backups older than the saved file were read by the previous run.
            for (_, id) in list.drain(..at) {
                t.done(id);
            }
            let (mut f, _) = list.remove(0);
            let _ = f.seek(SeekFrom::Start(p.offset));
            self.read_file(t, f, usize::MAX);
        }
        t.done(saved);
        self.catch_up(t)
    }

    /// Reads, oldest first, every backup not read yet, then opens the current file. A listing
    /// taken during a rotation can miss a file (see [`list_backups`]); a file missed once is
    /// read at the next rotation, late but not lost. The listing is repeated after opening,
    /// until it shows nothing unread. Returns true when circus kept rotating through a whole
    /// turn: the stream is left without a current file, and the next round (at once) goes on
    /// from the backups, so nothing is skipped and the other streams get their turn.
    fn catch_up(&mut self, t: &mut Tracked) -> bool {
        for _ in 0..16 {
            let (unread, late) = self.unread_backups(t);
            if late {
                tracing::warn!(path = %t.path.display(), "a rotated output file was missed by an earlier listing; its lines are stored late, out of order");
            }
            let progressed = !unread.is_empty();
            for (f, id) in unread {
                self.read_file(t, f, usize::MAX);
                t.done(id);
            }
            // No current file yet (circus renamed it and has not reopened): the next poll
            // catches up again.
            let Some((f, id)) = open_regular(&t.path) else { return false };
            if !progressed && self.unread_backups(t).0.is_empty() {
                t.file = Some((f, id));
                t.offset = 0;
                return false;
            }
        }
        true
    }

    /// The backups not read yet, oldest first, and whether one of them is older than a file
    /// already read (an earlier listing missed it).
    fn unread_backups(&self, t: &Tracked) -> (Vec<(File, FileId)>, bool) {
        let list = backups(&t.path, self.s.backup_count);
        let read: Vec<bool> = list.iter().map(|(_, id)| t.read.contains(id)).collect();
        let late = read.iter().rposition(|&r| r).is_some_and(|newest| read[..newest].contains(&false));
        let unread = list.into_iter().zip(read).filter(|(_, r)| !r).map(|(file, _)| file).collect();
        (unread, late)
    }

    fn read_file(&mut self, t: &mut Tracked, mut f: File, budget: usize) {
        while self.read_some(t, &mut f, budget).1 {}
    }

    /// Reads up to `budget` bytes and stores the lines; returns (bytes read, more waiting).
    fn read_some(&mut self, t: &mut Tracked, f: &mut File, budget: usize) -> (usize, bool) {
        let mut total = 0;
        while total < budget {
            let n = match f.read(&mut self.buf) {
                Ok(0) => return (total, false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot read an output file");
                    return (total, false);
                }
            };
            total += n;
            t.last_data = Instant::now();
            let mut out = Output::default();
            t.splitter.feed(&self.buf[..n], &self.classifier, &mut out);
            self.logs.push(&t.watcher, t.stream, out.lines, out.dropped, now_ms());
        }
        (total, true)
    }

    /// Emits unfinished lines and tracebacks that have waited long enough.
    fn flush_idle(&mut self) {
        for t in self.files.values_mut() {
            if t.splitter.holding() && t.last_data.elapsed() >= self.s.flush_after {
                let mut out = Output::default();
                t.splitter.flush(&self.classifier, &mut out);
                self.logs.push(&t.watcher, t.stream, out.lines, out.dropped, now_ms());
            }
        }
    }

    /// Saves positions (atomically, only when they moved). A position points before what the
    /// splitter still holds, so a restart re-reads it rather than losing it.
    fn checkpoint(&mut self) {
        let mut now: FxHashMap<String, Position> = self.saved.clone();
        for t in self.files.values() {
            let Some((_, (dev, ino, birth))) = &t.file else { continue };
            let held = t.splitter.held_raw() as u64;
            let p = if held <= t.offset {
                Position { dev: *dev, ino: *ino, birth: *birth, offset: t.offset - held, partial: String::new() }
            } else {
                Position { dev: *dev, ino: *ino, birth: *birth, offset: t.offset, partial: hex(t.splitter.partial()) }
            };
            now.insert(relative(t), p);
        }
        if now == self.last_saved {
            return;
        }
        let path = self.s.dir.join(POSITIONS);
        let tmp = self.s.dir.join(format!("{POSITIONS}.tmp"));
        let result = serde_json::to_vec(&now)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match result {
            Ok(()) => self.last_saved = now,
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot save output positions"),
        }
    }
}

fn relative(t: &Tracked) -> String {
    format!("{}/{}", t.watcher, t.stream.file_name())
}

/// The backups, oldest first, listed until two listings agree: a listing that overlaps a
/// rotation can miss a file, and the next one then differs.
fn backups(path: &Path, count: u32) -> Vec<(File, FileId)> {
    let same = |a: &[(File, FileId)], b: &[(File, FileId)]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.1 == y.1);
    let mut last = list_backups(path, count);
    for _ in 0..50 {
        let again = list_backups(path, count);
        let agree = same(&again, &last);
        last = again;
        if agree {
            break;
        }
    }
    last
}

/// `<path>.<count+1>` … `<path>.1`: the backups, oldest first, in one pass. circus rotates by
/// renaming `.k` to `.k+1` from the top down, so a file only ever moves to a higher number.
/// Listing from the top down therefore never shows an older file after a newer one (a file
/// seen at `.j` and another seen later at `.i < j` was newer all along); it can miss a file
/// that moves past the listing, never invert two. Timestamps cannot order them: rotations
/// come faster than the filesystem's clock ticks.
fn list_backups(path: &Path, count: u32) -> Vec<(File, FileId)> {
    let mut out: Vec<(File, FileId)> = Vec::new();
    for i in (1..=count + 1).rev() {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        if let Some((f, id)) = open_regular(Path::new(&p)) {
            // Never twice, whatever renames a writer other than circus does.
            if !out.iter().any(|(_, seen)| *seen == id) {
                out.push((f, id));
            }
        }
    }
    out
}

/// Opens a regular file without following symlinks or blocking on a FIFO.
fn open_regular(path: &Path) -> Option<(File, FileId)> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).ok()?;
    let m = f.metadata().ok()?;
    m.is_file().then(|| (f, file_id(&m)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

enum Wake {
    Timeout,
    /// Files changed in these watchers' directories.
    Dirs(FxHashSet<String>),
    /// A directory appeared or vanished, or events were lost.
    Rescan,
}

/// A minimal inotify binding: the output directory and each watcher's directory.
struct Inotify {
    fd: std::os::fd::OwnedFd,
    watches: FxHashMap<i32, String>,
    buf: Vec<u8>,
}

impl Inotify {
    fn new(root: &Path) -> std::io::Result<Inotify> {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let mut i = Inotify { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, watches: FxHashMap::default(), buf: vec![0; 16 << 10] };
        i.add(root, libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_ONLYDIR, "")?;
        Ok(i)
    }

    fn add(&mut self, dir: &Path, mask: u32, name: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask | libc::IN_DONT_FOLLOW) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.watches.insert(wd, name.to_string());
        Ok(())
    }

    fn watch(&mut self, dir: &Path, watcher: &str) {
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_ONLYDIR;
        if let Err(e) = self.add(dir, mask, watcher) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch an output directory; it is polled");
        }
    }

    fn wait(&mut self, timeout: Duration) -> Wake {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if n <= 0 {
            return Wake::Timeout;
        }
        let mut dirs = FxHashSet::default();
        let mut rescan = false;
        loop {
            // SAFETY: reading into our buffer of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel writes whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(self.buf.as_ptr().add(at).cast()) };
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    rescan = true;
                }
                match self.watches.get(&ev.wd) {
                    Some(w) if w.is_empty() => rescan = true,
                    Some(w) => {
                        dirs.insert(w.clone());
                    }
                    None => {}
                }
                if ev.mask & libc::IN_IGNORED != 0 {
                    self.watches.remove(&ev.wd);
                    rescan = true;
                }
                at += header + ev.len as usize;
            }
        }
        if rescan { Wake::Rescan } else { Wake::Dirs(dirs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::ReadLimits;
    use crate::output::alerts::Alerting;
    use crate::output::classify::Level;
    use crate::output::store::{Caps, Store};
    use std::io::Write;

    /// A backup older than one already read is reported late (an earlier listing missed it);
    /// one newer than everything read is not.
    #[test]
    fn a_backup_older_than_one_read_is_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        for (name, text) in [("stdout.log.2", "older"), ("stdout.log.1", "newer"), ("stdout.log", "current")] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let settings = Settings {
            dir: dir.path().into(),
            poll: Duration::from_millis(10),
            flush_after: Duration::from_millis(10),
            checkpoint_every: Duration::from_secs(1),
            max_line: 1024,
            backup_count: 3,
            inotify: false,
        };
        let caps = Caps { stream: 1 << 20, global: 1 << 20, max_watchers: 8 };
        let store = Store::new(caps, Alerting::new(&[], 8).unwrap(), None);
        let limits = ReadLimits { max_entries: 100, max_bytes: 1 << 20, max_followers: 1, notify_interval: Duration::from_secs(1) };
        let classifier = Classifier::new(&[], Level::Info, Level::Info).unwrap();
        let tailer = Tailer::new(settings, Logs::new(store, limits), classifier).unwrap();
        let mut t = Tracked {
            watcher: "w".into(),
            stream: Stream::Stdout,
            path: path.clone(),
            file: None,
            offset: 0,
            splitter: Splitter::new(Stream::Stdout, 1024),
            last_data: Instant::now(),
            read: VecDeque::new(),
        };
        let id = |name: &str| open_regular(&dir.path().join(name)).unwrap().1;
        let texts = |files: Vec<(File, FileId)>| -> Vec<String> {
            files
                .into_iter()
                .map(|(mut f, _)| {
                    let mut s = String::new();
                    f.read_to_string(&mut s).unwrap();
                    s
                })
                .collect()
        };

        let (unread, late) = tailer.unread_backups(&t);
        assert_eq!((texts(unread), late), (vec!["older".to_string(), "newer".to_string()], false));
        t.done(id("stdout.log.2"));
        let (unread, late) = tailer.unread_backups(&t);
        assert_eq!((texts(unread), late), (vec!["newer".to_string()], false));
        t.read.clear();
        t.done(id("stdout.log.1"));
        let (unread, late) = tailer.unread_backups(&t);
        assert_eq!((texts(unread), late), (vec!["older".to_string()], true));
    }

    /// A second thread rotates like circus's FileStream (`.k` → `.k+1` from the top down, then
    /// the file → `.1`, each file holding its sequence number) while this one lists: every
    /// listing is oldest first. A bounded race, not a mock: the renames are real.
    #[test]
    fn a_listing_during_rotations_never_inverts_two_files() {
        const COUNT: u32 = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        std::fs::write(&path, "0").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let rotator = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let name = |i: u32| PathBuf::from(format!("{}.{i}", path.display()));
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in (1..COUNT).rev() {
                        if name(i).exists() {
                            std::fs::rename(name(i), name(i + 1)).unwrap();
                        }
                    }
                    std::fs::rename(&path, name(1)).unwrap();
                    seq += 1;
                    std::fs::File::create(&path).unwrap().write_all(seq.to_string().as_bytes()).unwrap();
                }
                seq
            })
        };
        let (mut listings, mut files) = (0, 0);
        for _ in 0..20_000 {
            let seqs: Vec<u64> = list_backups(&path, COUNT)
                .into_iter()
                .map(|(mut f, _)| {
                    let mut s = String::new();
                    f.read_to_string(&mut s).unwrap();
                    s.parse().unwrap()
                })
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "listed out of order: {seqs:?}");
            listings += 1;
            files += seqs.len();
        }
        stop.store(true, Ordering::Relaxed);
        let rotations = rotator.join().unwrap();
        assert!(
            rotations > 100 && files > listings,
            "the race did not happen: {rotations} rotations, {files} files in {listings} listings"
        );
    }
}
