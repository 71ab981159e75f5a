//! Lab fixture for shunt's end-to-end tests.
//!
//! A [`Lab`] is a pair of network namespaces (`<name>s` = server, `<name>c` = client) joined by a veth pair
//! whose ends carry the same names as their namespaces. Addresses: server 198.18.0.1/24 + 2001:2::1/64,
//! client 198.18.0.2/24 + 2001:2::2/64. Nothing is created in the root namespace. The lab is torn down on
//! drop (also while a test panics), on SIGINT/SIGTERM/SIGHUP of the test process, and a lab left behind by a
//! test process that died (SIGKILL) is removed by the next `Lab::new`.
//!
//! Sockets: [`Lab::in_client`] / [`Lab::in_server`] run a closure on a thread that has entered the namespace,
//! so sockets created there belong to it; a socket keeps its namespace for life, so it can be returned from
//! the closure and used from any thread.
//!
//! Server processes: [`Lab::spawn_server`] runs the shunt binary inside the server namespace, waits for its
//! `ready` log line and returns a [`ServerProcess`]; [`ServerProcess::stop`] sends SIGTERM and collects exit
//! status, stdout and the JSON report. A `ServerProcess` must be dropped before its `Lab` (declare it after).
#![allow(dead_code)]

pub mod alloc;

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::Value;

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// How long a server may take to log `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the shunt binary under test.
pub fn shunt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shunt")
}

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `config/lab.toml`.
pub fn lab_config() -> PathBuf {
    repo_path("config/lab.toml")
}

/// The reason every lab test gives in its `#[ignore = ...]`: lab tests are ignored by a plain `cargo test`
/// (so a run that cannot execute them shows them as ignored, never as passed), and `make test` runs them
/// with `--include-ignored`.
pub const LAB: &str = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)";

/// Called first by every lab test (which is `#[ignore = ...]`, so it only runs when asked for): panics with
/// a clear message when the process is not root, so a lab test that was asked for never passes without
/// running.
pub fn require_lab() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "lab tests need root (network namespaces, XDP, AF_XDP); run them through `make test` as root");
}

// ---------------------------------------------------------------------------------------------------------
// Running commands with a time bound
// ---------------------------------------------------------------------------------------------------------

/// Output of a finished command.
#[derive(Debug)]
pub struct CmdOutput {
    pub argv: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together, for messages.
    pub fn combined(&self) -> String {
        format!(
            "$ {}\n[{}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv.join(" "),
            describe_status(&self.status),
            self.stdout,
            self.stderr
        )
    }

    /// Panics (with the output) unless the command exited 0.
    pub fn expect_success(self) -> Self {
        assert!(self.success(), "command failed:\n{}", self.combined());
        self
    }
}

pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

fn to_strings<S: AsRef<OsStr>>(argv: &[S]) -> Vec<String> {
    argv.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect()
}

/// Make a spawned child die with its spawning thread (and so with the test process).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

/// Run `argv` (argv[0] looked up in PATH), bounded by `timeout`; panics if it cannot be started or times out.
pub fn run_cmd<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> CmdOutput {
    let shown = to_strings(argv);
    assert!(!argv.is_empty(), "run_cmd: empty argv");
    let mut cmd = Command::new(argv[0].as_ref());
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", shown.join(" ")));
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (status, timed_out) = wait_bounded(&mut child, timeout);
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    let output = CmdOutput { argv: shown, status, stdout, stderr };
    assert!(!timed_out, "command timed out after {timeout:?} (killed):\n{}", output.combined());
    output
}

/// Wait for `child` at most `timeout`; on timeout SIGKILL it and reap it. Returns (status, timed_out).
fn wait_bounded(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    match wait_exit(child, timeout) {
        Some(st) => (st, false),
        None => {
            let _ = child.kill();
            (child.wait().expect("reaping killed child"), true)
        }
    }
}

/// Waits until `child` exits or `timeout` passes, blocked in poll(2) on a pidfd (readable once the process
/// has exited), not in a sleep loop. Returns its status (reaped) if it exited in time.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    use rustix::event::{poll, PollFd, PollFlags};
    if let Some(st) = child.try_wait().unwrap_or_else(|e| panic!("waiting for pid {}: {e}", child.id())) {
        return Some(st);
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .unwrap_or_else(|e| panic!("pidfd_open({}): {e} (Linux 5.3+)", child.id()));
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => return None,
            Ok(_) => return Some(child.wait().expect("reaping an exited child")),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll on the pidfd of {}: {e}", child.id()),
        }
    }
}

fn ip(args: &[&str]) -> CmdOutput {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    run_cmd(&argv, Duration::from_secs(20)).expect_success()
}

/// Does network namespace `ns` exist (as a name under /var/run/netns)?
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/var/run/netns").join(ns).exists()
}

/// Does `s` contain `word` delimited by non-alphanumeric characters (so "already" is not "ready")?
pub fn contains_word(s: &str, word: &str) -> bool {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

// ---------------------------------------------------------------------------------------------------------
// Cleanup on signals and after dead test processes
// ---------------------------------------------------------------------------------------------------------

/// Per-process registry directory: one empty file per live lab (named after the lab), one `pid-N` file per
/// live server process. Used by the signal handler and by the stale-lab sweep.
fn registry_root() -> PathBuf {
    std::env::temp_dir().join("shunt-e2e-labs")
}

fn registry_dir() -> PathBuf {
    registry_root().join(std::process::id().to_string())
}

static CLEANUP_CMD: OnceLock<(CString, CString)> = OnceLock::new();

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    if let Some((sh, script)) = CLEANUP_CMD.get() {
        // SAFETY: only async-signal-safe calls (fork, execv, _exit, waitpid) on data prepared beforehand.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let dash_c = b"-c\0";
                let argv: [*const libc::c_char; 4] =
                    [sh.as_ptr(), dash_c.as_ptr().cast(), script.as_ptr(), std::ptr::null()];
                libc::execv(sh.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            } else if pid > 0 {
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
        }
    }
    // SAFETY: restoring the default disposition and re-raising is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn cleanup_script(dir: &Path, kill_servers: bool) -> String {
    let d = dir.display();
    let t = std::env::temp_dir();
    let t = t.display();
    let kill = if kill_servers {
        format!(
            "for p in '{d}'/pid-*; do [ -e \"$p\" ] || continue; kill -KILL \"${{p##*/pid-}}\" 2>/dev/null; \
             rm -f \"$p\"; done; "
        )
    } else {
        format!("rm -f '{d}'/pid-*; ")
    };
    format!(
        "{kill}for f in '{d}'/shunt*; do [ -e \"$f\" ] || continue; n=\"${{f##*/}}\"; \
         ip netns del \"${{n}}s\" 2>/dev/null; ip netns del \"${{n}}c\" 2>/dev/null; rm -f \"$f\"; rm -rf '{t}'/shunt-e2e-\"$n\"; done; \
         rmdir '{d}' 2>/dev/null; true"
    )
}

fn install_cleanup_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sh = CString::new("/bin/sh").unwrap();
        let script = CString::new(cleanup_script(&registry_dir(), true)).unwrap();
        let _ = CLEANUP_CMD.set((sh, script));
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler; we only replace the default disposition.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old);
                if old.sa_sigaction == libc::SIG_DFL {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_fatal_signal as extern "C" fn(libc::c_int) as usize;
                    libc::sigemptyset(&mut sa.sa_mask);
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
            }
        }
        sweep_stale_labs();
    });
}

/// Remove labs registered by test processes that no longer exist (e.g. killed with SIGKILL).
fn sweep_stale_labs() {
    let Ok(entries) = fs::read_dir(registry_root()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(&name).exists() {
            continue;
        }
        // Servers of a dead test process died with it (PR_SET_PDEATHSIG); do not kill recycled PIDs.
        let script = cleanup_script(&e.path(), false);
        let _ = Command::new("/bin/sh").arg("-c").arg(script).stdin(Stdio::null()).status();
    }
}

fn register(file: &str) {
    let dir = registry_dir();
    let _ = fs::create_dir_all(&dir);
    let _ = File::create(dir.join(file));
}

fn unregister(file: &str) {
    let dir = registry_dir();
    let _ = fs::remove_file(dir.join(file));
    let _ = fs::remove_dir(&dir); // only succeeds when empty
}

// ---------------------------------------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------------------------------------

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Labs (and so the servers in them, which pin busy workers to cores) exist one at a time per test process,
/// even when the test harness runs tests in parallel: `Lab::new` waits for the previous lab to be dropped.
/// A thread may hold several labs at once.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    static SERIAL_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

struct SerialGuard(#[allow(dead_code)] Option<std::sync::MutexGuard<'static, ()>>);

fn serial_guard() -> SerialGuard {
    let held = SERIAL_HELD.with(|h| h.get());
    let guard = if held > 0 { None } else { Some(SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) };
    SERIAL_HELD.with(|h| h.set(held + 1));
    SerialGuard(guard)
}

impl Drop for SerialGuard {
    fn drop(&mut self) {
        SERIAL_HELD.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

fn unique_name() -> String {
    let pid = std::process::id() as u64;
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    // splitmix64 over the three inputs
    let mut x = pid.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.rotate_left(32) ^ t;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("shunt{:08x}", x as u32)
}

/// Which end of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

pub struct Lab {
    name: String,
    queues: u32,
    server_mac: [u8; 6],
    client_mac: [u8; 6],
    dir: PathBuf,
    files: AtomicU32,
    _serial: SerialGuard,
}

impl Lab {
    /// Create a lab whose veth pair has `queues` RX and TX queues on each end. With more than one queue the
    /// client's transmit queue i is pinned by XPS to CPU (i mod ncpus), so that traffic sent from a thread
    /// pinned to CPU i arrives on server RX queue i (on veth the RX queue is the sender's TX queue).
    pub fn new(queues: u32) -> Lab {
        assert!((1..=64).contains(&queues), "Lab::new: queues must be 1..=64");
        let serial = serial_guard();
        install_cleanup_once();
        let mut name = unique_name();
        while netns_exists(&format!("{name}s")) || netns_exists(&format!("{name}c")) {
            name = unique_name();
        }
        register(&name);
        let dir = std::env::temp_dir().join(format!("shunt-e2e-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create lab temp dir");
        // From here on, Drop cleans up whatever part was created.
        let mut lab = Lab {
            name,
            queues,
            server_mac: [0; 6],
            client_mac: [0; 6],
            dir,
            files: AtomicU32::new(0),
            _serial: serial,
        };
        lab.setup();
        lab
    }

    fn setup(&mut self) {
        let (sns, cns) = (self.server_ns(), self.client_ns());
        let (sif, cif) = (self.server_if(), self.client_if());
        let q = self.queues.to_string();
        ip(&["netns", "add", &sns]);
        ip(&["netns", "add", &cns]);
        ip(&[
            "-n",
            &sns,
            "link",
            "add",
            &sif,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &cif,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &cns,
        ]);
        for ns in [&sns, &cns] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                &format!("net.ipv4.conf.{ns}.rp_filter=0"),
            ]);
        }
        ip(&["-n", &sns, "addr", "add", "198.18.0.1/24", "dev", &sif]);
        ip(&["-n", &cns, "addr", "add", "198.18.0.2/24", "dev", &cif]);
        ip(&["-n", &sns, "-6", "addr", "add", "2001:2::1/64", "dev", &sif, "nodad"]);
        ip(&["-n", &cns, "-6", "addr", "add", "2001:2::2/64", "dev", &cif, "nodad"]);
        ip(&["-n", &sns, "link", "set", &sif, "up"]);
        ip(&["-n", &cns, "link", "set", &cif, "up"]);
        if self.queues > 1 {
            let ncpu = num_cpus();
            let mut script = String::new();
            for i in 0..self.queues {
                let mask = 1u64 << (i as usize % ncpu);
                script.push_str(&format!("printf '%x' {mask} > /sys/class/net/{cif}/queues/tx-{i}/xps_cpus; "));
            }
            ip(&["netns", "exec", &cns, "sh", "-ec", &script]);
        }
        // Bounded wait: carrier on both ends, no tentative IPv6 address.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let up = |ns: &str, dev: &str| ip(&["-n", ns, "link", "show", "dev", dev]).stdout.contains("LOWER_UP");
            let tentative = |ns: &str, dev: &str| {
                !ip(&["-n", ns, "-6", "addr", "show", "dev", dev, "tentative"]).stdout.trim().is_empty()
            };
            if up(&sns, &sif) && up(&cns, &cif) && !tentative(&sns, &sif) && !tentative(&cns, &cif) {
                break;
            }
            assert!(Instant::now() < deadline, "lab {} did not come up within 5 s", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server_mac = read_mac(&sns, &sif);
        self.client_mac = read_mac(&cns, &cif);
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn queues(&self) -> u32 {
        self.queues
    }
    pub fn server_ns(&self) -> String {
        format!("{}s", self.name)
    }
    pub fn client_ns(&self) -> String {
        format!("{}c", self.name)
    }
    pub fn ns(&self, side: Side) -> String {
        match side {
            Side::Server => self.server_ns(),
            Side::Client => self.client_ns(),
        }
    }
    /// Server veth end (inside the server namespace).
    pub fn server_if(&self) -> String {
        format!("{}s", self.name)
    }
    /// Client veth end (inside the client namespace).
    pub fn client_if(&self) -> String {
        format!("{}c", self.name)
    }
    pub fn server_v4(&self) -> Ipv4Addr {
        SERVER_V4
    }
    pub fn client_v4(&self) -> Ipv4Addr {
        CLIENT_V4
    }
    pub fn server_v6(&self) -> Ipv6Addr {
        SERVER_V6
    }
    pub fn client_v6(&self) -> Ipv6Addr {
        CLIENT_V6
    }
    pub fn server_mac(&self) -> [u8; 6] {
        self.server_mac
    }
    pub fn client_mac(&self) -> [u8; 6] {
        self.client_mac
    }
    pub fn server_mac_str(&self) -> String {
        fmt_mac(&self.server_mac)
    }
    pub fn client_mac_str(&self) -> String {
        fmt_mac(&self.client_mac)
    }
    /// Scratch directory of this lab (removed on drop unless SHUNT_KEEP_TEST_FILES is set).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh file path in the lab's scratch directory.
    pub fn tmp_path(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}-{n}.{ext}"))
    }

    /// Run `f` on a new thread inside the client namespace and return its result (panics propagate).
    pub fn in_client<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        in_netns(&self.client_ns(), f)
    }

    /// Run `f` on a new thread inside the server namespace and return its result (panics propagate).
    pub fn in_server<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        in_netns(&self.server_ns(), f)
    }

    /// Start `f` on a new thread inside the client namespace; threads it spawns stay in that namespace.
    pub fn spawn_in_client<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_in_netns(self.client_ns(), f)
    }

    /// Start `f` on a new thread inside the server namespace.
    pub fn spawn_in_server<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_in_netns(self.server_ns(), f)
    }

    /// Run a command inside a namespace (`ip netns exec`), bounded by `timeout`.
    pub fn exec<S: AsRef<OsStr>>(&self, side: Side, argv: &[S], timeout: Duration) -> CmdOutput {
        let mut full: Vec<OsString> = vec!["ip".into(), "netns".into(), "exec".into(), self.ns(side).into()];
        full.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
        run_cmd(&full, timeout)
    }

    /// The XDP program attached to the server interface, if any (as `ip -j` describes it).
    pub fn server_xdp(&self) -> Option<Value> {
        let out = ip(&["-n", &self.server_ns(), "-d", "-j", "link", "show", "dev", &self.server_if()]);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("cannot parse `ip -j link` output ({e}): {}", out.stdout));
        v.get(0).and_then(|l| l.get("xdp")).cloned()
    }

    /// `ip -d link show` of the server interface (for messages).
    pub fn server_link_text(&self) -> String {
        ip(&["-n", &self.server_ns(), "-d", "link", "show", "dev", &self.server_if()]).stdout
    }

    /// Wait (bounded) until no XDP program is attached to the server interface; panics otherwise.
    pub fn assert_no_xdp_within(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.server_xdp().is_some() {
            if Instant::now() >= deadline {
                panic!(
                    "an XDP program is still attached to {} after {timeout:?}:\n{}",
                    self.server_if(),
                    self.server_link_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A copy of `config/lab.toml` in the lab directory with the value of each `key = ...` line named in
    /// `set` replaced (keys are matched by name in any table; each must occur). Returns its path.
    pub fn lab_config_with(&self, set: &[(&str, &str)]) -> PathBuf {
        let text = fs::read_to_string(lab_config()).expect("read config/lab.toml");
        let mut seen = vec![false; set.len()];
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let key = line.split('=').next().unwrap_or("").trim();
                match set.iter().position(|(k, _)| *k == key && line.contains('=')) {
                    Some(i) if !line.trim_start().starts_with('#') => {
                        seen[i] = true;
                        format!("{} = {}", set[i].0, set[i].1)
                    }
                    _ => line.to_string(),
                }
            })
            .collect();
        for (i, (k, _)) in set.iter().enumerate() {
            assert!(seen[i], "config/lab.toml has no `{k} = ...` line to replace");
        }
        let path = self.tmp_path("lab-config", "toml");
        fs::write(&path, lines.join("\n") + "\n").expect("write derived config");
        path
    }

    /// Arguments for `shunt serve` on this lab: `serve --config config/lab.toml --interface <server if>` + extra.
    pub fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "serve".to_string(),
            "--config".to_string(),
            lab_config().display().to_string(),
            "--interface".to_string(),
            self.server_if(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Start the shunt binary with `args` inside the server namespace without waiting for `ready`.
    /// For `serve`, `--report <file in lab dir>` is added unless `args` has `--report`.
    pub fn spawn_server_unready<S: AsRef<OsStr>>(&self, args: &[S]) -> ServerProcess {
        self.spawn_server_unready_with(&[], args)
    }

    /// Like [`Lab::spawn_server_unready`], with `wrapper` (e.g. `setpriv ... --`) between `ip netns exec NS`
    /// and the binary.
    pub fn spawn_server_unready_with<S: AsRef<OsStr>>(&self, wrapper: &[&str], args: &[S]) -> ServerProcess {
        let args = to_strings(args);
        let mut args_full = args.clone();
        let mut report = None;
        if args.first().map(String::as_str) == Some("serve") {
            if let Some(i) = args.iter().position(|a| a == "--report") {
                report = args.get(i + 1).map(PathBuf::from);
            } else if let Some(a) = args.iter().find(|a| a.starts_with("--report=")) {
                report = Some(PathBuf::from(&a["--report=".len()..]));
            } else {
                let p = self.tmp_path("report", "json");
                args_full.push("--report".into());
                args_full.push(p.display().to_string());
                report = Some(p);
            }
        }
        let stdout_path = self.tmp_path("server", "stdout");
        let stderr_path = self.tmp_path("server", "stderr");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns()])
            .args(wrapper)
            .arg(shunt_bin())
            .args(&args_full)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create server stdout file"))
            .stderr(File::create(&stderr_path).expect("create server stderr file"));
        if std::env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1");
        }
        die_with_parent(&mut cmd);
        let shown = format!(
            "ip netns exec {} {}{} {}",
            self.server_ns(),
            wrapper.iter().map(|w| format!("{w} ")).collect::<String>(),
            shunt_bin(),
            args_full.join(" ")
        );
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        let pid = child.id();
        register(&format!("pid-{pid}"));
        ServerProcess { child: Some(child), pid, cmdline: shown, stdout_path, stderr_path, report_path: report }
    }

    /// Start the shunt binary with `args` (e.g. from [`Lab::serve_args`]) in the server namespace and wait up to
    /// [`READY_TIMEOUT`] for its `ready` line on stderr. Panics with the captured stderr if it exits or times out.
    pub fn spawn_server<S: AsRef<OsStr>>(&self, args: &[S]) -> ServerProcess {
        let mut srv = self.spawn_server_unready(args);
        srv.wait_ready(READY_TIMEOUT);
        srv
    }

    /// Run the binary in the server namespace and expect it to exit by itself within `timeout` (start-up errors).
    /// Panics (with its output) if it logs `ready` or does not exit in time.
    pub fn run_server_expect_exit<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Finished {
        self.run_server_expect_exit_with(&[], args, timeout)
    }

    /// [`Lab::run_server_expect_exit`] with a wrapper command (see [`Lab::spawn_server_unready_with`]).
    pub fn run_server_expect_exit_with<S: AsRef<OsStr>>(
        &self,
        wrapper: &[&str],
        args: &[S],
        timeout: Duration,
    ) -> Finished {
        let mut srv = self.spawn_server_unready_with(wrapper, args);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = srv.try_wait() {
                return srv.finish(st);
            }
            if contains_word(&srv.stderr_text(), "ready") {
                let out = srv.kill();
                panic!("`{}` was expected to fail at start-up but logged `ready`\n{}", srv.cmdline, out.describe());
            }
            if Instant::now() >= deadline {
                let out = srv.kill();
                panic!("`{}` did not exit within {timeout:?}\n{}", srv.cmdline, out.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [self.server_ns(), self.client_ns()] {
            if netns_exists(&ns) {
                let st = Command::new("ip").args(["netns", "del", &ns]).stdin(Stdio::null()).status();
                if !matches!(st, Ok(s) if s.success()) {
                    eprintln!("warning: `ip netns del {ns}` failed: {st:?}");
                }
            }
        }
        unregister(&self.name);
        if std::env::var_os("SHUNT_KEEP_TEST_FILES").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab {}: test files kept in {}", self.name, self.dir.display());
        }
    }
}

fn read_mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", dev]).stdout;
    let tok = out
        .split_whitespace()
        .skip_while(|t| *t != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in `ip link show dev {dev}`: {out}"));
    parse_mac(tok).unwrap_or_else(|| panic!("bad MAC {tok:?}"))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: f is an open namespace fd; setns affects only the calling thread for CLONE_NEWNET.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

fn in_netns<F, R>(ns: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("in-{ns}"))
            .spawn_scoped(s, move || {
                enter_netns(ns);
                f()
            })
            .expect("spawn namespace thread");
        match h.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

fn spawn_in_netns<F, R>(ns: String, f: F) -> std::thread::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            enter_netns(&ns);
            f()
        })
        .expect("spawn namespace thread")
}

/// Pin the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) {
    shunt::sys::pin_to_core(cpu).unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
}

// ---------------------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------------------

pub struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    report_path: Option<PathBuf>,
}

/// A server process that has exited.
#[derive(Debug)]
pub struct Finished {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Parsed `--report` file, if the server wrote one.
    pub report: Option<Value>,
    /// Why `report` is None.
    pub report_error: Option<String>,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything known about the run, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\n[{}]\n--- server stdout ---\n{}\n--- server stderr ---\n{}\n--- report ---\n{}",
            self.cmdline,
            describe_status(&self.status),
            self.stdout,
            self.stderr,
            match (&self.report, &self.report_error) {
                (Some(r), _) => serde_json::to_string_pretty(r).unwrap_or_default(),
                (None, Some(e)) => e.clone(),
                (None, None) => "(none)".into(),
            }
        )
    }

    /// The parsed JSON report; panics with the server's output if there is none.
    pub fn report(&self) -> &Value {
        match &self.report {
            Some(r) => r,
            None => panic!("server wrote no usable JSON report\n{}", self.describe()),
        }
    }

    /// Panics unless the server exited with code 0.
    pub fn assert_clean_exit(&self) {
        assert_eq!(self.status.code(), Some(0), "server did not exit cleanly\n{}", self.describe());
    }

    /// Integer at a dotted path in the report (e.g. "xdp.redirected"); panics with context if absent.
    pub fn report_u64(&self, path: &str) -> u64 {
        json_u64(self.report(), path).unwrap_or_else(|| {
            panic!("report has no integer at `{path}`\n{}", self.describe());
        })
    }

    /// The `workers` array of the report.
    pub fn workers(&self) -> &Vec<Value> {
        self.report()
            .get("workers")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("report has no `workers` array\n{}", self.describe()))
    }
}

/// Integer at a dotted path ("a.b.0.c") in a JSON value.
pub fn json_u64(v: &Value, path: &str) -> Option<u64> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) if cur.is_array() => cur.get(i)?,
            _ => cur.get(part)?,
        };
    }
    cur.as_u64()
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        fs::read(&self.stdout_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// For failure messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\n--- server stdout ---\n{}\n--- server stderr ---\n{}",
            self.cmdline,
            self.stdout_text(),
            self.stderr_text()
        )
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none() && self.child.is_some()
    }

    /// Exit status if the process has exited (reaps it).
    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => Some(st),
            Ok(None) => None,
            Err(e) => panic!("waiting for server pid {}: {e}", self.pid),
        }
    }

    /// Wait up to `timeout` for a `ready` line on stderr; panics with stderr if the server exits or times out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if contains_word(&self.stderr_text(), "ready") {
                return;
            }
            if let Some(st) = self.try_wait() {
                let out = self.finish(st);
                panic!("server exited before logging `ready`\n{}", out.describe());
            }
            if Instant::now() >= deadline {
                let out = self.kill();
                panic!("server did not log `ready` within {timeout:?} (killed)\n{}", out.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: pid is our own child, not yet reaped (child is Some), so the PID cannot have been reused.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    fn finish(&mut self, status: ExitStatus) -> Finished {
        self.child = None;
        unregister(&format!("pid-{}", self.pid));
        let (report, report_error) = match &self.report_path {
            None => (None, Some("no --report file requested".to_string())),
            Some(p) => match fs::read_to_string(p) {
                Err(e) => (None, Some(format!("cannot read report {}: {e}", p.display()))),
                Ok(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some(format!("report {} is not JSON ({e}):\n{text}", p.display()))),
                },
            },
        };
        Finished {
            cmdline: self.cmdline.clone(),
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
            report,
            report_error,
        }
    }

    /// SIGTERM, then wait up to [`STOP_TIMEOUT`]. Panics (after SIGKILL) if the server does not exit in time.
    pub fn stop(mut self) -> Finished {
        if let Some(st) = self.try_wait() {
            return self.finish(st);
        }
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().expect("child");
        let (st, timed_out) = wait_bounded(child, STOP_TIMEOUT);
        let out = self.finish(st);
        assert!(!timed_out, "server did not exit within {STOP_TIMEOUT:?} after SIGTERM (killed)\n{}", out.describe());
        out
    }

    /// Waits (in poll(2) on a pidfd) up to `timeout` for the server to exit by itself; its [`Finished`] if
    /// it did, `None` (still running) otherwise.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> Option<Finished> {
        let child = self.child.as_mut()?;
        let st = wait_exit(child, timeout)?;
        Some(self.finish(st))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Finished {
        if let Some(st) = self.try_wait() {
            return self.finish(st);
        }
        self.signal(libc::SIGKILL);
        let child = self.child.as_mut().expect("child");
        let (st, _) = wait_bounded(child, Duration::from_secs(10));
        self.finish(st)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let out = self.kill();
            if std::thread::panicking() {
                eprintln!("server killed because the test failed\n{}", out.describe());
            }
        } else if std::thread::panicking() {
            eprintln!("(server had exited)\n{}", self.describe());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// UDP echo client
// ---------------------------------------------------------------------------------------------------------

/// The payload for sequence number `seq` with length `len`: the sequence number (little-endian, truncated to
/// `len`) followed by a pattern derived from it. Payloads of 8 bytes or more are unique per seq; shorter ones
/// are unique among any 2^(8*len) consecutive seqs.
pub fn echo_payload(seq: u64, len: usize) -> Vec<u8> {
    let head = seq.to_le_bytes();
    (0..len)
        .map(|j| match head.get(j) {
            Some(b) => *b,
            None => (seq.wrapping_mul(31).wrapping_add(j as u64 * 7) as u8) ^ 0x5a,
        })
        .collect()
}

/// Payload sizes covering 1..=1400: consecutive seqs walk the whole range (677 is coprime to 1400).
pub fn echo_size(seq: u64) -> usize {
    1 + ((seq * 677) % 1400) as usize
}

#[derive(Debug, Default, Clone)]
pub struct EchoStats {
    /// Datagrams sent, retransmissions included.
    pub sent: u64,
    /// Distinct requests answered.
    pub answered: u64,
    pub retransmits: u64,
    /// Replies to requests already answered (caused by retransmissions).
    pub duplicates: u64,
    /// Errors from recv (e.g. ECONNREFUSED from an ICMP unreachable).
    pub recv_errors: u64,
}

pub struct EchoOpts {
    /// Outstanding requests at most.
    pub window: usize,
    /// Retransmit a request unanswered for this long.
    pub rto: Duration,
    /// Give up on a request after this many transmissions.
    pub max_tries: u32,
    /// Give up on the whole exchange after this long.
    pub deadline: Duration,
}

impl Default for EchoOpts {
    fn default() -> Self {
        EchoOpts { window: 32, rto: Duration::from_millis(250), max_tries: 5, deadline: Duration::from_secs(90) }
    }
}

/// Send requests `seqs` (payload `echo_payload(seq, size(seq))`) over the connected socket `sock`, keeping at
/// most `opts.window` outstanding, and check that every request comes back byte-identical. Returns an error
/// describing the first failure (a request that never came back, a reply matching no request, a deadline).
pub fn echo_exchange(
    sock: &UdpSocket,
    seqs: std::ops::Range<u64>,
    size: impl Fn(u64) -> usize,
    opts: &EchoOpts,
) -> Result<EchoStats, String> {
    struct Out {
        seq: u64,
        sent_at: Instant,
        tries: u32,
    }
    sock.set_read_timeout(Some(Duration::from_millis(10))).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut st = EchoStats::default();
    let mut outstanding: HashMap<Vec<u8>, Out> = HashMap::new();
    let mut answered: HashSet<Vec<u8>> = HashSet::new();
    let mut next = seqs.start;
    let mut buf = vec![0u8; 65536];
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    loop {
        while outstanding.len() < opts.window && next < seqs.end {
            let p = echo_payload(next, size(next));
            if outstanding.contains_key(&p) {
                break; // same short payload still in flight: wait for it first
            }
            send_retrying(sock, &p)?;
            st.sent += 1;
            outstanding.insert(p, Out { seq: next, sent_at: Instant::now(), tries: 1 });
            next += 1;
        }
        if outstanding.is_empty() && next >= seqs.end {
            return Ok(st);
        }
        if start.elapsed() > opts.deadline {
            let seqs_end = seqs.end;
            let mut seqs: Vec<u64> = outstanding.values().map(|o| o.seq).collect();
            seqs.sort_unstable();
            return Err(format!(
                "echo to {peer}: deadline {:?} passed with {} requests outstanding (first seqs {:?}), {} not sent yet; {st:?}",
                opts.deadline,
                outstanding.len(),
                &seqs[..seqs.len().min(8)],
                seqs_end - next,
            ));
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let r = &buf[..n];
                if outstanding.remove(r).is_some() {
                    st.answered += 1;
                    answered.insert(r.to_vec());
                } else if answered.contains(r) {
                    st.duplicates += 1;
                } else {
                    return Err(format!(
                        "echo to {peer}: reply of {n} bytes matches no request (first bytes {:02x?}); {st:?}",
                        &r[..n.min(32)]
                    ));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => st.recv_errors += 1,
        }
        let now = Instant::now();
        for (p, o) in outstanding.iter_mut() {
            if now.duration_since(o.sent_at) >= opts.rto {
                if o.tries >= opts.max_tries {
                    return Err(format!(
                        "echo to {peer}: request seq {} ({} bytes) never came back after {} transmissions; {st:?}",
                        o.seq,
                        p.len(),
                        o.tries
                    ));
                }
                send_retrying(sock, p)?;
                o.tries += 1;
                o.sent_at = now;
                st.sent += 1;
                st.retransmits += 1;
            }
        }
    }
}

/// `send`, retrying a few times on transient errors (ENOBUFS, EAGAIN, ECONNREFUSED from an earlier ICMP error).
pub fn send_retrying(sock: &UdpSocket, p: &[u8]) -> Result<(), String> {
    let mut last = None;
    for _ in 0..50 {
        match sock.send(p) {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    Err(format!("send of {} bytes failed: {:?}", p.len(), last))
}

/// A UDP socket in the client namespace connected to `server:port` (v4 or v6 by `server`).
pub fn client_socket(lab: &Lab, v6: bool, port: u16) -> UdpSocket {
    lab.in_client(|| {
        let (bind, dst) = if v6 {
            (format!("[{CLIENT_V6}]:0"), format!("[{SERVER_V6}]:{port}"))
        } else {
            (format!("{CLIENT_V4}:0"), format!("{SERVER_V4}:{port}"))
        };
        let s = UdpSocket::bind(&bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        s.connect(&dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        s
    })
}

/// CPU time (utime + stime, in clock ticks) of the thread named `name` of process `pid`, read from
/// /proc/PID/task/TID/stat — the kernel's accounting, independent of anything the server reports.
pub fn thread_cpu_ticks(pid: u32, name: &str) -> Option<(u32, u64)> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let tid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        // After the parenthesised command name come the state (field 3) ... utime (14) and stime (15).
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
        let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        return Some((tid, utime + stime));
    }
    None
}

/// Clock ticks per second (the unit of [`thread_cpu_ticks`]).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as u64
}

/// An AF_PACKET socket on one of the lab's veth ends: sends whole frames and receives every frame that
/// arrives on that interface (ETH_P_ALL), tagged ones included — for tests that need frames the kernel's
/// UDP sockets cannot make or see (malformed ones, VLAN tags the test kernel cannot terminate).
pub struct RawPort(std::os::fd::OwnedFd);

impl RawPort {
    /// Opens the port on `side`'s veth end.
    pub fn open(lab: &Lab, side: Side) -> RawPort {
        use std::os::fd::FromRawFd;
        let ifname = std::ffi::CString::new(if side == Side::Client { lab.client_if() } else { lab.server_if() })
            .expect("interface name");
        let ns = lab.ns(side);
        in_netns(&ns, move || {
            // SAFETY: if_nametoindex reads a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert_ne!(ifindex, 0, "if_nametoindex: {}", std::io::Error::last_os_error());
            let all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, all.into())
            };
            assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
            // SAFETY: fd is a new descriptor nobody else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: bind reads a sockaddr_ll of the given size through a valid pointer.
            let rc = unsafe {
                libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "bind(AF_PACKET): {}", std::io::Error::last_os_error());
            // Room for every reply of a burst even when the test thread is slow to drain (a busy machine):
            // a reply dropped here would look like one the server never sent.
            let bytes: libc::c_int = 32 << 20;
            // SAFETY: setsockopt reads one c_int through a valid pointer.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
            RawPort(fd)
        })
    }

    /// Sends one frame as it is; the kernel's error if it refuses it (e.g. EMSGSIZE above the MTU).
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: send reads frame.len() bytes from a live slice.
        let n = unsafe { libc::send(std::os::fd::AsRawFd::as_raw_fd(&self.0), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        assert_eq!(n as usize, frame.len(), "short send on AF_PACKET");
        Ok(())
    }

    /// The next frame that arrived on the interface (not one this host sent), if any is waiting, with the
    /// VLAN tag control information the kernel took out of it (it moves a received tag into metadata before
    /// packet taps see the frame; PACKET_AUXDATA gives it back).
    /// Blocks until a frame is waiting or `timeout` passes; returns whether one is waiting.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let ts = rustix::time::Timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        poll(&mut fds, Some(&ts)).is_ok_and(|n| n > 0)
    }

    pub fn try_recv(&self, buf: &mut [u8]) -> Option<(usize, Option<u16>)> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int through a valid pointer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut control = [0u64; 16];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: msghdr is plain data; all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every pointer in `msg` refers to a live buffer of the length given.
            let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
            if n < 0 {
                return None;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut tci = None;
            // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, within msg_controllen.
            let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
            while !cmsg.is_null() {
                // SAFETY: `cmsg` points at a complete header inside the control buffer.
                let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
                if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA {
                    // SAFETY: a PACKET_AUXDATA message carries one tpacket_auxdata; read unaligned.
                    let aux: libc::tpacket_auxdata = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        tci = Some(aux.tp_vlan_tci);
                    }
                }
                // SAFETY: as above.
                cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
            }
            return Some((n as usize, tci));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Other server programs (built on shunt's API, e.g. examples/)
// ---------------------------------------------------------------------------------------------------------

impl Lab {
    /// Starts `bin`, a program that takes `shunt serve`'s flags (`--config`, `--interface`, ... through
    /// `shunt::control::cli::ServeArgs`), with `args` in the server namespace, `--report <file in lab dir>`
    /// added unless `args` has one, and waits up to [`READY_TIMEOUT`] for its `ready` line.
    pub fn spawn_program<S: AsRef<OsStr>>(&self, bin: &Path, args: &[S]) -> ServerProcess {
        let mut srv = self.spawn_program_unready(bin, args);
        srv.wait_ready(READY_TIMEOUT);
        srv
    }

    /// [`Lab::spawn_program`] without waiting for `ready` (a program expected to fail at start-up).
    pub fn spawn_program_unready<S: AsRef<OsStr>>(&self, bin: &Path, args: &[S]) -> ServerProcess {
        let mut args = to_strings(args);
        let report = match args.iter().position(|a| a == "--report") {
            Some(i) => args.get(i + 1).map(PathBuf::from),
            None => {
                let p = self.tmp_path("report", "json");
                args.push("--report".into());
                args.push(p.display().to_string());
                Some(p)
            }
        };
        let stdout_path = self.tmp_path("server", "stdout");
        let stderr_path = self.tmp_path("server", "stderr");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns()])
            .arg(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create server stdout file"))
            .stderr(File::create(&stderr_path).expect("create server stderr file"));
        if std::env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1");
        }
        die_with_parent(&mut cmd);
        let shown = format!("ip netns exec {} {} {}", self.server_ns(), bin.display(), args.join(" "));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        let pid = child.id();
        register(&format!("pid-{pid}"));
        ServerProcess { child: Some(child), pid, cmdline: shown, stdout_path, stderr_path, report_path: report }
    }
}

/// The source files cargo built `bin` from, as its dep-info file (`bin`.d) lists them (generated ones under
/// `target/` left out); just `examples/<name>.rs` when there is none.
fn sources_of(bin: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(bin.with_extension("d")) else {
        return vec![repo_path(&format!("examples/{name}.rs"))];
    };
    // target/<profile>/examples/<name> → target/
    let target = bin.ancestors().nth(3).unwrap_or(bin).to_path_buf();
    let deps = text.lines().next().and_then(|l| l.split_once(": ")).map_or("", |(_, d)| d).replace("\\ ", "\0");
    deps.split_whitespace().map(|p| PathBuf::from(p.replace('\0', " "))).filter(|p| !p.starts_with(&target)).collect()
}

/// `target/<profile>/examples/<name>`, next to the test's own executable (`target/<profile>/deps/<test>-…`):
/// `cargo build --release --examples` makes it (cargo hands integration tests the paths of binaries, not of
/// examples). Fails (never skips) when it is missing or older than one of its sources (cargo would rebuild it).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let build = if release { "cargo build --release --examples" } else { "cargo build --examples" };
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the examples first with `{build}` (integration tests cannot)",
        bin.display()
    );
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).expect("the example's modification time");
    for source in sources_of(&bin, name) {
        let changed = std::fs::metadata(&source).and_then(|m| m.modified()).map_or(true, |t| t > built);
        assert!(
            !changed,
            "{} is older than {} (or it is gone): rebuild it with `{build}`",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// What `sockperf ping-pong` printed: messages sent and received in the valid duration, and the summary
/// latency.
pub struct SockperfSummary {
    pub sent: u64,
    pub received: u64,
    pub usec: f64,
}

/// Parses the `[Valid Duration]` and `Summary:` lines of `sockperf ping-pong` output.
pub fn parse_sockperf(out: &str) -> Option<SockperfSummary> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let i = line.find(key)? + key.len();
        line[i..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    };
    let valid = out.lines().find(|l| l.contains("[Valid Duration]"))?;
    let sent = field(valid, "SentMessages=")?;
    let received = field(valid, "ReceivedMessages=")?;
    let summary = out.lines().find(|l| l.contains("Summary:"))?;
    let usec = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, unit)| *unit == "usec")
        .and_then(|(v, _)| v.parse::<f64>().ok())?;
    Some(SockperfSummary { sent, received, usec })
}

/// The latency stamp method `latency.stamp = "auto"` picks on this kernel, found by the same probes the
/// server runs (libbpf's helper probes): tests that assert stamps assert them according to it.
pub fn probed_stamp_method() -> shunt::steer::StampMethod {
    use shunt::steer::probe;
    let helper = |name: &str| probe::xdp_helper(probe::helper(name).expect("a probed helper").id);
    probe::best_stamp_method(&helper("bpf_xdp_adjust_meta"), &helper("bpf_xdp_adjust_head"))
}

/// A valid request frame for `spec` carrying `payload`, as `shunt::packet::write_request` builds it.
pub fn request_frame(spec: &shunt::packet::FlowSpec, payload: &[u8]) -> Vec<u8> {
    let off = spec.payload_offset();
    let mut frame = vec![0u8; off + payload.len()];
    frame[off..].copy_from_slice(payload);
    let n = shunt::packet::write_request(&mut frame, spec, payload.len()).expect("build request");
    frame.truncate(n);
    frame
}

/// Looks at a condition that cannot be blocked on (a log file, an HTTP endpoint) every `every` until `check`
/// returns `Some`, or `timeout` has passed (`None`). The pause between looks is the poll interval of a wait
/// with a deadline, not a synchronisation by sleeping.
pub fn poll_until<T>(timeout: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(every.min(left));
    }
}
