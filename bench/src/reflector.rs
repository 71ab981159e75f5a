//! `shunt-bench xdp-reflector`: runs shunt's in-kernel server (`shunt::in_kernel`, bpf/answer.bpf.c) on an
//! interface until SIGINT/SIGTERM, then prints its counters: the "server inside the kernel" that the
//! comparison measures shunt against. It answers from the XDP hook with XDP_TX, echo or sockperf's protocol,
//! and writes a full UDP checksum, so the client may keep its TX checksum offload.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use shunt::{
    in_kernel::{InKernelHandler, InKernelServer},
    steer::AttachMode,
    sys,
};

/// Runs the in-kernel server on `interface` for UDP `port` until signalled. Over veth, native mode delivers
/// XDP_TX replies only when the peer has an XDP program of its own; generic mode has no such condition.
pub fn run(interface: &str, port: u16, sockperf: bool, generic: bool) -> Result<()> {
    let ifindex = sys::interface_index(interface).with_context(|| format!("interface {interface}"))?;
    let handler = if sockperf { InKernelHandler::Sockperf } else { InKernelHandler::Echo };
    let server = InKernelServer::load(handler).context("loading the in-kernel server (needs root)")?;
    server.set_ports(&[port]).context("serving the port")?;
    let mode = if generic { AttachMode::Generic } else { AttachMode::Native };
    let link = server.attach(interface, ifindex, mode).with_context(|| format!("attaching to {interface}"))?;
    eprintln!("xdp-reflector: ready on {interface} port {port} ({} mode, {})", mode.name(), handler.name());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(link);
    let c = server.counters().context("reading the counters")?;
    println!(
        "xdp-reflector: answered {} dropped {} passed {} (dropped: {} by the handler, {} bad checksum; passed: {} \
         not ours, {} malformed, {} too long)",
        c.answered,
        c.dropped_by_handler + c.bad_checksum,
        c.passed + c.malformed + c.too_long,
        c.dropped_by_handler,
        c.bad_checksum,
        c.passed,
        c.malformed,
        c.too_long
    );
    Ok(())
}
