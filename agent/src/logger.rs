//! A tiny console logger for PID 1.
//!
//! The guest's console is a serial port: under nested virtualisation every
//! character costs about a millisecond, so the agent prints little. The policy:
//! `error` when a requested action failed, `warn` for something abnormal but
//! survivable, `info` for rare state changes, `debug` for everything else. The
//! default is `warn`, so that a healthy boot prints only the readiness line.
//!
//! Each message is formatted first and written with one `write(2)` to stderr
//! (the console), so that lines from different sources do not interleave.
//!
//! Records are also kept for the host (the StreamLogs RPC): every record at
//! `info` or above, and `debug` ones when the console level is `debug`, goes
//! into a ring of the last [`RING_LEN`] records and to a broadcast channel.
//! Neither ever blocks the logger: a reader that falls behind loses records
//! (it sees a gap in the sequence numbers).

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// How much the agent prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    /// The level used when none is given.
    pub const DEFAULT: Level = Level::Warn;

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(Level::Error),
            "warn" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(()),
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::DEFAULT as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Records kept for readers that ask for the backlog.
pub const RING_LEN: usize = 256;

/// One log record, as kept for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub level: Level,
    pub target: &'static str,
    /// At most [`husk_proto::MAX_LOG_MESSAGE`] bytes.
    pub message: String,
    /// Nanoseconds since the Unix epoch (guest clock).
    pub unix_nanos: i64,
    /// Counts up from 0 over the agent's life.
    pub seq: u64,
}

struct Ring {
    next_seq: u64,
    records: VecDeque<Record>,
}

struct Store {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Record>,
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| Store {
        ring: Mutex::new(Ring {
            next_seq: 0,
            records: VecDeque::with_capacity(RING_LEN),
        }),
        live: broadcast::channel(RING_LEN).0,
    })
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn keep(level: Level, target: &'static str, message: String) {
    let unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    let store = store();
    // A poisoned ring only means a panic elsewhere mid-push; keep going.
    let mut ring = store.ring.lock().unwrap_or_else(|e| e.into_inner());
    let record = Record {
        level,
        target,
        message: cut(message, husk_proto::MAX_LOG_MESSAGE),
        unix_nanos,
        seq: ring.next_seq,
    };
    ring.next_seq += 1;
    if ring.records.len() == RING_LEN {
        ring.records.pop_front();
    }
    ring.records.push_back(record.clone());
    // No receiver is fine.
    let _ = store.live.send(record);
}

/// The records still in the ring (if `backlog`), and a receiver of every
/// record after them: no gap and no duplicate between the two.
pub fn subscribe(backlog: bool) -> (Vec<Record>, broadcast::Receiver<Record>) {
    let store = store();
    let ring = store.ring.lock().unwrap_or_else(|e| e.into_inner());
    let live = store.live.subscribe();
    let past = if backlog {
        ring.records.iter().cloned().collect()
    } else {
        Vec::new()
    };
    (past, live)
}

/// Logs one record: to stderr if `level` is enabled, and to the ring if it is
/// kept (see the module's doc). Use the macros.
pub fn log(level: Level, target: &'static str, args: fmt::Arguments<'_>) {
    let console = enabled(level);
    let kept = level <= Level::Info || console;
    if !console && !kept {
        return;
    }
    let message = args.to_string();
    if console {
        let line = format!("husk-agent {level}: {message}\n");
        // Nothing sensible can be done if the console itself fails.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    if kept {
        keep(level, target, message);
    }
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::logger::log($crate::logger::Level::Error, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::logger::log($crate::logger::Level::Warn, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::logger::log($crate::logger::Level::Info, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::logger::log($crate::logger::Level::Debug, module_path!(), format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!("debug".parse(), Ok(Level::Debug));
        assert_eq!("error".parse(), Ok(Level::Error));
        assert!("verbose".parse::<Level>().is_err());
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
    }

    #[test]
    fn records_reach_the_ring_and_subscribers_without_gaps() {
        let (_, mut live) = subscribe(false);
        log(Level::Info, "t", format_args!("first {}", 1));
        log(
            Level::Info,
            "t",
            format_args!("{}", "é".repeat(husk_proto::MAX_LOG_MESSAGE)),
        );
        let (past, _) = subscribe(true);
        // Other tests may log at the same time: find ours.
        let mut mine = Vec::new();
        while let Ok(r) = live.try_recv() {
            if r.target == "t" {
                mine.push(r);
            }
        }
        let [first, second] = &mine[..] else {
            panic!("expected 2 records, got {mine:?}");
        };
        assert_eq!(first.message, "first 1");
        assert!(second.seq > first.seq);
        assert!(second.message.len() <= husk_proto::MAX_LOG_MESSAGE);
        assert!(second.message.len() > husk_proto::MAX_LOG_MESSAGE - 2);
        assert!(past
            .iter()
            .any(|r| r.seq == first.seq && r.message == "first 1"));
        assert!(past.len() <= RING_LEN);
    }
}
