//! What the benchmark reads from /proc: the process tree under a tool, which
//! of those processes are the proxy and which are its MCP children, and
//! their memory, CPU time and context switches.

use std::collections::HashMap;
use std::fs;

/// A process's argv, split on NUL.
pub fn argv(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Fields of /proc/PID/stat after the `(comm)`; index 0 is field 3 (state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// parent pid → its children, over every process on the machine.
fn children_by_parent() -> HashMap<i32, Vec<i32>> {
    let mut map: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<i32>().ok()) {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

/// The processes of one running tool, split into the proxy itself (the
/// root and any helper process it forks, such as socat's per-connection
/// forks) and the MCP children (a process whose argv starts with the child
/// program, or `sh -c <child program>…`, and everything below it).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    pub proxy: Vec<i32>,
    pub children: Vec<i32>,
}

impl Tree {
    pub fn of(root: i32, child_program: &str) -> Tree {
        let map = children_by_parent();
        let mut tree = Tree {
            proxy: vec![root],
            children: Vec::new(),
        };
        // (pid, under a child?)
        let mut todo: Vec<(i32, bool)> = map
            .get(&root)
            .map(|v| v.iter().map(|p| (*p, false)).collect())
            .unwrap_or_default();
        while let Some((pid, under_child)) = todo.pop() {
            let is_child = under_child || is_child_process(&argv(pid), child_program);
            if is_child {
                tree.children.push(pid);
            } else {
                tree.proxy.push(pid);
            }
            if let Some(kids) = map.get(&pid) {
                todo.extend(kids.iter().map(|k| (*k, is_child)));
            }
        }
        tree
    }

    pub fn all(&self) -> impl Iterator<Item = i32> + '_ {
        self.proxy.iter().chain(&self.children).copied()
    }
}

fn is_child_process(argv: &[String], program: &str) -> bool {
    match argv {
        [first, ..] if first == program => true,
        [sh, c, script, ..] if sh.ends_with("sh") && c == "-c" => script.starts_with(program),
        _ => false,
    }
}

fn status_kib(pid: i32, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "status", "VmRSS:").unwrap_or(0)
}

/// Proportional set size in KiB: RSS with each shared page divided among
/// the processes that map it. The fair sum for a proxy made of forks.
pub fn pss_kib(pid: i32) -> u64 {
    status_kib(pid, "smaps_rollup", "Pss:").unwrap_or(0)
}

pub fn sum_rss_kib(pids: &[i32]) -> u64 {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

pub fn sum_pss_kib(pids: &[i32]) -> u64 {
    pids.iter().map(|p| pss_kib(*p)).sum()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    stat_fields(pid)
        .map(|f| {
            let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            get(11) + get(12)
        })
        .unwrap_or(0)
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU seconds of all the given processes.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() as f64 / ticks_per_second() as f64
}

/// Voluntary + involuntary context switches of every thread of `pid`.
pub fn context_switches(pid: i32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut sum = 0;
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                sum += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    sum
}

/// Threads of a process.
pub fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This process's own CPU seconds (the driver's overhead row).
pub fn self_cpu_seconds() -> f64 {
    cpu_ticks(std::process::id() as i32) as f64 / ticks_per_second() as f64
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft RLIMIT_NOFILE a process runs under, from /proc/PID/limits.
pub fn fd_limit(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}
