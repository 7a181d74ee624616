//! The child-stderr log: one thread (`child-stderr`) and one `mio::Poll`
//! that log every child's stderr, line by line, tagged with its session.
//!
//! A drain thread per session would cost a stack per session for output
//! that is idle nearly always. A child's stderr arrives on a socket pair
//! (which may carry its stdin the other way; see `child::process`); the
//! thread holds a share of every socket it watches and deregisters it
//! before letting go, so a session that ends can never leave a
//! registration behind that matches a recycled fd number. Requests arrive on a channel and a `Waker`; dropping
//! the [`StderrLog`] stops and joins the thread.
//!
//! One thread serves every child, so no child may hold it. Each turn of
//! the loop reads at most 16 KiB (`TURN_BYTES`) from each stream; mio is
//! edge-triggered, so a stream that still had data when its budget ran out
//! stays on a ready list and is served again next turn, polling with a
//! zero timeout meanwhile: round-robin, and a quiet child's line waits one
//! turn however much another child writes. Every stream is always read to
//! the end — a child blocked on a full stderr stream may stop answering its
//! client — but what one child may put in the log is rate-limited (100
//! lines/s in bursts of 200: `LINES_PER_SEC`, `BURST_LINES`); the lines
//! over the limit are counted, and the count is logged once a second and
//! when the stream ends. With no stream ready and no count due, the poll has no timeout: an
//! idle proxy is never woken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{error, info};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::session::table::SessionId;

const WAKER: Token = Token(0);

/// The log target of every line this module writes for a child.
const TARGET: &str = "forkline::child";

/// Longest stderr line logged whole; the rest of a longer one is cut.
const STDERR_LINE_BYTES: usize = 8 * 1024;

/// Most bytes read from one child in one turn of the loop: a few reads a
/// turn keep up with any child, and a turn over a thousand flooding
/// children still takes milliseconds.
const TURN_BYTES: usize = 16 * 1024;

/// Most bytes read from a child's stderr when its session releases it. The
/// child is gone, so this is what it left queued, which its socket's send
/// buffer bounds (about 200 KiB by default, `net.core.wmem_default`); only
/// an escaped grandchild still writing could have more, and it must not
/// hold the thread.
const FINAL_BYTES: usize = 1024 * 1024;

/// Lines per second one child may log, sustained: more than any server
/// logs for a human to read, few enough that a flood (`yes` writes
/// millions a second) cannot fill the disk or the log pipeline.
const LINES_PER_SEC: u32 = 100;

/// Lines one child may log at once after a quiet spell: a stack trace or a
/// start-up banner goes through whole.
const BURST_LINES: u32 = 200;

/// How often a child's dropped lines are counted in the log while it goes
/// on dropping.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A handle to the `child-stderr` thread. Dropping it stops and joins the
/// thread; streams still watched then have their last lines logged.
pub struct StderrLog {
    requests: Sender<Request>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

enum Request {
    /// Log every line of this child's stderr until EOF or `Release`.
    Watch {
        session: SessionId,
        stream: Arc<UnixStream>,
    },
    /// Log what is left of the session's stderr, then close it.
    Release { session: SessionId },
}

impl StderrLog {
    /// Starts the `child-stderr` thread.
    pub fn start() -> io::Result<StderrLog> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (requests, inbox) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("child-stderr".into())
            .spawn(move || {
                if let Err(e) = LogLoop::new(poll, inbox).run() {
                    error!("the child-stderr thread stopped: {e}");
                }
            })?;
        Ok(StderrLog {
            requests,
            waker,
            thread: Some(thread),
        })
    }

    fn send(&self, request: Request) {
        // Both fail only once the thread is gone, i.e. during teardown.
        if self.requests.send(request).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Logs what the child writes to `stream` (non-blocking) line by line,
    /// tagged with `session`, until EOF or [`StderrLog::release`]. Does not
    /// block: the thread keeps its share of the stream until then.
    pub fn watch(&self, session: SessionId, stream: Arc<UnixStream>) {
        self.send(Request::Watch { session, stream });
    }

    /// Logs what is left in the session's stderr (at most 1 MiB,
    /// `FINAL_BYTES`) and closes it: the child is gone, but an escaped
    /// grandchild could hold the stream open. Does not block; a session with no stream watched
    /// (it already ended) is ignored.
    pub fn release(&self, session: SessionId) {
        self.send(Request::Release { session });
    }
}

impl Drop for StderrLog {
    fn drop(&mut self) {
        // Replacing the sender disconnects the thread's inbox.
        let (dead, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.requests, dead));
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            crate::sync::join(thread);
        }
    }
}

/// One child's stderr as the thread holds it.
struct Watched {
    session: SessionId,
    stream: Arc<UnixStream>,
    lines: Lines,
    /// On the ready list: it may have data that was not read yet.
    ready: bool,
}

/// How a stream's turn ended.
enum Turn {
    /// Read until `WouldBlock`: wait for its next event.
    Drained,
    /// The budget ran out first: serve it again next turn.
    More,
    /// EOF or a read error: log the rest and close it.
    Ended,
}

struct LogLoop {
    poll: Poll,
    inbox: Receiver<Request>,
    streams: HashMap<Token, Watched>,
    by_session: HashMap<SessionId, Token>,
    /// Streams to serve this turn, each at most once (`Watched::ready`).
    /// Tokens are never reused, so one whose stream is gone is just skipped.
    ready: VecDeque<Token>,
    /// Streams that may have a dropped-lines count due.
    reporting: HashSet<Token>,
    buf: Box<[u8]>,
    next: usize,
}

impl LogLoop {
    fn new(poll: Poll, inbox: Receiver<Request>) -> LogLoop {
        LogLoop {
            poll,
            inbox,
            streams: HashMap::new(),
            by_session: HashMap::new(),
            ready: VecDeque::new(),
            reporting: HashSet::new(),
            buf: vec![0; TURN_BYTES].into_boxed_slice(),
            next: 0,
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.mark_ready(event.token());
                }
            }
            loop {
                match self.inbox.try_recv() {
                    Ok(request) => self.handle(request),
                    Err(e) if e.is_disconnected() => {
                        self.close_all();
                        return Ok(());
                    }
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            self.serve_ready(now);
            self.report_due(now);
        }
    }

    /// Zero while a stream is ready, until the next dropped-lines count is
    /// due if one is pending, else none: nothing to do until an event.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        self.reporting
            .iter()
            .filter_map(|token| self.streams.get(token)?.lines.report_at())
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    fn mark_ready(&mut self, token: Token) {
        if let Some(watched) = self.streams.get_mut(&token) {
            if !watched.ready {
                watched.ready = true;
                self.ready.push_back(token);
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Watch { session, stream } => {
                self.next += 1;
                let token = Token(self.next);
                let fd = stream.as_raw_fd();
                let registered =
                    self.poll
                        .registry()
                        .register(&mut SourceFd(&fd), token, Interest::READABLE);
                match registered {
                    Ok(()) => {
                        let watched = Watched {
                            session,
                            stream,
                            lines: Lines::new(Instant::now()),
                            ready: false,
                        };
                        self.by_session.insert(session, token);
                        self.streams.insert(token, watched);
                        // Whatever the child wrote before this is read on
                        // the first turn, without relying on an event.
                        self.mark_ready(token);
                    }
                    Err(e) => error!("[{session}] cannot watch the child's stderr: {e}"),
                }
            }
            Request::Release { session } => {
                if let Some(token) = self.by_session.get(&session).copied() {
                    let now = Instant::now();
                    if let Some(watched) = self.streams.get_mut(&token) {
                        read_some(watched, &mut self.buf, FINAL_BYTES, now);
                    }
                    self.close(token, now);
                }
            }
        }
    }

    /// Gives every ready stream one turn of at most [`TURN_BYTES`].
    fn serve_ready(&mut self, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let Some(watched) = self.streams.get_mut(&token) else {
                continue;
            };
            let turn = read_some(watched, &mut self.buf, TURN_BYTES, now);
            if watched.lines.report_at().is_some() {
                self.reporting.insert(token);
            }
            match turn {
                Turn::More => self.ready.push_back(token),
                Turn::Drained => watched.ready = false,
                Turn::Ended => self.close(token, now),
            }
        }
    }

    /// Logs the dropped-lines counts that are due.
    fn report_due(&mut self, now: Instant) {
        let streams = &mut self.streams;
        self.reporting.retain(|token| {
            let Some(watched) = streams.get_mut(token) else {
                return false;
            };
            let session = watched.session;
            watched
                .lines
                .report_due(now, &mut |entry| log(session, entry));
            watched.lines.report_at().is_some()
        });
    }

    /// Logs the partial line and the dropped-lines count, and closes the
    /// stream.
    fn close(&mut self, token: Token, now: Instant) {
        let Some(mut watched) = self.streams.remove(&token) else {
            return;
        };
        self.by_session.remove(&watched.session);
        let session = watched.session;
        watched.lines.finish(now, &mut |entry| log(session, entry));
        let fd = watched.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    /// At teardown: whatever the streams still hold in their line buffers.
    fn close_all(&mut self) {
        let now = Instant::now();
        let tokens: Vec<Token> = self.streams.keys().copied().collect();
        for token in tokens {
            self.close(token, now);
        }
    }
}

/// Reads at most `budget` bytes from the stream, logging its lines.
fn read_some(watched: &mut Watched, buf: &mut [u8], budget: usize, now: Instant) -> Turn {
    let session = watched.session;
    let mut left = budget;
    while left > 0 {
        let want = left.min(buf.len());
        match (&*watched.stream).read(&mut buf[..want]) {
            Ok(0) => return Turn::Ended,
            Ok(n) => {
                left -= n;
                watched
                    .lines
                    .feed(&buf[..n], now, &mut |entry| log(session, entry));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Drained,
            Err(_) => return Turn::Ended,
        }
    }
    Turn::More
}

fn log(session: SessionId, entry: Entry<'_>) {
    match entry {
        Entry::Line { text, cut: 0 } => {
            info!(target: TARGET, "[{session}] child stderr: {}", String::from_utf8_lossy(text));
        }
        Entry::Line { text, cut } => {
            info!(target: TARGET, "[{session}] child stderr: {}… ({cut} more bytes)", String::from_utf8_lossy(text));
        }
        Entry::Dropped(lines) => {
            info!(target: TARGET, "[{session}] child stderr: {lines} lines dropped (over {LINES_PER_SEC} lines/s)");
        }
    }
}

/// What a child's stderr turns into in the log.
#[derive(Debug, PartialEq, Eq)]
enum Entry<'a> {
    /// One line, without its `\n` or `\r\n`, and how many bytes were cut
    /// off its end (beyond [`STDERR_LINE_BYTES`]).
    Line { text: &'a [u8], cut: usize },
    /// This many lines went over the rate limit since the last count.
    Dropped(u64),
}

/// One child's stderr cut into log entries: splits the bytes into lines,
/// cuts long ones, skips empty ones and applies the rate limit. Pure: the
/// time comes in as an argument and the entries go out to a callback.
///
/// Memory is bounded whatever the input: one line of at most
/// [`STDERR_LINE_BYTES`].
struct Lines {
    line: Vec<u8>,
    /// Bytes of the current line beyond what `line` keeps.
    cut: usize,
    bucket: Bucket,
    /// Lines over the limit since the last count was logged.
    dropped: u64,
    /// When `dropped` is to be logged; `Some` exactly when it is not zero.
    report_at: Option<Instant>,
}

impl Lines {
    fn new(now: Instant) -> Lines {
        Lines {
            line: Vec::new(),
            cut: 0,
            bucket: Bucket::full(now),
            dropped: 0,
            report_at: None,
        }
    }

    /// Takes bytes read from the stream at `now`; every complete line goes to
    /// `out` or, over the limit, to the count.
    fn feed(&mut self, mut bytes: &[u8], now: Instant, out: &mut impl FnMut(Entry<'_>)) {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            self.keep(&bytes[..at]);
            self.end_line(now, out);
            bytes = &bytes[at + 1..];
        }
        self.keep(bytes);
    }

    /// When the dropped-lines count is due, if lines were dropped.
    fn report_at(&self) -> Option<Instant> {
        self.report_at
    }

    /// Logs the dropped-lines count if it is due.
    fn report_due(&mut self, now: Instant, out: &mut impl FnMut(Entry<'_>)) {
        debug_assert_eq!(self.report_at.is_some(), self.dropped > 0);
        if self.report_at.is_some_and(|at| at <= now) {
            self.report(out);
        }
    }

    /// At EOF or release: the partial line, then the dropped-lines count,
    /// whenever it was due.
    fn finish(&mut self, now: Instant, out: &mut impl FnMut(Entry<'_>)) {
        if !self.line.is_empty() || self.cut > 0 {
            self.end_line(now, out);
        }
        self.report(out);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = STDERR_LINE_BYTES.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.cut += bytes.len().saturating_sub(room);
    }

    fn end_line(&mut self, now: Instant, out: &mut impl FnMut(Entry<'_>)) {
        if self.cut == 0 && self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        // Empty lines were never logged, so they cost nothing.
        if !self.line.is_empty() || self.cut > 0 {
            if self.bucket.try_take(now) {
                out(Entry::Line {
                    text: &self.line,
                    cut: self.cut,
                });
            } else {
                self.dropped += 1;
                self.report_at.get_or_insert(now + REPORT_EVERY);
            }
        }
        self.line.clear();
        self.cut = 0;
    }

    fn report(&mut self, out: &mut impl FnMut(Entry<'_>)) {
        if self.dropped > 0 {
            out(Entry::Dropped(self.dropped));
        }
        self.dropped = 0;
        self.report_at = None;
    }
}

/// A token bucket: [`BURST_LINES`] tokens, one earned every
/// 1/[`LINES_PER_SEC`] of a second.
struct Bucket {
    tokens: u32,
    /// When the last token counted in `tokens` was earned (or when the
    /// bucket was last full): earning resumes from here.
    since: Instant,
}

impl Bucket {
    const EVERY: Duration = Duration::from_nanos(1_000_000_000 / LINES_PER_SEC as u64);

    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST_LINES,
            since: now,
        }
    }

    /// Takes a token if there is one at `now`.
    fn try_take(&mut self, now: Instant) -> bool {
        self.earn(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn earn(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        let earned = elapsed.as_nanos() / Self::EVERY.as_nanos();
        if earned == 0 {
            return;
        }
        let room = u128::from(BURST_LINES - self.tokens);
        if earned >= room {
            self.tokens = BURST_LINES;
            self.since = now;
        } else {
            // `earned` < BURST_LINES here, so these casts are exact; the
            // fraction of a token already under way is kept.
            self.tokens += earned as u32;
            self.since += Self::EVERY * earned as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` at `now` and returns the entries as log text.
    fn feed(lines: &mut Lines, chunks: &[&[u8]], now: Instant) -> Vec<String> {
        let mut got = Vec::new();
        for chunk in chunks {
            lines.feed(chunk, now, &mut |e| got.push(show(e)));
        }
        got
    }

    fn finish(lines: &mut Lines, now: Instant) -> Vec<String> {
        let mut got = Vec::new();
        lines.finish(now, &mut |e| got.push(show(e)));
        got
    }

    fn report_due(lines: &mut Lines, now: Instant) -> Vec<String> {
        let mut got = Vec::new();
        lines.report_due(now, &mut |e| got.push(show(e)));
        got
    }

    fn show(entry: Entry<'_>) -> String {
        match entry {
            Entry::Line { text, cut: 0 } => String::from_utf8_lossy(text).into_owned(),
            Entry::Line { text, cut } => {
                format!("{}… ({cut} more bytes)", String::from_utf8_lossy(text))
            }
            Entry::Dropped(n) => format!("{n} dropped"),
        }
    }

    fn numbered(n: usize) -> Vec<u8> {
        (1..=n)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn splits_lines_across_reads_and_strips_crlf() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let got = feed(&mut lines, &[b"one\ntw", b"o\r", b"\nthree\r\n\nfo"], t);
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(finish(&mut lines, t), ["fo"]);
        assert_eq!(finish(&mut lines, t), Vec::<String>::new());
    }

    #[test]
    fn skips_empty_lines_without_spending_the_budget() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let blank = b"\n\r\n".repeat(1000);
        assert!(feed(&mut lines, &[&blank], t).is_empty());
        let burst = numbered(BURST_LINES as usize);
        assert_eq!(feed(&mut lines, &[&burst], t).len(), BURST_LINES as usize);
        assert!(lines.report_at().is_none());
    }

    #[test]
    fn cuts_long_lines_at_the_limit() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let exact = vec![b'a'; STDERR_LINE_BYTES];
        let over = vec![b'b'; STDERR_LINE_BYTES + 5];
        let got = feed(
            &mut lines,
            &[&exact, b"\n", &over[..100], &over[100..], b"\n"],
            t,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], "a".repeat(STDERR_LINE_BYTES));
        assert_eq!(
            got[1],
            format!("{}… (5 more bytes)", "b".repeat(STDERR_LINE_BYTES))
        );
        // A cut partial line is flushed with its count too.
        feed(&mut lines, &[&over], t);
        assert_eq!(
            finish(&mut lines, t),
            [format!("{}… (5 more bytes)", "b".repeat(STDERR_LINE_BYTES))]
        );
    }

    #[test]
    fn invalid_utf8_is_logged_lossily() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        assert_eq!(
            feed(&mut lines, &[b"caf\xc3\xa9 \xff!\n"], t),
            ["café \u{fffd}!"]
        );
    }

    #[test]
    fn a_burst_goes_through_and_the_rest_is_counted_a_second_later() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let got = feed(&mut lines, &[&numbered(1000)], t);
        let expected: Vec<String> = (1..=BURST_LINES).map(|i| i.to_string()).collect();
        assert_eq!(got, expected);
        assert_eq!(lines.report_at(), Some(t + REPORT_EVERY));
        assert!(report_due(&mut lines, t + REPORT_EVERY - Duration::from_millis(1)).is_empty());
        assert_eq!(report_due(&mut lines, t + REPORT_EVERY), ["800 dropped"]);
        assert_eq!(lines.report_at(), None);
        assert!(report_due(&mut lines, t + 10 * REPORT_EVERY).is_empty());
    }

    #[test]
    fn the_limit_refills_at_the_rate_and_keeps_fractions() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        feed(&mut lines, &[&numbered(BURST_LINES as usize + 1)], t);
        // 1/100 s earns one line; 15 ms earns one and half of the next,
        // which the next 5 ms completes.
        assert_eq!(
            feed(&mut lines, &[b"a\nb\n"], t + Duration::from_millis(15)),
            ["a"]
        );
        assert_eq!(
            feed(&mut lines, &[b"c\nd\n"], t + Duration::from_millis(20)),
            ["c"]
        );
        // A sustained flood gets LINES_PER_SEC through each second.
        let mut logged = 0;
        for ms in 21..=1020 {
            logged += feed(&mut lines, &[b"x\nx\nx\n"], t + Duration::from_millis(ms)).len();
        }
        assert_eq!(logged, LINES_PER_SEC as usize);
    }

    #[test]
    fn a_quiet_spell_refills_the_burst_but_no_more() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        feed(&mut lines, &[&numbered(BURST_LINES as usize)], t);
        let later = t + Duration::from_secs(3600);
        let got = feed(&mut lines, &[&numbered(1000)], later);
        assert_eq!(got.len(), BURST_LINES as usize);
    }

    #[test]
    fn the_count_is_reported_about_once_a_second_while_dropping() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let mut reports = Vec::new();
        for ms in (0..3000).step_by(10) {
            let now = t + Duration::from_millis(ms);
            feed(&mut lines, &[&numbered(10)], now);
            reports.extend(report_due(&mut lines, now));
        }
        // Drops start once the burst is spent (at about 220 ms: 10 lines
        // every 10 ms against one earned) and the first count is due a
        // second later; the third second's count is still pending.
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(lines.report_at().is_some());
        assert_eq!(finish(&mut lines, t + Duration::from_secs(3)).len(), 1);
    }

    #[test]
    fn finish_flushes_the_partial_line_then_the_count() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let mut input = numbered(BURST_LINES as usize);
        input.extend_from_slice(b"over\npartial");
        let got = feed(&mut lines, &[&input], t);
        assert_eq!(got.len(), BURST_LINES as usize);
        // The partial line is a line like the others: over the limit too.
        assert_eq!(finish(&mut lines, t), ["2 dropped"]);
        let mut lines = Lines::new(t);
        feed(&mut lines, &[b"partial"], t);
        assert_eq!(finish(&mut lines, t), ["partial"]);
        assert_eq!(lines.report_at(), None);
    }

    #[test]
    fn memory_stays_bounded_by_one_line() {
        let t = Instant::now();
        let mut lines = Lines::new(t);
        let endless = vec![b'z'; 64 * 1024];
        for _ in 0..64 {
            feed(&mut lines, &[&endless], t);
        }
        assert_eq!(lines.line.len(), STDERR_LINE_BYTES);
        assert_eq!(lines.cut, 64 * 64 * 1024 - STDERR_LINE_BYTES);
    }
}
