//! Ingest throughput: what the tailer does per read (`Tailer::read_some`: a 64 KiB read into a
//! reusable buffer, `Splitter::feed` into a fresh `Output` — split, decode, classify — then one
//! `Logs::push` into the capped store with the default caps and alert rules), single-threaded,
//! over a generated file of 100-byte lines already in the page cache. Beside it, in the same
//! run and on the same file, `wc -l` (the memchr-speed floor) and cheaper variants of the
//! path that show where the time goes:
//!
//!   read only         64 KiB reads, nothing else
//!   split only        + memchr for each newline
//!   split+classify    + `Classifier::classify` on each line (no allocation)
//!   splitter.feed     + `Splitter::feed` (decode into a String per line, classify), lines dropped
//!   full              + `Logs::push` (store, stats, metrics, alerts, eviction): the real path
//!
//! Each row is the best of 3 runs. Target: `full` at least 250 MiB/s with default
//! classification; informational only (this never fails on speed). It does fail when the
//! line counts disagree (wc -l, each variant, the store's summary).
//!
//! `CW_BENCH_MIB` sets the file size (default 256); `CW_BENCH_RUNS` the runs per row (3);
//! `CW_BENCH_ONLY=full` (comma-separated row names) skips the other variants, for a profiler
//! (`wc -l` and `full` always run).
//! Run: `cargo bench --bench ingest`.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use circus_warden::metrics::Metrics;
use circus_warden::output::alerts::{Alerting, default_rules};
use circus_warden::output::classify::{Classifier, Level};
use circus_warden::output::lines::{Output, Splitter};
use circus_warden::output::store::{Caps, Store};
use circus_warden::output::{Logs, ReadLimits, Stream, now_ms};

const LINE: usize = 100;
const READ: usize = 64 << 10;
/// Defaults of `output.*` (src/config.rs).
const STREAM_CAP: usize = 1 << 20;
const GLOBAL_CAP: usize = 64 << 20;
const MAX_LINE: usize = 16 << 10;
const MAX_WATCHERS: usize = 512;
const TARGET_MIB_S: f64 = 250.0;
const WATCHER: &str = "bench";

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One line of exactly `LINE` bytes (newline included): `head`, hex filler, `tail`.
fn fit(out: &mut Vec<u8>, head: &str, tail: &str, rng: &mut Rng) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let room = LINE - 1;
    let head = &head.as_bytes()[..head.len().min(room - tail.len())];
    out.extend_from_slice(head);
    let mut bits = rng.next();
    for i in 0..room - head.len() - tail.len() {
        if i % 16 == 0 {
            bits = rng.next();
        }
        out.push(HEX[(bits & 15) as usize]);
        bits >>= 4;
    }
    out.extend_from_slice(tail.as_bytes());
    out.push(b'\n');
}

/// What the mix is meant to be, per mille: plain INFO 780, WARNING 50, ERROR 20, JSON info 90,
/// JSON warn 10, logfmt debug 50.
fn line(out: &mut Vec<u8>, rng: &mut Rng) {
    let (m, s, ms) = (rng.below(60), rng.below(60), rng.below(1000));
    let n = rng.below(10_000);
    let r = rng.below(1000);
    let ts = format!("2026-11-21 10:{m:02}:{s:02},{ms:03}");
    let iso = format!("2026-11-21T10:{m:02}:{s:02}.{ms:03}Z");
    match r {
        0..780 => {
            let head = format!("{ts} INFO [web.handler] GET /api/v1/items/{n} status=200 duration_ms={} id=", n % 97);
            fit(out, &head, "", rng);
        }
        780..830 => {
            let head = format!("{ts} WARNING [web.pool] slow query table=orders duration_ms={} trace=", 1000 + n);
            fit(out, &head, "", rng);
        }
        830..850 => {
            let head = format!("{ts} ERROR [web.handler] upstream timeout host=db-{} attempt={} trace=", n % 8, n % 3);
            fit(out, &head, "", rng);
        }
        850..940 => {
            let head = format!("{{\"time\":\"{iso}\",\"level\":\"info\",\"logger\":\"worker\",\"msg\":\"job {n} done\",\"id\":\"");
            fit(out, &head, "\"}", rng);
        }
        940..950 => {
            let head = format!("{{\"time\":\"{iso}\",\"level\":\"warn\",\"logger\":\"worker\",\"msg\":\"retry {n}\",\"id\":\"");
            fit(out, &head, "\"}", rng);
        }
        _ => {
            let head = format!("ts={iso} level=debug caller=cache.go:{} msg=\"cache miss\" key=", n % 400);
            fit(out, &head, "", rng);
        }
    }
}

fn generate(path: &Path, mib: u64) -> std::io::Result<u64> {
    let lines = (mib << 20) / LINE as u64;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::with_capacity(LINE * 1024);
    for i in 0..lines {
        let before = buf.len();
        line(&mut buf, &mut rng);
        debug_assert_eq!(buf.len() - before, LINE);
        if i % 1024 == 1023 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)?;
    w.flush()?;
    Ok(lines)
}

/// Calls `f` for each 64 KiB read of the file, as the tailer reads.
fn each_read(path: &Path, buf: &mut [u8], mut f: impl FnMut(&[u8])) {
    let mut file = File::open(path).expect("open the bench file");
    loop {
        let n = match file.read(buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        };
        f(&buf[..n]);
    }
}

fn wc_l(path: &Path) -> (Duration, u64) {
    let t = Instant::now();
    let out = Command::new("wc").arg("-l").arg(path).output().expect("run wc -l");
    let took = t.elapsed();
    assert!(out.status.success(), "wc -l failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let n = text.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("wc -l said {text:?}"));
    (took, n)
}

fn read_only(path: &Path) -> u64 {
    let mut buf = vec![0u8; READ];
    let mut bytes = 0u64;
    each_read(path, &mut buf, |b| bytes += b.len() as u64);
    bytes / LINE as u64
}

fn split_only(path: &Path) -> u64 {
    let mut buf = vec![0u8; READ];
    let mut lines = 0u64;
    each_read(path, &mut buf, |b| lines += memchr::memchr_iter(b'\n', b).count() as u64);
    lines
}

/// Lines never span reads here only because 64 KiB is not a multiple of 100: carry the tail.
fn split_classify(path: &Path, c: &Classifier) -> u64 {
    let mut buf = vec![0u8; READ];
    let mut partial: Vec<u8> = Vec::new();
    let mut lines = 0u64;
    let mut levels = [0u64; 6];
    each_read(path, &mut buf, |mut b| {
        while let Some(i) = memchr::memchr(b'\n', b) {
            let level = if partial.is_empty() {
                c.classify(&b[..i], Stream::Stdout)
            } else {
                partial.extend_from_slice(&b[..i]);
                let l = c.classify(&partial, Stream::Stdout);
                partial.clear();
                l
            };
            levels[level as usize] += 1;
            lines += 1;
            b = &b[i + 1..];
        }
        partial.extend_from_slice(b);
    });
    black_box(levels);
    lines
}

fn logs() -> Logs {
    let caps = Caps { stream: STREAM_CAP, global: GLOBAL_CAP, max_watchers: MAX_WATCHERS };
    let alerting = Alerting::new(&default_rules(), 256).expect("the default rules compile");
    let store = Store::new(caps, alerting, Some(Metrics::new()));
    Logs::new(store, ReadLimits { max_entries: 1000, max_bytes: 1 << 20, max_followers: 16, notify_interval: Duration::from_secs(1) })
}

/// The real path; `logs` is fresh for each run (its statistics are cumulative). Without
/// `logs`, the splitter's output is dropped (the "splitter.feed" row).
fn full(path: &Path, c: &Classifier, logs: Option<&Logs>) -> u64 {
    let mut buf = vec![0u8; READ];
    let mut s = Splitter::new(Stream::Stdout, MAX_LINE);
    let mut lines = 0u64;
    each_read(path, &mut buf, |b| {
        let mut out = Output::default();
        s.feed(b, c, &mut out);
        lines += out.lines.len() as u64;
        store(logs, out);
    });
    let mut out = Output::default();
    s.flush(c, &mut out);
    lines += out.lines.len() as u64;
    store(logs, out);
    lines
}

fn store(logs: Option<&Logs>, out: Output) {
    match logs {
        Some(logs) => logs.push(WATCHER, Stream::Stdout, out.lines, out.dropped, now_ms()),
        None => drop(black_box(out)),
    }
}

struct Row {
    name: &'static str,
    best: Duration,
    lines: u64,
}

fn best_of(runs: u64, name: &'static str, mut f: impl FnMut() -> (Duration, u64)) -> Row {
    let mut best = Duration::MAX;
    let mut lines = None;
    for _ in 0..runs {
        let (took, n) = f();
        best = best.min(took);
        match lines {
            None => lines = Some(n),
            Some(l) => assert_eq!(l, n, "{name}: runs disagree on the line count"),
        }
    }
    Row { name, best, lines: lines.unwrap_or(0) }
}

fn timed(f: impl FnOnce() -> u64) -> (Duration, u64) {
    let t = Instant::now();
    let n = f();
    (t.elapsed(), n)
}

fn main() -> ExitCode {
    let mib = env_num("CW_BENCH_MIB", 256).max(1);
    let runs = env_num("CW_BENCH_RUNS", 3).max(1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("stdout.log");

    let t = Instant::now();
    let generated = generate(&path, mib).expect("write the bench file");
    let size = std::fs::metadata(&path).expect("stat the bench file").len();
    eprintln!("generated {} ({:.0} MiB, {generated} lines) in {:.1?}", path.display(), size as f64 / (1 << 20) as f64, t.elapsed());
    // Into the page cache, and a warm-up of the read path.
    black_box(read_only(&path));

    let classifier = Classifier::new(&[], Level::Info, Level::Info).expect("default classification");
    let mut rows = Vec::new();
    rows.push(best_of(runs, "wc -l", || wc_l(&path)));
    // CW_BENCH_ONLY=name,name: only these variants (for a profiler); wc -l and full always run.
    let only = std::env::var("CW_BENCH_ONLY").ok();
    let want = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|w| w.trim() == name));
    if want("read only") {
        rows.push(best_of(runs, "read only", || timed(|| read_only(&path))));
    }
    if want("split only") {
        rows.push(best_of(runs, "split only", || timed(|| split_only(&path))));
    }
    if want("split+classify") {
        rows.push(best_of(runs, "split+classify", || timed(|| split_classify(&path, &classifier))));
    }
    if want("splitter.feed") {
        rows.push(best_of(runs, "splitter.feed", || timed(|| full(&path, &classifier, None))));
    }
    let mut summaries = Vec::new();
    rows.push(best_of(runs, "full", || {
        let logs = logs();
        let (took, n) = timed(|| full(&path, &classifier, Some(&logs)));
        let store = logs.lock();
        let summary = store.summary(WATCHER, now_ms()).expect("the bench watcher has output");
        summaries.push((
            summary.lines,
            summary.levels.clone(),
            summary.buffer.bytes,
            summary.buffer.entries,
            summary.buffer.evicted_lines,
            store.held(),
        ));
        drop(store);
        // Freeing the store is outside the timed region.
        drop(logs);
        (took, n)
    }));

    let wc = rows[0].lines;
    let mib_s = |r: &Row| size as f64 / (1 << 20) as f64 / r.best.as_secs_f64();
    let wc_mib_s = mib_s(&rows[0]);
    println!();
    println!(
        "ingest: {:.0} MiB, {} lines of {LINE} bytes, {READ} B reads, best of {runs}, single thread",
        size as f64 / (1 << 20) as f64,
        wc
    );
    println!("{:<16} {:>10} {:>10} {:>13} {:>9} {:>9}", "path", "best", "MiB/s", "lines/s", "ns/line", "vs wc -l");
    for r in &rows {
        let secs = r.best.as_secs_f64();
        println!(
            "{:<16} {:>8.1}ms {:>10.0} {:>13.0} {:>9.1} {:>9.3}",
            r.name,
            secs * 1e3,
            mib_s(r),
            wc as f64 / secs,
            secs * 1e9 / wc as f64,
            mib_s(r) / wc_mib_s,
        );
    }
    let full = rows.last().expect("the full row");
    let verdict = if mib_s(full) >= TARGET_MIB_S { "PASS" } else { "BELOW" };
    println!(
        "full ingest: {:.0} MiB/s, {:.2} M lines/s, {:.3}x wc -l ({:.0} MiB/s); target {TARGET_MIB_S:.0} MiB/s: {verdict}",
        mib_s(full),
        wc as f64 / full.best.as_secs_f64() / 1e6,
        mib_s(full) / wc_mib_s,
        wc_mib_s
    );

    // Correctness, cheaply: every count must agree.
    let mut bad: Vec<String> = Vec::new();
    let check = |what: &str, n: u64, bad: &mut Vec<String>| {
        if n != wc {
            bad.push(format!("{what} = {n}, wc -l = {wc}"));
        }
    };
    check("generated lines", generated, &mut bad);
    // "read only" counts bytes / 100, which is no check.
    for r in rows.iter().filter(|r| r.name != "wc -l" && r.name != "read only") {
        check(r.name, r.lines, &mut bad);
    }
    for (i, (lines, levels, bytes, entries, evicted, held)) in summaries.iter().enumerate() {
        check(&format!("store summary lines (run {})", i + 1), *lines, &mut bad);
        if *held as u64 != *bytes || *held > STREAM_CAP {
            bad.push(format!("run {}: store holds {held} B, summary says {bytes} B, stream cap {STREAM_CAP} B", i + 1));
        }
        if entries + evicted != wc {
            bad.push(format!("run {}: {entries} held + {evicted} evicted != {wc}", i + 1));
        }
        if i == 0 {
            let levels: Vec<String> = levels.iter().filter(|(_, n)| **n > 0).map(|(l, n)| format!("{l}={n}")).collect();
            println!("store: {} lines ({}), {entries} held in {bytes} B, {evicted} evicted", lines, levels.join(" "));
        }
    }
    if bad.is_empty() {
        println!("counts agree: wc -l, every variant and the store summary");
        ExitCode::SUCCESS
    } else {
        for b in &bad {
            eprintln!("MISMATCH: {b}");
        }
        ExitCode::FAILURE
    }
}
