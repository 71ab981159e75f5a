//! Steering by destination address, in the lab, through the real server: a datagram to a served port but to
//! an address the server does not serve (traffic a host forwards, to a pod say) is left to the kernel and
//! counted as `other_address`, never answered, while requests to the served addresses are answered; by default
//! the served addresses are the interface's own, followed as they change; with `xdp.addresses` only the listed
//! ones are served. The client's kernel sends the "forwarded" datagrams to the server's MAC through permanent
//! neighbour entries, as a router's or a node's neighbours would.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{require_lab, Lab, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};

const PORT: u16 = 9000;
/// Addresses in the lab's prefixes that the server's interface does not have (until a test adds them).
const OTHER_V4: &str = "198.18.0.77";
const OTHER_V6: &str = "2001:2::77";
/// Datagrams sent to each address that must not be answered.
const UNSERVED: usize = 10;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Unconnected client sockets (one per family) in the client namespace, with permanent neighbour entries that
/// send [`OTHER_V4`] and [`OTHER_V6`] to the server's MAC.
struct Client {
    v4: UdpSocket,
    v6: UdpSocket,
}

impl Client {
    fn new(lab: &Lab) -> Client {
        for (family, addr) in [("-4", OTHER_V4), ("-6", OTHER_V6)] {
            let mac = lab.server_mac_str();
            let cif = lab.client_if();
            let argv = ["ip", family, "neigh", "replace", addr, "lladdr", &mac, "dev", &cif, "nud", "permanent"];
            lab.exec(Side::Client, &argv, Duration::from_secs(5)).expect_success();
        }
        lab.in_client(|| Client {
            v4: UdpSocket::bind((CLIENT_V4, 0)).expect("bind the IPv4 client socket"),
            v6: UdpSocket::bind((CLIENT_V6, 0)).expect("bind the IPv6 client socket"),
        })
    }

    fn socket(&self, dst: IpAddr) -> &UdpSocket {
        if dst.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        }
    }

    fn send(&self, dst: IpAddr, payload: &[u8]) {
        self.socket(dst).send_to(payload, (dst, PORT)).unwrap_or_else(|e| panic!("send to {dst}: {e}"));
    }

    /// Sends one request to `dst` and waits (10 s at most) for its reply; every other datagram received on
    /// the way, and whatever is queued on either socket once the reply came, is returned. One queue answers
    /// in order, so once the reply is in, every earlier request has been answered or never will be.
    fn sentinel(&self, dst: IpAddr, payload: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.send(dst, payload);
        let sock = self.socket(dst);
        let mut others = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if &buf[..n] == payload && from == SocketAddr::new(dst, PORT) => break,
                Ok((n, from)) => others.push((from, buf[..n].to_vec())),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("receiving the reply to the sentinel to {dst}: {e}"),
            }
            assert!(Instant::now() < deadline, "no reply to the sentinel sent to {dst} within 10 s");
        }
        for s in [&self.v4, &self.v6] {
            s.set_nonblocking(true).unwrap();
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                others.push((from, buf[..n].to_vec()));
            }
            s.set_nonblocking(false).unwrap();
        }
        others
    }

    /// Sends [`UNSERVED`] requests to each of `unserved`, then a sentinel to the server's IPv4 and IPv6
    /// address; asserts that none of the former was answered.
    fn send_unserved(&self, unserved: &[IpAddr]) {
        for dst in unserved {
            for i in 0..UNSERVED {
                self.send(*dst, format!("to {dst}, not served, {i}").as_bytes());
            }
        }
        let mut got = self.sentinel(SERVER_V4.into(), b"sentinel v4");
        got.extend(self.sentinel(SERVER_V6.into(), b"sentinel v6"));
        assert!(
            got.is_empty(),
            "{} datagrams to addresses that are not served were answered: {}",
            got.len(),
            shown(&got)
        );
    }
}

/// Received datagrams, for messages: source and payload as text.
fn shown(got: &[(SocketAddr, Vec<u8>)]) -> String {
    got.iter().map(|(from, p)| format!("{from} {:?}", String::from_utf8_lossy(p))).collect::<Vec<_>>().join("; ")
}

/// `config/lab.toml` with `lines` added to its `[xdp]` table.
fn config_with_xdp(lab: &Lab, lines: &str) -> String {
    let base = lab.lab_config_with(&[]);
    let text = std::fs::read_to_string(&base).unwrap();
    assert!(text.contains("\n[xdp]\n"), "config/lab.toml has no [xdp] table");
    std::fs::write(&base, text.replacen("\n[xdp]\n", &format!("\n[xdp]\n{lines}\n"), 1)).unwrap();
    base.display().to_string()
}

/// Whether a log line about the served addresses changing lists `addr` in its `field` (`added`, `removed`).
fn logged_change(stderr: &str, field: &str, addr: &str) -> bool {
    let key = format!("{field}=[");
    stderr.lines().filter(|l| l.contains("served destination addresses changed")).any(|l| {
        l.split_once(&key)
            .and_then(|(_, rest)| rest.split_once(']'))
            .is_some_and(|(list, _)| list.split(", ").any(|a| a == addr))
    })
}

fn wait_logged(srv: &common::ServerProcess, field: &str, addr: &str) {
    let logged = common::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        logged_change(&srv.stderr_text(), field, addr).then_some(())
    });
    assert!(logged.is_some(), "the server did not log {addr} as {field} within 10 s\n{}", srv.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_served_port_at_an_address_the_server_does_not_have_is_left_to_the_kernel() {
    require_lab();
    let lab = Lab::new(1);
    let client = Client::new(&lab);
    let unserved = [ip(OTHER_V4), ip(OTHER_V6)];
    for mode in ["afxdp", "in-kernel"] {
        let srv = lab.spawn_server(&lab.serve_args(&["--quiet", "--mode", mode]));
        assert!(
            srv.stderr_text().contains("followed as they change"),
            "the server should say it follows the interface's addresses\n{}",
            srv.describe()
        );
        client.send_unserved(&unserved);
        let fin = srv.stop();
        fin.assert_clean_exit();
        let not_served = (UNSERVED * unserved.len()) as u64;
        if mode == "in-kernel" {
            assert_eq!(fin.report_u64("in_kernel.other_address"), not_served, "{}", fin.describe());
            assert_eq!(fin.report_u64("in_kernel.answered"), 2, "{}", fin.describe());
        } else {
            assert_eq!(fin.report_u64("xdp.other_address"), not_served, "{}", fin.describe());
            assert_eq!(fin.report_u64("xdp.redirected"), 2, "only the sentinels reach the worker\n{}", fin.describe());
            assert_eq!(fin.report_u64("workers.0.rx_packets"), 2, "{}", fin.describe());
            assert_eq!(fin.report_u64("tx_packets"), 2, "{}", fin.describe());
        }
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn with_xdp_addresses_only_the_listed_addresses_are_served() {
    require_lab();
    let lab = Lab::new(1);
    let client = Client::new(&lab);
    // The interface has 198.18.0.1 and 2001:2::1; only the IPv4 one is listed.
    let config = config_with_xdp(&lab, &format!("addresses = [\"{SERVER_V4}\"]"));
    let srv = lab.spawn_server(&["serve", "--config", &config, "--interface", &lab.server_if(), "--quiet"]);
    assert!(srv.stderr_text().contains("fixed for the run"), "{}", srv.describe());
    for i in 0..UNSERVED {
        client.send(SERVER_V6.into(), format!("to the interface's unlisted address, {i}").as_bytes());
    }
    let got = client.sentinel(SERVER_V4.into(), b"sentinel v4");
    assert!(got.is_empty(), "{} datagrams to an unlisted address were answered: {}", got.len(), shown(&got));
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("xdp.other_address"), UNSERVED as u64, "{}", fin.describe());
    assert_eq!(fin.report_u64("xdp.redirected"), 1, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.rx_packets"), 1, "{}", fin.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn addresses_added_and_removed_while_running_are_followed() {
    require_lab();
    let lab = Lab::new(1);
    let client = Client::new(&lab);
    let srv = lab.spawn_server(&lab.serve_args(&["--quiet"]));
    let (sns, sif) = (lab.server_ns(), lab.server_if());
    let addr = |op: &str, family: &str, a: &str| {
        let mut argv = vec!["ip", "-n", &sns, family, "addr", op, a, "dev", &sif];
        if family == "-6" && op == "add" {
            argv.push("nodad");
        }
        common::run_cmd(argv.as_slice(), Duration::from_secs(5)).expect_success();
    };
    // Added: served once the server has seen the notification.
    addr("add", "-4", &format!("{OTHER_V4}/32"));
    addr("add", "-6", &format!("{OTHER_V6}/128"));
    wait_logged(&srv, "added", OTHER_V4);
    wait_logged(&srv, "added", OTHER_V6);
    for dst in [ip(OTHER_V4), ip(OTHER_V6)] {
        let got = client.sentinel(dst, format!("to {dst}, added while running").as_bytes());
        assert!(got.is_empty(), "unexpected datagrams: {}", shown(&got));
    }
    // Removed: left to the kernel again.
    addr("del", "-4", &format!("{OTHER_V4}/32"));
    addr("del", "-6", &format!("{OTHER_V6}/128"));
    wait_logged(&srv, "removed", OTHER_V4);
    wait_logged(&srv, "removed", OTHER_V6);
    client.send_unserved(&[ip(OTHER_V4), ip(OTHER_V6)]);
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("xdp.other_address"), 2 * UNSERVED as u64, "{}", fin.describe());
    // Two requests to the added addresses, two sentinels.
    assert_eq!(fin.report_u64("xdp.redirected"), 4, "{}", fin.describe());
    assert_eq!(fin.report_u64("tx_packets"), 4, "{}", fin.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn an_interface_without_addresses_stops_start_up_unless_they_are_listed() {
    require_lab();
    let lab = Lab::new(1);
    // A NIC under a VLAN, bond or bridge device has no address of its own: by default nothing would be served.
    let sif = lab.server_if();
    lab.exec(Side::Server, &["ip", "addr", "flush", "dev", &sif], Duration::from_secs(5)).expect_success();
    let fin = lab.run_server_expect_exit(&lab.serve_args(&["--cores", "1"]), Duration::from_secs(30));
    assert_eq!(fin.code(), Some(2), "{}", fin.describe());
    assert!(
        fin.stderr.contains("`xdp.addresses`") && fin.stderr.contains("has no IPv4 or IPv6 address"),
        "the error must name the key and say why\n{}",
        fin.describe()
    );
    lab.assert_no_xdp_within(Duration::from_secs(1));
    // Listed, the same addresses are served even though the interface does not hold them.
    let cfg = config_with_xdp(&lab, &format!("addresses = [\"{SERVER_V4}\"]\n"));
    let srv = lab.spawn_server(&["serve", "--config", &cfg, "--interface", &sif, "--cores", "1", "--quiet"]);
    let fin = srv.stop();
    fin.assert_clean_exit();
}
