//! The client side of the datapath: an [`XskPort`] in the client namespace, with shunt's own XDP program
//! steering replies to its source port, exchanges frames with the real server. Needs root.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{require_root_or_skip, Lab, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::{
    datapath::{BindMode, QueueSocket, SocketOptions, UmemParams, XskPort},
    packet::{self, FlowSpec},
    steer::{AttachMode, ProgramVariant, XdpProgram},
    sys,
};

const CLIENT_PORT: u16 = 47_000;
const COUNT: u64 = 2_000;

#[test]
fn af_xdp_client_exchanges_frames_with_the_server() {
    if !require_root_or_skip() {
        return;
    }
    let lab = Lab::new(1);
    let server = lab.spawn_server(&lab.serve_args(&[]));
    let client_if = lab.client_if();
    let (client_mac, server_mac) = (lab.client_mac(), lab.server_mac());
    // Resolve neighbours through the kernel first, so the server's replies have a destination MAC.
    let ping =
        lab.exec(common::Side::Client, &["ping", "-c", "1", "-W", "2", &SERVER_V4.to_string()], Duration::from_secs(5));
    assert!(ping.success(), "{}", ping.combined());

    let (answered, kicks) = lab.in_client(move || {
        let program = XdpProgram::load(ProgramVariant::Plain).unwrap();
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
            metadata_room: 0,
        })
        .unwrap();
        program.register_socket(0, socket.raw_fd()).unwrap();
        let ifindex = sys::interface_index(&client_if).unwrap();
        let _link = program.attach(&client_if, ifindex, AttachMode::Generic).unwrap();
        let mut port = XskPort::new(socket, 32);

        let flow = |seq: u64| {
            let (src, dst): (SocketAddr, SocketAddr) = if seq % 2 == 0 {
                ((CLIENT_V4, CLIENT_PORT).into(), (SERVER_V4, 9000).into())
            } else {
                ((CLIENT_V6, CLIENT_PORT).into(), (SERVER_V6, 9000).into())
            };
            FlowSpec { src_mac: client_mac, dst_mac: server_mac, vlan_tci: None, src, dst }
        };
        let mut next = 0u64;
        let mut answered = vec![false; COUNT as usize];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < COUNT && Instant::now() < deadline {
            if next < COUNT && next - got < 64 {
                port.send(8, |_, buf| {
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
            }
            port.receive(|frame| {
                let d = packet::parse(frame).unwrap().expect("a UDP reply");
                assert_eq!(d.dst().port(), CLIENT_PORT);
                let p = d.payload();
                let seq = u64::from_be_bytes(p[..8].try_into().unwrap());
                assert_eq!(p.len(), 8 + (seq % 200) as usize, "reply {seq} has the request's length");
                assert_eq!(d.src(), flow(seq).dst, "reply {seq} comes from the server");
                if !std::mem::replace(&mut answered[seq as usize], true) {
                    got += 1;
                }
            });
            port.service();
        }
        (got, port.tx_kicks)
    });
    let done = server.stop();
    done.assert_clean_exit();
    assert_eq!(answered, COUNT, "replies received by the AF_XDP client");
    assert!(kicks > 0);
    assert_eq!(done.report_u64("tx_packets"), COUNT);
}
