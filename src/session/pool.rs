//! A bounded pool of named worker threads, each running one session at a
//! time, that grows to demand and shrinks back when the demand is gone.
//!
//! Workers are started on demand, never more than `max` (the session
//! limit). A worker that finishes a job goes onto a stack of idle workers,
//! each waiting on its own one-slot channel; `execute` pops the most
//! recently idled one, so the warm workers do the work and the ones at the
//! bottom of the stack are those that time out. A worker idle for `linger`
//! exits, so after a burst the threads and their stacks go back to the
//! idle level, and once the last one is joined the freed heap is given
//! back too. Every thread is joined: an exiting worker records itself as
//! finished and calls the owner's `on_exit`, and the owner calls
//! [`Pool::reap_exited`]; [`Pool::join`] stops and joins all. A job that
//! finds all `max` workers busy waits for the first to finish, so a
//! session admitted the moment another freed its slot is never dropped.
//!
//! One lock guards all the bookkeeping (the idle stack, the jobs waiting
//! for a worker, the finished list), so "a worker decides to exit" and
//! "`execute` hands it a job" cannot cross: whichever takes the lock first
//! decides, and the other sees the outcome. The lock is never held while a
//! job runs, a thread starts or a thread is joined.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker ids are the `N` of `worker-N`: unique for the life of the pool.
type WorkerId = u64;

/// A pool of worker threads; see the module documentation.
///
/// Dropping a `Pool` without [`Pool::join`] tells idle workers to exit and
/// busy ones to exit after their job, but waits for none of them: `join`
/// is the orderly end, `Drop` only the last line of defence (blocking in
/// it could hang a process that is unwinding).
pub struct Pool {
    shared: Arc<Shared>,
    /// Every worker started and not yet joined, by id.
    handles: BTreeMap<WorkerId, JoinHandle<()>>,
    next_id: WorkerId,
    max: usize,
    stack_size: usize,
}

struct Shared {
    state: Mutex<State>,
    linger: Duration,
    on_exit: Box<dyn Fn() + Send + Sync>,
    /// Runs when a worker's wait times out, before it takes the lock: lets
    /// a test hand a job over at exactly that moment.
    #[cfg(test)]
    on_timeout: Option<Box<dyn Fn() + Send + Sync>>,
}

struct State {
    /// Idle workers, the most recently idled last. Each one waits on the
    /// receiver of its `Sender`; its channel is empty while it is here.
    idle: VecDeque<(WorkerId, Sender<Job>)>,
    /// Jobs that found every one of `max` workers busy. Each busy worker
    /// looks here before it goes idle, so `idle` and `waiting` are never
    /// both non-empty. Bounded by `max`.
    waiting: VecDeque<Job>,
    /// Workers that have decided to exit and will run no more jobs; their
    /// threads end at once, so joining them does not block.
    finished: Vec<WorkerId>,
    /// Set by shutdown: a worker that finds no waiting job exits.
    closed: bool,
    /// How often a worker timed out just as `execute` handed it a job.
    #[cfg(test)]
    handoffs_at_timeout: usize,
}

impl Pool {
    /// A pool of at most `max` workers, none started yet.
    ///
    /// A worker idle for `linger` exits. The product uses 5 s: starting a
    /// thread costs tens of microseconds and a session's child spawn about
    /// a millisecond, so keeping idle threads longer buys nothing, while
    /// every kept thread holds its stack and its share of memory. Workers
    /// get `stack_size` bytes of stack. `on_exit` is called (from the
    /// exiting worker, with no lock held) each time a worker finishes for
    /// good; the owner should then call [`Pool::reap_exited`].
    pub fn new(
        max: usize,
        linger: Duration,
        stack_size: usize,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    idle: VecDeque::new(),
                    waiting: VecDeque::new(),
                    finished: Vec::new(),
                    closed: false,
                    #[cfg(test)]
                    handoffs_at_timeout: 0,
                }),
                linger,
                on_exit: Box::new(on_exit),
                #[cfg(test)]
                on_timeout: None,
            }),
            handles: BTreeMap::new(),
            next_id: 1,
            max,
            stack_size,
        }
    }

    /// Hands `job` to the most recently idled worker, or starts a new
    /// worker for it. Never blocks (beyond joining workers that have
    /// already exited, which return at once).
    ///
    /// If all `max` workers are busy, the job waits for the first of them
    /// to finish its current job; up to `max` jobs may wait. This covers
    /// the instant between a session freeing its slot in the table and its
    /// worker going idle, when admission has already let the next session
    /// in. Returns the job if it can be neither run nor kept (all `max`
    /// busy and `max` waiting, which admission rules out) or if no thread
    /// can be started.
    pub fn execute(&mut self, job: Job) -> Result<(), Job> {
        let (worker, finished) = {
            let mut state = self.shared.lock();
            let finished = std::mem::take(&mut state.finished);
            let worker = state.idle.pop_back();
            debug_assert!(
                worker.is_none() || state.waiting.is_empty(),
                "a job waits while a worker idles"
            );
            // Workers in `finished` are on their way out; all the others
            // are idle or will look at `waiting` before they idle or exit.
            let live = self.handles.len() - finished.len();
            if worker.is_none() && live >= self.max {
                if live == 0 || state.waiting.len() >= self.max {
                    drop(state);
                    self.join_finished(finished);
                    return Err(job);
                }
                state.waiting.push_back(job);
                drop(state);
                self.join_finished(finished);
                return Ok(());
            }
            (worker, finished)
        };
        self.join_finished(finished);
        let job = match worker {
            // The worker's channel is empty and only this sender fills it:
            // the send cannot block. It fails only if the worker thread is
            // gone, which `catch_unwind` rules out; then start another.
            Some((_, sender)) => match sender.send(job) {
                Ok(()) => return Ok(()),
                Err(e) => e.into_inner(),
            },
            None => job,
        };
        if self.handles.len() >= self.max {
            return Err(job);
        }
        self.start_worker(job)
    }

    /// Raises the ceiling (a reload added servers). It never comes down:
    /// the sessions of a server a reload removed still hold their workers
    /// while they finish, and threads are started only when needed anyway.
    pub fn raise_max(&mut self, max: usize) {
        self.max = self.max.max(max);
    }

    /// Starts `worker-N` with `job` as its first job.
    fn start_worker(&mut self, job: Job) -> Result<(), Job> {
        let id = self.next_id;
        self.next_id += 1;
        // The first job travels like every later one, through the worker's
        // channel; if the thread cannot start, it comes back from there.
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let _ = sender.send(job);
        let spare = receiver.clone();
        let shared = Arc::clone(&self.shared);
        let started = thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(self.stack_size)
            .spawn(move || worker_main(id, &shared, receiver));
        match started {
            Ok(handle) => {
                self.handles.insert(id, handle);
                Ok(())
            }
            Err(e) => {
                log::error!("cannot start thread worker-{id}: {e}");
                match spare.try_recv() {
                    Ok(job) => Err(job),
                    Err(_) => unreachable!("the job was sent and `spare` keeps the channel open"),
                }
            }
        }
    }

    /// Joins every worker that has exited since the last call. Does not
    /// block: such a worker has nothing left to do but return.
    ///
    /// When that leaves no worker at all, the pool has drained after a
    /// burst, and freed heap memory is handed back to the system too.
    pub fn reap_exited(&mut self) {
        let finished = std::mem::take(&mut self.shared.lock().finished);
        if finished.is_empty() {
            return;
        }
        let joined = finished.len();
        self.join_finished(finished);
        if self.handles.is_empty() {
            let start = Instant::now();
            release_freed_heap();
            log::debug!(
                "pool drained: joined {joined} workers, released the freed heap in {} us",
                start.elapsed().as_micros()
            );
        }
    }

    fn join_finished(&mut self, finished: Vec<WorkerId>) {
        for id in finished {
            match self.handles.remove(&id) {
                Some(handle) => crate::sync::join(handle),
                None => debug_assert!(false, "worker-{id} finished twice"),
            }
        }
    }

    /// Workers started and not yet joined. After [`Pool::reap_exited`],
    /// the live workers, busy or idle; never more than `max`.
    pub fn workers(&self) -> usize {
        self.handles.len()
    }

    /// Workers waiting for a job.
    pub fn idle(&self) -> usize {
        self.shared.lock().idle.len()
    }

    /// Stops the pool: idle workers exit at once, busy ones after their
    /// current job and any jobs still waiting. Blocks until every worker
    /// is joined; one that panicked is logged by name.
    pub fn join(mut self) {
        self.close();
        for (_, handle) in std::mem::take(&mut self.handles) {
            crate::sync::join(handle);
        }
    }

    /// Marks the pool closed and drops the idle workers' senders, which
    /// wakes each of them with a disconnection.
    fn close(&mut self) {
        let idle = {
            let mut state = self.shared.lock();
            state.closed = true;
            std::mem::take(&mut state.idle)
        };
        drop(idle);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

/// Worker threads allocate from glibc's per-thread arenas (up to eight per
/// core), and glibc keeps what is freed there. Measured after a burst of
/// 2,500 sessions and a drained pool, on 2 cores: RSS 38 to 50 MB without
/// this, 13 to 23 MB with it (2.9 MB before the burst, 130 MB during); the
/// rest is fragmentation `malloc_trim` cannot return. It took 5 to 13 ms,
/// on the acceptor thread, only when no session is running.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_heap() {
    // SAFETY: `malloc_trim` has no preconditions; it takes each arena's
    // own lock, as `malloc` and `free` do.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give memory back on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_heap() {}

/// The body of `worker-N`: runs `first`'s job, then whatever `next_job`
/// brings, until it says to leave; then tells the owner.
fn worker_main(id: WorkerId, shared: &Shared, first: Receiver<Job>) {
    let mut next = first.recv().ok();
    while let Some(job) = next {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            let name = thread::current().name().unwrap_or("worker").to_string();
            log::error!("a session panicked on thread {name}; the worker carries on");
        }
        next = next_job(id, shared);
    }
    // `next_job` has put this worker in `finished` (a first job that never
    // came cannot happen: `start_worker` sends it before the thread starts).
    (shared.on_exit)();
}

/// After a job: takes a waiting job, or idles for `linger` and then either
/// receives a job or leaves. `None` means leave; the worker is then in
/// `finished`, put there under the same lock that took it off `idle`, so
/// `execute` never counts it as able to take a job.
fn next_job(id: WorkerId, shared: &Shared) -> Option<Job> {
    let receiver = {
        let mut state = shared.lock();
        if let Some(job) = state.waiting.pop_front() {
            return Some(job);
        }
        if state.closed {
            state.finished.push(id);
            return None;
        }
        let (sender, receiver) = crossbeam_channel::bounded(1);
        state.idle.push_back((id, sender));
        receiver
    };
    match receiver.recv_timeout(shared.linger) {
        Ok(job) => return Some(job),
        Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => {
            #[cfg(test)]
            if let Some(hook) = &shared.on_timeout {
                hook();
            }
            let mut state = shared.lock();
            // Idle entries time out oldest first, so search from the front.
            if let Some(at) = state.idle.iter().position(|(idle, _)| *idle == id) {
                state.idle.remove(at);
                state.finished.push(id);
                return None;
            }
            // `execute` took the entry before this lock, and a job is on
            // its way; or shutdown took it, and the sender is gone.
            #[cfg(test)]
            {
                state.handoffs_at_timeout += 1;
            }
            drop(state);
            if let Ok(job) = receiver.recv() {
                return Some(job);
            }
        }
    }
    // Shutdown dropped this worker's sender.
    shared.lock().finished.push(id);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const STACK: usize = 256 * 1024;
    /// Long enough that no worker times out during a test that does not
    /// mean it to.
    const FOREVER: Duration = Duration::from_secs(3600);
    const PATIENCE: Duration = Duration::from_secs(10);

    fn pool(max: usize, linger: Duration) -> Pool {
        Pool::new(max, linger, STACK, || {})
    }

    /// Polls `done` until it holds or `PATIENCE` runs out.
    fn poll_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn thread_name() -> String {
        thread::current().name().unwrap_or("").to_string()
    }

    /// A job that reports its thread's name, then waits for its release.
    fn blocking_job(started: &Sender<String>) -> (Job, Sender<()>) {
        let (release, released) = bounded::<()>(1);
        let started = started.clone();
        let job: Job = Box::new(move || {
            let _ = started.send(thread_name());
            let _ = released.recv();
        });
        (job, release)
    }

    /// A job that reports its thread's name and returns.
    fn naming_job(names: &Sender<String>) -> Job {
        let names = names.clone();
        Box::new(move || {
            let _ = names.send(thread_name());
        })
    }

    fn execute(pool: &mut Pool, job: Job) {
        assert!(pool.execute(job).is_ok(), "the pool refused a job");
    }

    #[test]
    fn grows_to_demand_and_never_past_max() {
        let mut pool = pool(3, FOREVER);
        assert_eq!(pool.workers(), 0, "no worker before the first job");
        let (started, starts) = bounded(16);
        let mut releases = Vec::new();
        for expected in 1..=3 {
            let (job, release) = blocking_job(&started);
            execute(&mut pool, job);
            releases.push(release);
            assert_eq!(
                starts.recv_timeout(PATIENCE).unwrap(),
                format!("worker-{expected}")
            );
            assert_eq!(pool.workers(), expected, "one worker per concurrent job");
        }
        // All three busy: the next three wait for one of them, the one
        // after that is refused, and no fourth thread starts.
        for _ in 0..3 {
            let (job, release) = blocking_job(&started);
            execute(&mut pool, job);
            releases.push(release);
        }
        let (refused, _release) = blocking_job(&started);
        assert!(pool.execute(refused).is_err(), "max busy and max waiting");
        assert_eq!(pool.workers(), 3);
        assert!(starts.try_recv().is_err(), "a waiting job ran early");
        for release in &releases {
            release.send(()).unwrap();
        }
        let mut names: Vec<String> = (0..3)
            .map(|_| starts.recv_timeout(PATIENCE).unwrap())
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() <= 3 && names.iter().all(|n| n.starts_with("worker-")));
        assert!(poll_until(|| pool.idle() == 3), "workers never went idle");
        assert_eq!(pool.workers(), 3);
        pool.join();
    }

    #[test]
    fn a_job_arriving_while_its_worker_finishes_waits_for_it() {
        // The race admission creates: a session frees its slot, the next
        // session is admitted, and the worker has not gone idle yet.
        let mut pool = pool(1, FOREVER);
        let (slot_freed, freed) = bounded::<()>(1);
        let (release, released) = bounded::<()>(1);
        execute(
            &mut pool,
            Box::new(move || {
                let _ = slot_freed.send(());
                let _ = released.recv();
            }),
        );
        freed.recv_timeout(PATIENCE).unwrap();
        let (names, named) = bounded(1);
        execute(&mut pool, naming_job(&names));
        release.send(()).unwrap();
        assert_eq!(named.recv_timeout(PATIENCE).unwrap(), "worker-1");
        assert_eq!(pool.workers(), 1);
        pool.join();
    }

    #[test]
    fn reuses_the_most_recently_idled_worker() {
        let mut pool = pool(3, FOREVER);
        let (started, starts) = bounded(16);
        let mut releases = Vec::new();
        for _ in 0..3 {
            let (job, release) = blocking_job(&started);
            execute(&mut pool, job);
            releases.push(release);
        }
        let mut names: Vec<String> = (0..3)
            .map(|_| starts.recv_timeout(PATIENCE).unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["worker-1", "worker-2", "worker-3"]);
        // Job i runs on worker-(i+1): each started a worker of its own.
        // Idle them in the order 1, 2, 3.
        for (i, release) in releases.iter().enumerate() {
            release.send(()).unwrap();
            assert!(
                poll_until(|| pool.idle() == i + 1),
                "worker-{} never idled",
                i + 1
            );
        }
        // Two jobs at once: the top of the stack, then the one below it.
        let (first, release_first) = blocking_job(&started);
        execute(&mut pool, first);
        assert_eq!(starts.recv_timeout(PATIENCE).unwrap(), "worker-3");
        let (second, release_second) = blocking_job(&started);
        execute(&mut pool, second);
        assert_eq!(starts.recv_timeout(PATIENCE).unwrap(), "worker-2");
        assert_eq!(pool.workers(), 3, "no new worker while one is idle");
        assert_eq!(pool.idle(), 1);
        release_first.send(()).unwrap();
        release_second.send(()).unwrap();
        pool.join();
    }

    #[test]
    fn idle_workers_exit_after_linger_and_are_joined() {
        let exits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&exits);
        let mut pool = Pool::new(4, Duration::from_millis(50), STACK, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let (started, starts) = bounded(16);
        let mut releases = Vec::new();
        for _ in 0..4 {
            let (job, release) = blocking_job(&started);
            execute(&mut pool, job);
            releases.push(release);
        }
        for _ in 0..4 {
            starts.recv_timeout(PATIENCE).unwrap();
        }
        assert_eq!(pool.workers(), 4);
        for release in releases {
            release.send(()).unwrap();
        }
        assert!(
            poll_until(|| {
                pool.reap_exited();
                pool.workers() == 0
            }),
            "idle workers never exited: {} left",
            pool.workers()
        );
        assert_eq!(pool.idle(), 0);
        assert_eq!(exits.load(Ordering::SeqCst), 4, "on_exit once per worker");
        // The pool starts again from nothing, and never reuses a name.
        let (names, named) = bounded(1);
        execute(&mut pool, naming_job(&names));
        assert_eq!(named.recv_timeout(PATIENCE).unwrap(), "worker-5");
        assert_eq!(pool.workers(), 1);
        pool.join();
    }

    #[test]
    fn a_job_handed_over_between_timeout_and_lock_reaches_the_worker() {
        // The worker's wait times out; before it can take the lock and
        // remove itself, `execute` pops it and sends a job.
        let (timed_out, timeouts) = bounded::<()>(1);
        let (resume, resumed) = bounded::<()>(1);
        let armed = std::sync::atomic::AtomicBool::new(true);
        let mut pool = pool(1, Duration::from_millis(20));
        Arc::get_mut(&mut pool.shared)
            .expect("no worker yet")
            .on_timeout = Some(Box::new(move || {
            if armed.swap(false, Ordering::SeqCst) {
                let _ = timed_out.send(());
                let _ = resumed.recv();
            }
        }));
        let (names, named) = bounded(2);
        execute(&mut pool, naming_job(&names));
        assert_eq!(named.recv_timeout(PATIENCE).unwrap(), "worker-1");
        timeouts
            .recv_timeout(PATIENCE)
            .expect("the worker never timed out");
        assert_eq!(pool.idle(), 1, "still on the stack until it takes the lock");
        execute(&mut pool, naming_job(&names));
        assert_eq!(pool.idle(), 0);
        resume.send(()).unwrap();
        assert_eq!(
            named.recv_timeout(PATIENCE).unwrap(),
            "worker-1",
            "the job was lost"
        );
        assert_eq!(pool.shared.lock().handoffs_at_timeout, 1);
        assert_eq!(pool.workers(), 1, "no second worker");
        pool.join();
    }

    #[test]
    fn a_job_handed_over_as_its_worker_times_out_is_never_lost() {
        // A 1 ms linger and gaps around it put hand-overs and timeouts on
        // top of each other; every job must run exactly once all the same.
        const JOBS: usize = 3000;
        let runs: Arc<Vec<AtomicUsize>> =
            Arc::new((0..JOBS).map(|_| AtomicUsize::new(0)).collect());
        let mut pool = pool(8, Duration::from_millis(1));
        let (names, named) = bounded::<String>(JOBS);
        for i in 0..JOBS {
            let runs = Arc::clone(&runs);
            let names = names.clone();
            let mut job: Job = Box::new(move || {
                runs[i].fetch_add(1, Ordering::SeqCst);
                let _ = names.send(thread_name());
            });
            // Refused only with 8 busy and 8 waiting (on a loaded machine
            // the workers may not get the CPU for a while): try again.
            let deadline = Instant::now() + PATIENCE;
            while let Err(back) = pool.execute(job) {
                assert!(Instant::now() < deadline, "job {i} refused for good");
                job = back;
                thread::sleep(Duration::from_micros(100));
            }
            // Gaps of 0 to 1.5 ms, in a pattern that does not repeat
            // with the linger.
            let gap = (i * 7919) % 1500;
            if gap > 100 {
                thread::sleep(Duration::from_micros(gap as u64));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..JOBS {
            seen.insert(named.recv_timeout(PATIENCE).expect("a job was lost"));
        }
        pool.join();
        let twice: Vec<usize> = (0..JOBS)
            .filter(|&i| runs[i].load(Ordering::SeqCst) != 1)
            .collect();
        assert!(twice.is_empty(), "jobs not run exactly once: {twice:?}");
        assert!(seen.len() > 1, "no worker ever timed out: {seen:?}");
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let mut pool = pool(1, FOREVER);
        execute(&mut pool, Box::new(|| panic!("a deliberate test panic")));
        assert!(
            poll_until(|| pool.idle() == 1),
            "the worker never came back after the panic"
        );
        let (names, named) = bounded(1);
        execute(&mut pool, naming_job(&names));
        assert_eq!(named.recv_timeout(PATIENCE).unwrap(), "worker-1");
        assert_eq!(pool.workers(), 1);
        pool.join();
    }

    #[test]
    fn join_waits_for_busy_workers_and_joins_every_thread() {
        let mut pool = pool(4, FOREVER);
        let (started, starts) = bounded(16);
        let mut releases = Vec::new();
        for _ in 0..3 {
            let (job, release) = blocking_job(&started);
            execute(&mut pool, job);
            releases.push(release);
        }
        for _ in 0..3 {
            starts.recv_timeout(PATIENCE).unwrap();
        }
        // One idle, two busy.
        releases.remove(0).send(()).unwrap();
        assert!(poll_until(|| pool.idle() == 1));
        // Every worker holds the shared state until its thread ends.
        let shared = Arc::downgrade(&pool.shared);
        let (joined, joins) = bounded(1);
        let joiner = thread::spawn(move || {
            pool.join();
            let _ = joined.send(());
        });
        assert!(
            joins.recv_timeout(Duration::from_millis(50)).is_err(),
            "join returned while two jobs still ran"
        );
        for release in releases {
            release.send(()).unwrap();
        }
        joins.recv_timeout(PATIENCE).expect("join never returned");
        joiner.join().unwrap();
        assert!(shared.upgrade().is_none(), "a worker thread outlived join");
    }
}
