//! From bytes to entries, per stream: split on newlines (a line may span reads, chunks and
//! rotated files), cut lines longer than the cap, decode UTF-8 lossily (a bad byte becomes
//! U+FFFD, the line is kept), classify, and group a Python traceback with its header line.

use super::Stream;
use super::classify::{Classifier, Level};

/// A finished entry, before it is stamped and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    pub level: Level,
    /// Bytes were cut from it (see `dropped`).
    pub truncated: bool,
}

/// What one stream's bytes have produced so far.
#[derive(Debug, Default)]
pub struct Output {
    pub lines: Vec<Line>,
    /// Bytes read but not kept (cut from over-long lines and tracebacks).
    pub dropped: u64,
}

const TB_HEADER: &[u8] = b"Traceback (most recent call last):";
const CHAIN: [&[u8]; 2] = [b"During handling of the above exception", b"The above exception was the direct cause"];

#[derive(Debug, PartialEq)]
enum Phase {
    /// Header seen; indented frame lines follow.
    Frames,
    /// The exception line was seen; a blank line and a chain marker may continue it.
    AfterException,
    /// A chain marker was seen; blank lines until the next header.
    Chain,
}

struct Group {
    text: Vec<u8>,
    /// File bytes consumed into the group (for checkpoints).
    raw: usize,
    phase: Phase,
    /// Blank lines after the exception line, held until we know whether the chain continues.
    blanks: usize,
    omitted: usize,
}

/// Splits and groups one stream. `partial` holds an unfinished line (bounded by `max_line`).
pub struct Splitter {
    stream: Stream,
    max_line: usize,
    partial: Vec<u8>,
    /// The current line overflowed: bytes are skipped until its newline.
    skipping: bool,
    group: Option<Group>,
}

impl Splitter {
    pub fn new(stream: Stream, max_line: usize) -> Splitter {
        Splitter { stream, max_line, partial: Vec::new(), skipping: false, group: None }
    }

    /// The unfinished line (for checkpoints).
    pub fn partial(&self) -> &[u8] {
        &self.partial
    }

    pub fn restore_partial(&mut self, bytes: Vec<u8>) {
        self.partial = bytes;
        self.partial.truncate(self.max_line);
    }

    /// Whether something is held back (an unfinished line or an open traceback).
    pub fn holding(&self) -> bool {
        !self.partial.is_empty() || self.group.is_some()
    }

    /// File bytes read but not yet stored: a resumed reader starts this far back.
    pub fn held_raw(&self) -> usize {
        self.partial.len() + self.group.as_ref().map_or(0, |g| g.raw)
    }

    /// Feeds bytes as read from the file.
    pub fn feed(&mut self, mut bytes: &[u8], c: &Classifier, out: &mut Output) {
        while !bytes.is_empty() {
            let (chunk, rest, complete) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                out.dropped += chunk.len() as u64;
                if complete {
                    self.skipping = false;
                }
                continue;
            }
            let room = self.max_line - self.partial.len();
            let too_long = chunk.len() > room;
            let take = chunk.len().min(room);
            if too_long {
                out.dropped += (chunk.len() - take) as u64;
                self.skipping = !complete;
            }
            if complete || too_long {
                let raw = self.partial.len() + chunk.len() + usize::from(complete);
                if self.partial.is_empty() {
                    self.line(&chunk[..take], raw, too_long, c, out);
                } else {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&chunk[..take]);
                    self.line(&line, raw, too_long, c, out);
                }
            } else {
                self.partial.extend_from_slice(chunk);
            }
        }
    }

    /// Emits what is held back: the unfinished line (as a line of its own) and an open
    /// traceback. Called when the stream has been idle for a while, and at shutdown.
    pub fn flush(&mut self, c: &Classifier, out: &mut Output) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, line.len(), false, c, out);
        }
        self.close_group(out);
    }

    fn line(&mut self, line: &[u8], raw: usize, truncated: bool, c: &Classifier, out: &mut Output) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.group.is_some() && self.continue_group(line, out) {
            if let Some(g) = self.group.as_mut() {
                g.raw += raw;
            }
            return;
        }
        if line.starts_with(TB_HEADER) {
            self.group = Some(Group { text: line.to_vec(), raw, phase: Phase::Frames, blanks: 0, omitted: 0 });
            return;
        }
        out.lines.push(Line { text: decode(line), level: c.classify(line, self.stream), truncated });
    }

    /// Adds `line` to the open traceback, or closes it and returns false.
    fn continue_group(&mut self, line: &[u8], out: &mut Output) -> bool {
        let max = self.max_line;
        let g = self.group.as_mut().expect("checked by the caller");
        let indented = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        let push = |g: &mut Group, l: &[u8]| {
            if g.text.len() + 1 + l.len() > max {
                g.omitted += l.len() + 1;
            } else {
                g.text.push(b'\n');
                g.text.extend_from_slice(l);
            }
        };
        match g.phase {
            Phase::Frames if indented || line.starts_with(TB_HEADER) => push(g, line),
            Phase::Frames => {
                // The exception line ends the frames. Keep it even when frames were cut.
                if g.omitted > 0 {
                    let marker = format!("  ... ({} bytes of frames omitted)", g.omitted);
                    while g.text.len() + marker.len() + line.len() + 2 > max && g.text.len() > TB_HEADER.len() {
                        let cut = g.text.iter().rposition(|b| *b == b'\n').unwrap_or(TB_HEADER.len()).max(TB_HEADER.len());
                        g.omitted += g.text.len() - cut;
                        g.text.truncate(cut);
                    }
                    let marker = format!("  ... ({} bytes of frames omitted)", g.omitted);
                    g.text.push(b'\n');
                    g.text.extend_from_slice(marker.as_bytes());
                }
                let room = max.saturating_sub(g.text.len() + 1);
                g.text.push(b'\n');
                g.text.extend_from_slice(&line[..line.len().min(room)]);
                g.phase = Phase::AfterException;
            }
            Phase::AfterException | Phase::Chain if line.is_empty() => g.blanks += 1,
            Phase::AfterException if CHAIN.iter().any(|m| line.starts_with(m)) => {
                for _ in 0..std::mem::take(&mut g.blanks) {
                    push(g, b"");
                }
                push(g, line);
                g.phase = Phase::Chain;
            }
            Phase::Chain if line.starts_with(TB_HEADER) => {
                for _ in 0..std::mem::take(&mut g.blanks) {
                    push(g, b"");
                }
                push(g, line);
                g.phase = Phase::Frames;
            }
            Phase::AfterException | Phase::Chain => {
                let blanks = g.blanks;
                self.close_group(out);
                for _ in 0..blanks {
                    out.lines.push(Line { text: String::new(), level: Level::Info, truncated: false });
                }
                return false;
            }
        }
        true
    }

    fn close_group(&mut self, out: &mut Output) {
        if let Some(g) = self.group.take() {
            out.dropped += g.omitted as u64;
            out.lines.push(Line { text: decode(&g.text), level: Level::Error, truncated: g.omitted > 0 });
        }
    }
}

/// UTF-8, with each invalid sequence replaced by U+FFFD.
fn decode(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize) -> Output {
        let c = Classifier::new(&[], Level::Info, Level::Info).unwrap();
        let mut s = Splitter::new(Stream::Stderr, max);
        let mut out = Output::default();
        for ch in chunks {
            s.feed(ch, &c, &mut out);
        }
        s.flush(&c, &mut out);
        out
    }

    fn texts(o: &Output) -> Vec<&str> {
        o.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_span_reads_and_partial_lines_wait() {
        let c = Classifier::new(&[], Level::Info, Level::Info).unwrap();
        let mut s = Splitter::new(Stream::Stdout, 100);
        let mut out = Output::default();
        s.feed(b"one\ntw", &c, &mut out);
        assert_eq!(texts(&out), ["one"]);
        assert_eq!(s.partial(), b"tw");
        s.feed(b"o\r\nthr", &c, &mut out);
        s.feed(b"ee\n", &c, &mut out);
        assert_eq!(texts(&out), ["one", "two", "three"]);
        assert!(!s.holding());
    }

    #[test]
    fn long_lines_are_cut_and_counted() {
        let long = vec![b'x'; 250];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        // Fed in 64-byte pieces, as a file is read while being written.
        let pieces: Vec<&[u8]> = input.chunks(64).collect();
        let out = run(&pieces, 100);
        assert_eq!(out.lines.len(), 2);
        assert_eq!(out.lines[0].text.len(), 100);
        assert!(out.lines[0].truncated);
        assert_eq!(out.lines[1].text, "next");
        assert_eq!(out.dropped, 150);
    }

    #[test]
    fn invalid_utf8_keeps_the_line() {
        let out = run(&[b"caf\xc3\xa9 \xff\xfe ok\n"], 100);
        assert_eq!(texts(&out), ["café \u{fffd}\u{fffd} ok"]);
    }

    #[test]
    fn a_traceback_is_one_error_entry_with_its_header() {
        let tb = b"INFO starting\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n    f()\nValueError: boom\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3\nKeyError: 'x'\nINFO after\n";
        let out = run(&[tb], 4096);
        assert_eq!(out.lines.len(), 3, "{:?}", texts(&out));
        assert_eq!(out.lines[1].level, Level::Error);
        assert!(out.lines[1].text.starts_with("Traceback (most recent call last):\n  File"));
        assert!(out.lines[1].text.ends_with("KeyError: 'x'"));
        assert!(out.lines[1].text.contains("ValueError: boom\n\nDuring handling"));
        assert_eq!(out.lines[2].text, "INFO after");
    }

    #[test]
    fn an_overlong_traceback_keeps_header_and_exception() {
        let mut tb = b"Traceback (most recent call last):\n".to_vec();
        for i in 0..100 {
            tb.extend_from_slice(format!("  File \"m{i}.py\", line {i}, in f\n").as_bytes());
        }
        tb.extend_from_slice(b"RuntimeError: deep\nnext\n");
        let out = run(&[&tb], 400);
        let t = &out.lines[0].text;
        assert!(t.len() <= 400, "{}", t.len());
        assert!(t.starts_with("Traceback (most recent call last):"));
        assert!(t.ends_with("RuntimeError: deep"));
        assert!(t.contains("bytes of frames omitted"));
        assert!(out.lines[0].truncated && out.dropped > 0);
        assert_eq!(out.lines[1].text, "next");
    }
}
