//! CPU time and memory of local processes, read from /proc (Linux).
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (all threads, in clock ticks — 10 ms at the usual
//! 100 Hz, plenty over phases of seconds); memory is `VmRSS` and `VmHWM` (peak) of
//! `/proc/PID/status`. Processes are named by pid, or found as the owner of the socket listening
//! on a TCP port (`/proc/net/tcp{,6}` → socket inode → `/proc/*/fd`), or by a command-line
//! substring.
//!
//! sluice's CPU is also read per thread (`/proc/PID/task/TID/stat`) and summed by the pipeline
//! stage each thread works for, which the thread's name tells ([`stage_of`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fields of `/proc/PID/stat` used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// User-mode CPU, clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU, clock ticks.
    pub stime: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, rss 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        rss_pages: field(24)?,
    })
}

/// The name (`comm`) in `/proc/PID/stat` text: between the first `(` and the last `)`.
pub fn parse_comm(text: &str) -> Option<&str> {
    text.get(text.find('(')? + 1..text.rfind(')')?)
}

/// The stages of sluice's pipeline that [`stage_of`] tells apart, in the order reports list them.
pub const STAGES: [&str; 5] = ["requests", "accumulators", "rollups", "spool", "other"];

/// The stage of the pipeline a thread of sluice works for, by the thread's name: tokio's
/// threads (async workers and the blocking pool) accept, authenticate, decompress, parse and
/// validate requests, and `decode-part` threads validate the later parts of large bodies;
/// each table's accumulator (`acc-…`) sorts, encodes and compresses its
/// inserts; each rollup's thread (`rollup-…`) folds rows into groups; the spool has one writer.
pub fn stage_of(comm: &str) -> &'static str {
    if comm.starts_with("tokio") || comm.starts_with("decode-part") {
        "requests"
    } else if comm.starts_with("acc-") {
        "accumulators"
    } else if comm.starts_with("rollup-") {
        "rollups"
    } else if comm.starts_with("spool") {
        "spool"
    } else {
        "other"
    }
}

/// CPU seconds of every thread a process has had while it was read: thread id → (stage, CPU
/// seconds at its last reading). A thread that ends keeps its last reading, so the CPU of
/// short-lived threads (tokio's blocking pool lets idle threads go) is not lost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadCpu(BTreeMap<u32, (&'static str, f64)>);

impl ThreadCpu {
    /// Records one reading of a thread.
    pub fn record(&mut self, tid: u32, comm: &str, cpu_secs: f64) {
        self.0.insert(tid, (stage_of(comm), cpu_secs));
    }

    /// CPU seconds per stage (every one of [`STAGES`]) spent between `start` and this later
    /// reading. A thread that began after `start` counts from zero.
    pub fn by_stage_since(&self, start: &ThreadCpu) -> Vec<StageCpu> {
        let mut by_stage: BTreeMap<&str, f64> = BTreeMap::new();
        for (tid, (stage, cpu)) in &self.0 {
            let before = start.0.get(tid).map_or(0.0, |(_, cpu)| *cpu);
            *by_stage.entry(stage).or_default() += (cpu - before).max(0.0);
        }
        STAGES
            .iter()
            .map(|stage| StageCpu {
                stage: stage.to_string(),
                cpu_secs: by_stage.get(stage).copied().unwrap_or(0.0),
            })
            .collect()
    }
}

/// The CPU one stage of sluice's pipeline used.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageCpu {
    pub stage: String,
    pub cpu_secs: f64,
}

/// `VmRSS` and `VmHWM` of `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_bytes: u64,
    /// Peak resident set since the process started.
    pub hwm_bytes: u64,
}

pub fn parse_status(text: &str) -> Memory {
    let mut memory = Memory::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> u64 {
            value
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => memory.rss_bytes = kib() * 1024,
            "VmHWM" => memory.hwm_bytes = kib() * 1024,
            _ => {}
        }
    }
    memory
}

/// Busy CPU time of the whole machine, in clock ticks: the first (`cpu`) line of `/proc/stat`
/// minus idle and iowait.
pub fn parse_machine_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).copied().unwrap_or(0))
}

/// Busy CPU-seconds of the whole machine since boot.
pub fn machine_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_machine_busy_ticks(&text)? as f64 / clock_ticks_per_sec() as f64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`, nanosecond resolution).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    /// CPU seconds since the process started (all threads).
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
}

/// A process to read.
#[derive(Clone, Debug)]
pub struct Probe {
    pub pid: u32,
    ticks_per_sec: f64,
}

impl Probe {
    pub fn new(pid: u32) -> Probe {
        Probe {
            pid,
            ticks_per_sec: clock_ticks_per_sec() as f64,
        }
    }

    /// This process.
    pub fn current() -> Probe {
        Probe::new(std::process::id())
    }

    /// `None` once the process is gone.
    pub fn read(&self) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let stat = parse_stat(&stat)?;
        let memory = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map(|s| parse_status(&s))
            .unwrap_or_default();
        Some(ProcSample {
            cpu_secs: (stat.utime + stat.stime) as f64 / self.ticks_per_sec,
            rss_bytes: memory.rss_bytes,
            hwm_bytes: memory.hwm_bytes,
        })
    }

    /// Reads every thread of the process into `threads` (nothing once it is gone).
    pub fn read_threads(&self, threads: &mut ThreadCpu) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended after the directory was listed
            };
            if let (Some(comm), Some(stat)) = (parse_comm(&text), parse_stat(&text)) {
                let cpu_secs = (stat.utime + stat.stime) as f64 / self.ticks_per_sec;
                threads.record(tid, comm, cpu_secs);
            }
        }
    }

    /// CPU seconds so far (0 when the process is gone).
    pub fn cpu_secs(&self) -> f64 {
        self.read().map_or(0.0, |s| s.cpu_secs)
    }
}

/// Socket inodes in `/proc/net/tcp` or `/proc/net/tcp6` text that LISTEN on `port`.
pub fn listening_inodes(net_tcp: &str, port: u16) -> Vec<u64> {
    let want = format!("{port:04X}");
    net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local_port = f.get(1)?.rsplit(':').next()?;
            (local_port.eq_ignore_ascii_case(&want) && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

/// The process owning a socket that listens on TCP `port` (needs permission to read other
/// processes' fd tables, e.g. the same user or root).
pub fn find_pid_by_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for pid in all_pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && targets.iter().any(|t| Path::new(t) == link)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The first process (lowest pid, not this one) whose command line contains `needle`
/// (arguments joined by spaces).
pub fn find_pid_by_cmdline(needle: &str) -> Option<u32> {
    let me = std::process::id();
    all_pids().into_iter().find(|&pid| {
        pid != me
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let joined: Vec<u8> = raw.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
                String::from_utf8_lossy(&joined).contains(needle)
            })
    })
}

fn all_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// How a process was found (for the report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Given(u32),
    ByPort(u32, u16),
    ByCmdline(u32, String),
    NotFound,
}

impl Found {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Found::Given(p) | Found::ByPort(p, _) | Found::ByCmdline(p, _) => Some(*p),
            Found::NotFound => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Found::Given(p) => format!("pid {p} (given)"),
            Found::ByPort(p, port) => format!("pid {p} (listening on port {port})"),
            Found::ByCmdline(p, s) => format!("pid {p} (command line contains {s:?})"),
            Found::NotFound => "not found: no CPU or memory figures".to_string(),
        }
    }
}

/// A pid given, else the owner of `port`'s listener, else a command-line match.
pub fn locate(pid: Option<u32>, port: Option<u16>, cmdline: &str) -> Found {
    if let Some(pid) = pid {
        return Found::Given(pid);
    }
    if let Some(port) = port
        && let Some(pid) = find_pid_by_port(port)
    {
        return Found::ByPort(pid, port);
    }
    if !cmdline.is_empty()
        && let Some(pid) = find_pid_by_cmdline(cmdline)
    {
        return Found::ByCmdline(pid, cmdline.to_string());
    }
    Found::NotFound
}

/// One timed reading of the watched processes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t: f64,
    pub sluice: Option<ProcSample>,
    pub clickhouse: Option<ProcSample>,
    pub harness: Option<ProcSample>,
}

/// Reads sluice, ClickHouse and this process every `period` on its own thread.
pub struct Sampler {
    pub started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    sluice: Option<Probe>,
    /// sluice's threads, read with every sample.
    threads: Arc<Mutex<ThreadCpu>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(sluice: Option<Probe>, clickhouse: Option<Probe>, period: Duration) -> Sampler {
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let harness = Probe::current();
        let threads = Arc::new(Mutex::new(ThreadCpu::default()));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            let (sluice, threads) = (sluice.clone(), threads.clone());
            std::thread::Builder::new()
                .name("proc-sampler".into())
                .spawn(move || {
                    let mut next = started;
                    while !stop.load(Ordering::Relaxed) {
                        let sample = Sample {
                            t: started.elapsed().as_secs_f64(),
                            sluice: sluice.as_ref().and_then(Probe::read),
                            clickhouse: clickhouse.as_ref().and_then(Probe::read),
                            harness: harness.read(),
                        };
                        samples.lock().expect("sampler lock").push(sample);
                        if let Some(sluice) = &sluice {
                            sluice.read_threads(&mut threads.lock().expect("sampler lock"));
                        }
                        next += period;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
                .expect("spawning the sampler thread")
        };
        Sampler {
            started,
            samples,
            sluice,
            threads,
            stop,
            thread: Some(thread),
        }
    }

    /// Seconds since the sampler started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// sluice's threads, read now, with every thread read before (`None` without sluice).
    pub fn sluice_threads(&self) -> Option<ThreadCpu> {
        let sluice = self.sluice.as_ref()?;
        let mut threads = self.threads.lock().expect("sampler lock");
        sluice.read_threads(&mut threads);
        Some(threads.clone())
    }

    /// A copy of the samples so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().expect("sampler lock").clone()
    }

    /// Stops sampling and returns every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.samples.lock().expect("sampler lock"))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a ')' inside, as the kernel prints it.
        let text = "4242 (clickhouse) srv) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
                    1500 250 0 0 20 0 57 0 123456 2147483648 30000 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 1500,
                stime: 250,
                rss_pages: 30000
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn thread_names_come_from_between_the_parentheses() {
        assert_eq!(parse_comm("77 (acc-edge (x)) S 1"), Some("acc-edge (x)"));
        assert_eq!(parse_comm("77 tokio S 1"), None);
    }

    #[test]
    fn threads_are_summed_by_stage_and_ended_threads_keep_their_cpu() {
        assert_eq!(
            [
                "tokio-rt-worker",
                "tokio-runtime-w",
                "decode-part",
                "acc-edge_access",
                "rollup-edge_acc"
            ]
            .map(stage_of),
            [
                "requests",
                "requests",
                "requests",
                "accumulators",
                "rollups"
            ]
        );
        assert_eq!(
            [stage_of("spool-writer"), stage_of("sluice")],
            ["spool", "other"]
        );
        let mut start = ThreadCpu::default();
        start.record(1, "tokio-rt-worker", 10.0);
        start.record(2, "acc-edge_access", 4.0);
        let mut end = start.clone();
        end.record(1, "tokio-rt-worker", 12.5);
        end.record(2, "acc-edge_access", 5.0);
        // Began and (as far as later reads go) ended within the window.
        end.record(3, "tokio-rt-worker", 0.5);
        let by_stage: Vec<(String, f64)> = end
            .by_stage_since(&start)
            .into_iter()
            .map(|s| (s.stage, s.cpu_secs))
            .collect();
        assert_eq!(
            by_stage,
            [
                ("requests".to_string(), 3.0),
                ("accumulators".to_string(), 1.0),
                ("rollups".to_string(), 0.0),
                ("spool".to_string(), 0.0),
                ("other".to_string(), 0.0)
            ]
        );
    }

    #[test]
    fn the_threads_of_a_live_process_are_read_by_stage() {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("acc-test".into())
            .spawn(move || {
                let started = thread_cpu_time();
                while thread_cpu_time() - started < Duration::from_millis(100) {
                    std::hint::black_box(0u64);
                }
                busy_tx.send(()).unwrap();
                let _ = exit_rx.recv();
            })
            .unwrap();
        busy_rx.recv().unwrap();
        let mut threads = ThreadCpu::default();
        Probe::current().read_threads(&mut threads);
        exit_tx.send(()).unwrap();
        worker.join().unwrap();
        let by_stage = threads.by_stage_since(&ThreadCpu::default());
        let accumulators = by_stage.iter().find(|s| s.stage == "accumulators").unwrap();
        // 100 ms of CPU, counted in clock ticks.
        assert!(accumulators.cpu_secs >= 0.05, "{by_stage:?}");
        assert!(accumulators.cpu_secs < 1.0, "{by_stage:?}");
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1\n";
        assert_eq!(
            parse_machine_busy_ticks(text),
            Some(100 + 5 + 50 + 3 + 2 + 1)
        );
        assert_eq!(parse_machine_busy_ticks("intr 1\n"), None);
        assert!(machine_busy_secs().unwrap() > 0.0);
    }

    #[test]
    fn status_gives_rss_and_peak_in_bytes() {
        let text = "Name:\tsluice\nVmPeak:\t 900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n";
        assert_eq!(
            parse_status(text),
            Memory {
                rss_bytes: 100 * 1024 * 1024,
                hwm_bytes: 200 * 1024 * 1024
            }
        );
        assert_eq!(parse_status(""), Memory::default());
    }

    #[test]
    fn listeners_are_found_by_port_and_state() {
        // 0x20FB = 8443 listening (0A) on 127.0.0.1; the same port as an established (01)
        // connection must not count; 0x1FBB = 8123 listening.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 55501 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:20FB 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 55502 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:1FBB 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 66601 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(text, 8443), vec![55501]);
        assert_eq!(listening_inodes(text, 8123), vec![66601]);
        assert!(listening_inodes(text, 9000).is_empty());
        // tcp6 addresses have the same port suffix.
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77701 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(v6, 8443), vec![77701]);
    }

    #[test]
    fn this_process_is_found_by_its_listener_and_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(find_pid_by_port(port), Some(std::process::id()));
        assert_eq!(
            locate(None, Some(port), ""),
            Found::ByPort(std::process::id(), port)
        );
        assert_eq!(locate(Some(7), Some(port), ""), Found::Given(7));
        let sample = Probe::current().read().unwrap();
        assert!(sample.rss_bytes > 0 && sample.hwm_bytes >= sample.rss_bytes);
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > before);
    }

    #[test]
    fn sampler_collects_readings_until_finished() {
        let sampler = Sampler::start(Some(Probe::current()), None, Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(60));
        let samples = sampler.finish();
        assert!(samples.len() >= 3, "{} samples", samples.len());
        assert!(
            samples
                .iter()
                .all(|s| s.sluice.is_some() && s.clickhouse.is_none())
        );
        assert!(samples.windows(2).all(|w| w[0].t <= w[1].t));
    }
}
