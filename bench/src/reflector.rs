//! `shunt-bench xdp-reflector`: loads the in-kernel XDP responder (bpf/reflect.bpf.c) on an interface and
//! keeps it attached until SIGINT/SIGTERM, then prints its counters. For comparisons only.
//!
//! The object, its program and maps, and `struct reflect_config` come from the skeleton build.rs generates.

use std::{
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags,
};
use shunt::sys;

/// The generated skeleton of bpf/reflect.bpf.c (build.rs).
#[allow(clippy::all, clippy::undocumented_unsafe_blocks, unreachable_pub)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/reflect.skel.rs"));
}

use skel::{types::reflect_config, ReflectSkelBuilder};

/// Slots of `reflect_counters`, as bpf/reflect.bpf.c documents them (its counters are plain numbers there).
const ANSWERED: u32 = 0;
const DROPPED: u32 = 1;
const PASSED: u32 = 2;

// The map value is written field by field below: `struct reflect_config` must be exactly those two u32s.
const _: () = assert!(std::mem::size_of::<reflect_config>() == 8);

/// Runs the responder on `interface` for UDP `port` until signalled.
pub fn run(interface: &str, port: u16, sockperf: bool, generic: bool) -> Result<()> {
    let ifindex = sys::interface_index(interface).with_context(|| format!("interface {interface}"))?;
    let mut storage = MaybeUninit::uninit();
    let skel = ReflectSkelBuilder::default()
        .open(&mut storage)
        .context("opening the reflector object")?
        .load()
        .context("loading the reflector (needs root)")?;
    let config = reflect_config { port: u32::from(port), sockperf: u32::from(sockperf) };
    let value = [config.port.to_ne_bytes(), config.sockperf.to_ne_bytes()].concat();
    skel.maps
        .reflect_config
        .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
        .context("writing the reflector config")?;
    let flags = if generic { sys::XDP_FLAGS_SKB_MODE } else { sys::XDP_FLAGS_DRV_MODE };
    let link = sys::create_xdp_link(skel.progs.reflect.as_fd().as_raw_fd(), ifindex, flags)
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
    let sum = |slot: u32| -> Result<u64> {
        let per_cpu = skel.maps.reflect_counters.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)?.unwrap_or_default();
        Ok(per_cpu.iter().filter_map(|v| v.first_chunk::<8>()).map(|b| u64::from_ne_bytes(*b)).sum())
    };
    println!("xdp-reflector: answered {} dropped {} passed {}", sum(ANSWERED)?, sum(DROPPED)?, sum(PASSED)?);
    Ok(())
}
