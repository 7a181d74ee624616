//! The file-descriptor limit as a limit like any other: raised to the
//! hard limit at start, turned into a number of sessions and the way
//! children are wired, and a reserve descriptor so that even at the
//! ceiling a connection is told why it is turned away instead of waiting
//! unseen in the backlog.

use std::os::fd::OwnedFd;

use crate::child::process::Stdin;

/// Kept free beyond the sessions' share: a spawn holds a few more for a
/// moment (the child's end of the pair, the stderr pipe's write end), and
/// a refusal needs one to accept on.
const HEADROOM: usize = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (ours to take: the
/// common soft limit of 1024 would cap a proxy far below its
/// `--max-sessions`). Returns the soft limit now in force.
pub fn raise_to_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// Descriptors this process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count().saturating_sub(1)) // the directory's own fd
        .unwrap_or(0)
}

/// How many sessions with `stdin` fit in `limit` descriptors when `in_use`
/// are taken.
pub fn session_capacity(limit: u64, in_use: usize, stdin: Stdin) -> usize {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit.saturating_sub(in_use).saturating_sub(HEADROOM) / stdin.fds_per_session()
}

/// How children get their stdin, and how many sessions that leaves room
/// for: a pipe of their own when `wanted` sessions fit at four descriptors
/// each, else the socket pair they share with stderr, at three. The faster
/// wiring wherever the limit can pay for it (the default 64 sessions need
/// 256 descriptors), and the most sessions where it cannot (6,500 under a
/// 20,000 limit where four each would stop at 5,000).
pub fn plan(limit: u64, in_use: usize, wanted: usize) -> (Stdin, usize) {
    let piped = session_capacity(limit, in_use, Stdin::Pipe);
    if piped >= wanted {
        (Stdin::Pipe, piped)
    } else {
        (
            Stdin::Socket,
            session_capacity(limit, in_use, Stdin::Socket),
        )
    }
}

/// One descriptor held back for the moment `accept(2)` fails with EMFILE:
/// giving it up lets the acceptor take the connection, send its -32001
/// line and close it, then take the descriptor back.
#[derive(Debug)]
pub struct Reserve(Option<OwnedFd>);

impl Reserve {
    pub fn new() -> Reserve {
        Reserve(open_spare())
    }

    /// Frees the reserve; `false` if there was none to free.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor back into reserve, if one is free.
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = open_spare();
        }
    }
}

impl Default for Reserve {
    fn default() -> Reserve {
        Reserve::new()
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_headroom_and_never_underflows() {
        let socket = Stdin::Socket;
        assert_eq!(
            session_capacity(20_000, 20, socket),
            (20_000 - 20 - HEADROOM) / 3
        );
        assert_eq!(
            session_capacity(20_000, 20, Stdin::Pipe),
            (20_000 - 20 - HEADROOM) / 4
        );
        assert_eq!(session_capacity(10, 20, socket), 0);
        assert!(session_capacity(u64::MAX, 0, socket) > 1 << 40);
    }

    #[test]
    fn children_get_a_stdin_pipe_only_where_the_limit_pays_for_it() {
        let four = (20_000 - 20 - HEADROOM) / 4;
        assert_eq!(plan(20_000, 20, 64), (Stdin::Pipe, four));
        assert_eq!(plan(20_000, 20, four), (Stdin::Pipe, four));
        let three = (20_000 - 20 - HEADROOM) / 3;
        assert_eq!(plan(20_000, 20, four + 1), (Stdin::Socket, three));
        assert_eq!(plan(20_000, 20, 6_500), (Stdin::Socket, three));
        // Past even three each, the most sessions still wins.
        assert_eq!(
            plan(100, 20, 64),
            (Stdin::Socket, (100 - 20 - HEADROOM) / 3)
        );
    }

    #[test]
    fn the_reserve_is_released_once_and_restored() {
        let mut reserve = Reserve::new();
        assert!(reserve.release());
        assert!(!reserve.release(), "nothing left to release");
        reserve.restore();
        assert!(reserve.release());
    }
}
