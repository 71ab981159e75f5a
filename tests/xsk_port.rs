//! The client side of the datapath: an [`XskPort`] in the client namespace, with shunt's own XDP program
//! steering replies to its source port, exchanges frames with the real server. Needs root.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{Lab, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::{
    client::XskPort,
    datapath::afxdp::{BindMode, QueueSocket, SocketOptions, UmemParams},
    packet::{self, FlowSpec},
    steer::{AttachMode, ProgramVariant, StampMethod, XdpProgram},
    sys,
};

const CLIENT_PORT: u16 = 47_000;
const COUNT: u64 = 2_000;
/// Frames per send: a copy-mode TX kick sends at most 32, so each full batch needs exactly one kick.
const BATCH: usize = 32;
/// Requests outstanding at most.
const WINDOW: u64 = 128;

/// What the client saw.
struct ClientRun {
    /// Distinct requests answered.
    answered: u64,
    /// Replies to a request already answered.
    duplicates: u64,
    /// `send` calls that put at least one frame on the TX ring.
    send_batches: u64,
    /// Requests sent.
    sent: u64,
    /// The port's TX wake-up system calls.
    kicks: u64,
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn af_xdp_client_exchanges_frames_with_the_server() {
    common::require_lab();
    let lab = Lab::new(1);
    let server = lab.spawn_server(&lab.serve_args(&[]));
    let client_if = lab.client_if();
    let (client_mac, server_mac) = (lab.client_mac(), lab.server_mac());
    // Resolve neighbours through the kernel first, so the server's replies have a destination MAC.
    let ping =
        lab.exec(common::Side::Client, &["ping", "-c", "1", "-W", "2", &SERVER_V4.to_string()], Duration::from_secs(5));
    assert!(ping.success(), "{}", ping.combined());

    let run = lab.in_client(move || {
        let program = XdpProgram::load(ProgramVariant::Plain, StampMethod::None).unwrap();
        program.set_ports(&[CLIENT_PORT]).unwrap();
        let socket = QueueSocket::open(&SocketOptions {
            interface: client_if.clone(),
            queue: 0,
            bind_mode: BindMode::Copy,
            umem: UmemParams {
                frame_count: 4096,
                fill_ring: 1024,
                completion_ring: 1024,
                rx_ring: 1024,
                tx_ring: 1024,
                ..Default::default()
            },
        })
        .unwrap();
        program.register_socket(0, socket.raw_fd()).unwrap();
        let ifindex = sys::interface_index(&client_if).unwrap();
        let _link = program.attach(&client_if, ifindex, AttachMode::Generic).unwrap();
        let mut port = XskPort::new(socket, BATCH);

        let flow = |seq: u64| {
            let (src, dst): (SocketAddr, SocketAddr) = if seq.is_multiple_of(2) {
                ((CLIENT_V4, CLIENT_PORT).into(), (SERVER_V4, 9000).into())
            } else {
                ((CLIENT_V6, CLIENT_PORT).into(), (SERVER_V6, 9000).into())
            };
            FlowSpec { src_mac: client_mac, dst_mac: server_mac, vlan_tci: None, src, dst }
        };
        let mut next = 0u64;
        let mut answered = vec![false; COUNT as usize];
        let (mut got, mut duplicates, mut send_batches) = (0, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < COUNT && Instant::now() < deadline {
            // Whole batches only (the last one excepted), so that the kicks can be counted against them.
            let room = WINDOW - (next - got);
            if next < COUNT && room >= (COUNT - next).min(BATCH as u64) {
                let queued = port.send(BATCH, |_, buf| {
                    if next >= COUNT {
                        return None;
                    }
                    let spec = flow(next);
                    let off = spec.payload_offset();
                    buf[off..off + 8].copy_from_slice(&next.to_be_bytes());
                    let n = packet::write_request(buf, &spec, 8 + (next % 200) as usize).ok()?;
                    next += 1;
                    Some(n)
                });
                if queued > 0 {
                    send_batches += 1;
                }
            }
            port.receive(|frame| {
                let d = packet::parse(frame).unwrap().expect("a UDP reply");
                assert_eq!(d.dst().port(), CLIENT_PORT);
                let p = d.payload();
                let seq = u64::from_be_bytes(p[..8].try_into().unwrap());
                assert_eq!(p.len(), 8 + (seq % 200) as usize, "reply {seq} has the request's length");
                assert_eq!(d.src(), flow(seq).dst, "reply {seq} comes from the server");
                if std::mem::replace(&mut answered[seq as usize], true) {
                    duplicates += 1;
                } else {
                    got += 1;
                }
            });
            port.service();
        }
        ClientRun { answered: got, duplicates, send_batches, sent: next, kicks: port.tx_kicks }
    });
    let done = server.stop();
    done.assert_clean_exit();
    // The exact reply set: every request answered once, nothing else, and the server saw exactly these.
    assert_eq!(run.sent, COUNT, "requests the AF_XDP client sent");
    assert_eq!(run.answered, COUNT, "distinct requests answered, as seen by the AF_XDP client\n{}", done.describe());
    assert_eq!(run.duplicates, 0, "replies to requests already answered\n{}", done.describe());
    for key in ["rx_packets", "tx_packets", "workers.0.rx_packets", "workers.0.tx_packets"] {
        assert_eq!(done.report_u64(key), COUNT, "server's `{key}`\n{}", done.describe());
    }
    for key in ["workers.0.dropped_malformed", "workers.0.dropped_bad_checksum", "workers.0.dropped_by_handler"] {
        assert_eq!(done.report_u64(key), 0, "server's `{key}`\n{}", done.describe());
    }
    // The client's kicks are per batch, not per frame: in copy mode every batch of up to 32 frames needs exactly
    // one, plus a rare re-kick from `service` when the kernel left frames on the ring.
    let batches = run.send_batches;
    assert_eq!(batches, COUNT.div_ceil(BATCH as u64), "send batches of {BATCH} for {COUNT} requests");
    assert!(
        (batches..=batches + 8).contains(&run.kicks),
        "{} TX kicks for {COUNT} frames in {batches} batches of up to {BATCH}: one per batch expected",
        run.kicks
    );
    eprintln!("AF_XDP client: {COUNT} requests in {batches} batches, {} TX kicks, all {COUNT} answered", run.kicks);
}
