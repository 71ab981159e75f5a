//! Supervision of the workers, in the lab: a handler that panics (examples/panic_on_magic.rs, an echo server
//! whose handler panics on the payload `shunt-test-panic`) stops the whole server, on either datapath. The
//! process exits by itself with code 3 (`cli::EXIT_WORKER_DIED`) and the panic message on stderr, `/ready`
//! stops answering 200 before it is gone, the report names the dead worker, and no XDP program is left on
//! the interface. A handler factory that panics (a worker that dies before it is ready) fails start-up the
//! same way, without a hang.
//!
//! The tests build nothing: they run `target/<profile>/examples/panic_on_magic`, which
//! `cargo build --release --examples` makes (`make test` does).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;

/// The payload prefix that makes the example's handler panic, and the message it panics with.
const MAGIC: &[u8] = b"shunt-test-panic";
const PANIC_MESSAGE: &str = "panic_on_magic: the magic payload arrived";
/// `shunt::control::cli::EXIT_WORKER_DIED`.
const EXIT_WORKER_DIED: i32 = shunt::control::cli::EXIT_WORKER_DIED as i32;
const METRICS: &str = "127.0.0.1:9464";
/// Echoes answered before the magic payload is sent.
const ECHOES: u64 = 500;
/// How long the server may take to exit once its worker died (it takes milliseconds).
const EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// `GET path` on the server's metrics endpoint, from inside the server namespace: `Some((status, body))`, or
/// `None` when nothing listens any more (the process is gone).
fn get(lab: &Lab, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    lab.in_server(move || {
        let mut s = TcpStream::connect(METRICS).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string()))
    })
}

/// What the readiness watcher saw last before it stopped.
#[derive(Debug)]
enum Seen {
    /// `/ready` answered this non-200 status and body.
    NotReady(u16, String),
    /// Nothing listened any more: the process was gone before a poll saw the 503.
    Gone,
    /// The watcher was told to stop while the server still answered 200.
    StillReady,
}

/// Polls `/ready` (a fresh connection each time, 2 ms apart) from a thread in the server namespace until it
/// answers anything but 200, nothing listens, `stop` is set, or a minute has passed.
fn watch_readiness(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    lab.spawn_in_server(move || {
        let seen = common::poll_until(Duration::from_secs(60), Duration::from_millis(2), || {
            if stop.load(Relaxed) {
                return Some(Seen::StillReady);
            }
            let answer = (|| {
                let mut s = TcpStream::connect(METRICS).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
                Some((status, text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string()))
            })();
            match answer {
                None => Some(Seen::Gone),
                Some((200, _)) => None,
                Some((status, body)) => Some(Seen::NotReady(status, body)),
            }
        });
        seen.unwrap_or(Seen::StillReady)
    })
}

/// Starts the example with `extra` flags, checks that it echoes and is ready, sends the magic payload and
/// checks how the server ended (exit code, stderr, readiness, report). Returns how it finished.
fn panic_while_serving(lab: &Lab, extra: &[&str]) -> Finished {
    let bin = example_bin("panic_on_magic");
    let mut args = vec![
        "--config".to_string(),
        lab_config().display().to_string(),
        "--interface".to_string(),
        lab.server_if(),
        "--metrics".to_string(),
        METRICS.to_string(),
        "--quiet".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut srv = lab.spawn_program(&bin, &args);

    assert_eq!(get(lab, "/ready"), Some((200, "ready\n".to_string())), "{}", srv.describe());
    let (status, metrics) = get(lab, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(status, 200);
    assert!(metrics.contains("\nshunt_ready 1\n"), "{metrics}");
    assert!(metrics.contains("shunt_worker_up{queue=\"0\"} 1\n"), "{metrics}");

    let sock: UdpSocket = client_socket(lab, false, 9000);
    let st = echo_exchange(&sock, 0..ECHOES, echo_size, &EchoOpts::default())
        .unwrap_or_else(|e| panic!("echo before the panic: {e}\n{}", srv.describe()));
    assert_eq!(st.answered, ECHOES);

    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = watch_readiness(lab, stop_watching.clone());
    let mut magic = MAGIC.to_vec();
    magic.extend_from_slice(b" from tests/supervision.rs");
    let sent = Instant::now();
    send_retrying(&sock, &magic).unwrap_or_else(|e| panic!("sending the magic payload: {e}"));
    let fin = srv.wait_exit_within(EXIT_DEADLINE);
    stop_watching.store(true, Relaxed);
    let seen = watcher.join().expect("the readiness watcher");
    let Some(fin) = fin else {
        let out = srv.kill();
        panic!("the server did not exit within {EXIT_DEADLINE:?} of the magic payload (killed)\n{}", out.describe());
    };
    println!("exited {:?} after the magic payload; /ready last seen: {seen:?}", sent.elapsed());

    assert_eq!(fin.code(), Some(EXIT_WORKER_DIED), "exit code\n{}", fin.describe());
    assert!(fin.stderr.contains(PANIC_MESSAGE), "no panic message on stderr\n{}", fin.describe());
    assert!(
        fin.stderr.contains("shunt: the worker of queue 0 panicked: panic_on_magic"),
        "no final word naming the queue\n{}",
        fin.describe()
    );
    match &seen {
        Seen::NotReady(status, body) => {
            assert_eq!(*status, 503, "{body}");
            assert!(body.contains("queue 0"), "{body}");
        }
        Seen::Gone => {} // exited before a poll came round: gone is not ready either
        Seen::StillReady => panic!("/ready still answered 200 when the process had exited\n{}", fin.describe()),
    }
    let died = fin.workers()[0]["died"].as_str().unwrap_or_default();
    assert!(died.contains(PANIC_MESSAGE), "the report does not name the death\n{}", fin.describe());
    assert!(get(lab, "/ready").is_none(), "something still listens on the metrics port");
    fin
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_handler_panic_on_af_xdp_stops_the_server_with_exit_3_and_detaches() {
    require_lab();
    let lab = Lab::new(1);
    panic_while_serving(&lab, &[]);
    lab.assert_no_xdp_within(Duration::from_secs(5));
    let text = lab.server_link_text();
    assert!(!text.contains("prog/xdp") && !text.contains("xdpgeneric") && !text.contains(" xdp "), "{text}");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_handler_panic_on_kernel_sockets_stops_the_server_with_exit_3() {
    require_lab();
    let lab = Lab::new(1);
    let fin = panic_while_serving(&lab, &["--mode", "socket"]);
    assert_eq!(fin.report()["mode"].as_str(), Some("socket"), "{}", fin.describe());
    assert!(lab.server_xdp().is_none(), "{}", lab.server_link_text());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_handler_factory_panic_fails_start_up_with_exit_3_and_nothing_attached() {
    require_lab();
    let lab = Lab::new(1);
    let bin = example_bin("panic_on_magic");
    let args = [
        "--config".to_string(),
        lab_config().display().to_string(),
        "--interface".to_string(),
        lab.server_if(),
        "--panic-in-factory".to_string(),
    ];
    let mut srv = lab.spawn_program_unready(&bin, &args);
    let Some(fin) = srv.wait_exit_within(READY_TIMEOUT) else {
        let out = srv.kill();
        panic!("start-up hung with a dead worker (killed after {READY_TIMEOUT:?})\n{}", out.describe());
    };
    assert_eq!(fin.code(), Some(EXIT_WORKER_DIED), "{}", fin.describe());
    assert!(
        fin.stderr.contains("the worker of queue 0 died during start-up")
            && fin.stderr.contains("the handler factory for queue 0 refuses"),
        "{}",
        fin.describe()
    );
    assert!(!contains_word(&fin.stderr, "ready"), "it logged ready\n{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn start_up_warns_about_receive_queues_without_a_worker() {
    require_lab();
    let lab = Lab::new(2);
    // Two receive queues, a worker on queue 0 only: queue 1's traffic is the kernel's, and shunt says so.
    let srv =
        lab.spawn_server(&lab.serve_args(&["--queues", "0", "--cores", "1", "--attach-mode", "native", "--quiet"]));
    let stderr = srv.stderr_text();
    assert!(
        stderr.contains("WARN") && stderr.contains("on queues [1] go to the kernel stack"),
        "no warning naming queue 1\n{}",
        srv.describe()
    );
    srv.stop().assert_clean_exit();
    // Every queue served: no such warning.
    let srv =
        lab.spawn_server(&lab.serve_args(&["--queues", "0,1", "--cores", "0,1", "--attach-mode", "native", "--quiet"]));
    let stderr = srv.stderr_text();
    assert!(!stderr.contains("go to the kernel stack"), "warned with every queue served\n{}", srv.describe());
    srv.stop().assert_clean_exit();
}
