//! Steering, the XDP control plane: load the steering program, fill its maps, attach it to the interface as a bpf_link, read its
//! counters, and detach by dropping the link.
//!
//! The program is attached through a bpf_link rather than netlink so that it lives exactly as long as the
//! link's file descriptor: when the process exits, by any means including SIGKILL, the kernel closes the fd and
//! removes the program, and the interface goes back to the kernel stack. Nothing is ever steered into sockets
//! that no longer exist.
//!
//! The program, its maps and its counter slots are reached through the skeleton that build.rs generates from
//! bpf/shunt.bpf.c (`sys::skel`): a map or program renamed in the C file is a compile error here, not a
//! failed lookup at start-up.

use std::{
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, MapHandle, MapMut,
};
use serde::Serialize;

use crate::sys::{
    self,
    skel::{types::shunt_counter, ShuntSkelBuilder},
};

/// Where the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): fails if the driver has no native XDP.
    Native,
    /// In the generic, skb-based hook (XDP_FLAGS_SKB_MODE): works everywhere, slower.
    Generic,
    /// Let the kernel choose: native where the driver supports it, generic otherwise.
    Auto,
}

impl AttachMode {
    /// The lowercase name used in reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Auto => "auto",
        }
    }
}

/// Which build of the steering program to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramVariant {
    /// Attachable in any mode; stamps the XDP-hook time only.
    Plain,
    /// Bound to one device (native mode only); also asks the driver for each packet's RX hardware timestamp
    /// (`bpf_xdp_metadata_rx_timestamp`).
    DeviceBound {
        /// The device's interface index.
        ifindex: u32,
    },
}

/// Bit in the settings map: stamp each redirected packet with the XDP-hook time (see `struct shunt_meta`).
pub const SETTING_STAMP_TIME: u32 = 1 << 0;

/// Errors from loading, configuring or attaching the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// libbpf could not open or load the object (the verifier log is in the debug output).
    #[error("loading the XDP program failed: {0} (SHUNT_LOG=libbpf=debug shows libbpf's log)")]
    Load(#[source] libbpf_rs::Error),
    /// A map update or lookup failed.
    #[error("XDP map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// The kernel refused to attach the program.
    #[error("attaching XDP in {mode} mode to {interface}: {source}{hint}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Requested mode.
        mode: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
        /// What usually causes it.
        hint: &'static str,
    },
}

/// Counters kept by the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XdpCounters {
    /// Packets redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Packets passed to the kernel because they were not ours (other protocols, ports, fragments).
    pub passed: u64,
    /// Packets that claimed to be IP/UDP with inconsistent headers; passed to the kernel, which drops them.
    pub malformed: u64,
    /// Packets for a served port on a queue with no socket; passed to the kernel.
    pub no_socket: u64,
}

/// The loaded (not yet attached) steering program and handles on its maps. It holds its own file descriptors
/// of the program and the maps, which keep them in the kernel; the skeleton and libbpf's object are gone once
/// [`XdpProgram::load`] returns.
pub struct XdpProgram {
    program: OwnedFd,
    /// The variant that was loaded.
    pub variant: ProgramVariant,
    xsks: MapHandle,
    ports: MapHandle,
    counters: MapHandle,
    settings: MapHandle,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram").finish_non_exhaustive()
    }
}

fn route_libbpf_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let print: libbpf_rs::PrintCallback = |_level, message| {
            tracing::debug!(target: "libbpf", "{}", message.trim_end());
        };
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
    });
}

/// A handle of its own (a duplicated fd) on one of the skeleton's maps; `name` is for the error only.
fn map_handle(map: &MapMut<'_>, name: &'static str) -> Result<MapHandle, XdpError> {
    MapHandle::try_from(map).map_err(|source| XdpError::Map { map: name, source })
}

impl XdpProgram {
    /// Opens and loads the embedded program into the kernel (the verifier runs here). libbpf's own messages,
    /// the verifier log among them, go to the `libbpf` tracing target at DEBUG.
    pub fn load(variant: ProgramVariant) -> Result<XdpProgram, XdpError> {
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let mut open = ShuntSkelBuilder::default().open(&mut storage).map_err(XdpError::Load)?;
        // Only the chosen variant is loaded (and verified).
        let device_bound = matches!(variant, ProgramVariant::DeviceBound { .. });
        open.progs.shunt_steer.set_autoload(!device_bound);
        open.progs.shunt_steer_hw.set_autoload(device_bound);
        if let ProgramVariant::DeviceBound { ifindex } = variant {
            open.progs.shunt_steer_hw.set_ifindex(ifindex);
            open.progs.shunt_steer_hw.set_flags(libbpf_sys::BPF_F_XDP_DEV_BOUND_ONLY);
        }
        let skel = open.load().map_err(XdpError::Load)?;
        let program = match variant {
            ProgramVariant::Plain => &skel.progs.shunt_steer,
            ProgramVariant::DeviceBound { .. } => &skel.progs.shunt_steer_hw,
        };
        let program = program.as_fd().try_clone_to_owned().map_err(|e| XdpError::Load(e.into()))?;
        Ok(XdpProgram {
            program,
            variant,
            xsks: map_handle(&skel.maps.shunt_xsks, "shunt_xsks")?,
            ports: map_handle(&skel.maps.shunt_ports, "shunt_ports")?,
            counters: map_handle(&skel.maps.shunt_counters, "shunt_counters")?,
            settings: map_handle(&skel.maps.shunt_settings, "shunt_settings")?,
        })
    }

    /// Marks `ports` as steered to AF_XDP.
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), XdpError> {
        for &port in ports {
            let key = u32::from(port).to_ne_bytes();
            self.ports
                .update(&key, &[1u8], MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_ports", source })?;
        }
        Ok(())
    }

    /// Writes the settings word (`SETTING_*` bits).
    pub fn set_settings(&self, bits: u32) -> Result<(), XdpError> {
        self.settings
            .update(&0u32.to_ne_bytes(), &bits.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "shunt_settings", source })
    }

    /// Registers the AF_XDP socket `fd` for receive queue `queue`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "shunt_xsks", source })
    }

    /// Reads the program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        read_counters(&self.counters)
    }

    /// A handle that reads the counters from another thread, independent of this program's lifetime.
    pub fn counters_reader(&self) -> Result<XdpCountersReader, XdpError> {
        MapHandle::try_from(&self.counters)
            .map(XdpCountersReader)
            .map_err(|source| XdpError::Map { map: "shunt_counters", source })
    }

    /// Attaches the program to `ifindex` as a bpf_link in the given mode. The program stays attached as long
    /// as the returned [`XdpLink`] (or the process) lives.
    pub fn attach(&self, interface: &str, ifindex: u32, mode: AttachMode) -> Result<XdpLink, XdpError> {
        let flags = match mode {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => 0,
        };
        let mode_name = mode.name();
        let fd = sys::create_xdp_link(self.program.as_raw_fd(), ifindex, flags).map_err(|source| {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    " (another XDP program is attached: remove it with `ip link set dev IF xdp off`)"
                }
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == AttachMode::Native => {
                    " (the driver may lack native XDP: try xdp.attach_mode = \"generic\" or \"auto\")"
                }
                Some(libc::EPERM) => " (needs CAP_NET_ADMIN and CAP_BPF)",
                _ => "",
            };
            XdpError::Attach { interface: interface.to_string(), mode: mode_name, source, hint }
        })?;
        Ok(XdpLink { _fd: fd, ifindex, mode })
    }
}

/// Reads the XDP program's counters from any thread (a duplicated map fd).
#[derive(Debug)]
pub struct XdpCountersReader(MapHandle);

impl XdpCountersReader {
    /// The counters now, summed over CPUs.
    pub fn read(&self) -> Result<XdpCounters, XdpError> {
        read_counters(&self.0)
    }
}

/// Reads the counters by the slots of `enum shunt_counter` (bpf/shunt.bpf.c), as the skeleton generates them
/// from the object's BTF. `XdpCounters` has one field per slot (see the test below).
fn read_counters(map: &MapHandle) -> Result<XdpCounters, XdpError> {
    let sum = |slot: shunt_counter| -> Result<u64, XdpError> {
        let per_cpu = map
            .lookup_percpu(&slot.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "shunt_counters", source })?
            .unwrap_or_default();
        Ok(per_cpu.iter().filter_map(|v| v.first_chunk::<8>()).map(|b| u64::from_ne_bytes(*b)).sum())
    };
    Ok(XdpCounters {
        redirected: sum(shunt_counter::SHUNT_REDIRECTED)?,
        passed: sum(shunt_counter::SHUNT_PASSED)?,
        malformed: sum(shunt_counter::SHUNT_MALFORMED)?,
        no_socket: sum(shunt_counter::SHUNT_NO_SOCKET)?,
    })
}

/// An attached program. Dropping it detaches the program from the interface.
#[derive(Debug)]
pub struct XdpLink {
    _fd: OwnedFd,
    /// The interface it is attached to.
    pub ifindex: u32,
    /// The mode it was attached in.
    pub mode: AttachMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_counters` reads four slots into four fields; a slot added to `enum shunt_counter` must get a field
    /// too. The enum and the map both come from the BPF object, so this also checks that the counters map has
    /// room for every slot. Opening the skeleton parses the embedded object only: no privileges needed.
    #[test]
    fn counters_cover_every_slot_of_the_program() {
        assert_eq!(
            shunt_counter::SHUNT_COUNTER_MAX.0,
            4,
            "bpf/shunt.bpf.c has a new counter slot: add it to XdpCounters and read_counters"
        );
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let open = ShuntSkelBuilder::default().open(&mut storage).expect("open the embedded BPF object");
        assert_eq!(open.maps.shunt_counters.max_entries(), shunt_counter::SHUNT_COUNTER_MAX.0);
    }
}
