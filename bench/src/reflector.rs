//! `shunt-bench xdp-reflector`: loads the in-kernel XDP responder (bpf/reflect.bpf.c) on an interface and
//! keeps it attached until SIGINT/SIGTERM, then prints its counters. For comparisons only.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{MapCore, MapFlags, ObjectBuilder};
use shunt::sys;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reflect.bpf.o"));

/// Runs the responder on `interface` for UDP `port` until signalled.
pub fn run(interface: &str, port: u16, sockperf: bool, generic: bool) -> Result<()> {
    let ifindex = sys::interface_index(interface).with_context(|| format!("interface {interface}"))?;
    let object = ObjectBuilder::default()
        .open_memory(OBJECT)
        .context("opening the reflector object")?
        .load()
        .context("loading the reflector (needs root)")?;
    let config = object.maps().find(|m| m.name() == "reflect_config").ok_or(anyhow!("no reflect_config map"))?;
    let mut value = Vec::with_capacity(8);
    value.extend_from_slice(&u32::from(port).to_ne_bytes());
    value.extend_from_slice(&u32::from(sockperf).to_ne_bytes());
    config.update(&0u32.to_ne_bytes(), &value, MapFlags::ANY).context("writing the reflector config")?;
    let prog = object.progs().find(|p| p.name() == "reflect").ok_or(anyhow!("no reflect program"))?;
    let flags = if generic { sys::XDP_FLAGS_SKB_MODE } else { sys::XDP_FLAGS_DRV_MODE };
    let link = sys::create_xdp_link(prog.as_fd().as_raw_fd(), ifindex, flags)
        .with_context(|| format!("attaching the reflector to {interface}"))?;
    eprintln!("xdp-reflector: ready on {interface} port {port} ({} mode)", if generic { "generic" } else { "native" });

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(link);
    let counters = object.maps().find(|m| m.name() == "reflect_counters").ok_or(anyhow!("no counters map"))?;
    let mut sums = [0u64; 3];
    for (slot, sum) in sums.iter_mut().enumerate() {
        let per_cpu = counters.lookup_percpu(&(slot as u32).to_ne_bytes(), MapFlags::ANY)?.unwrap_or_default();
        *sum =
            per_cpu.iter().filter_map(|v| v.get(..8)).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))).sum();
    }
    println!("xdp-reflector: answered {} dropped {} passed {}", sums[0], sums[1], sums[2]);
    Ok(())
}
