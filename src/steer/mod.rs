//! Steering, the XDP control plane: load the steering program, fill its maps, attach it to the interface as a bpf_link, read its
//! counters, and detach by dropping the link.
//!
//! The program is attached through a bpf_link rather than netlink so that it lives exactly as long as the
//! link's file descriptor: when the process exits, by any means including SIGKILL, the kernel closes the fd and
//! removes the program, and the interface goes back to the kernel stack. Nothing is ever steered into sockets
//! that no longer exist.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder};
use serde::Serialize;

use crate::sys;

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

/// The compiled program (bpf/shunt.bpf.c, built by build.rs).
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shunt.bpf.o"));
const PROGRAM: &str = "shunt_steer";
const PROGRAM_HW: &str = "shunt_steer_hw";

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
    /// A map or program the object must contain is missing.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
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

/// The loaded (not yet attached) steering program and handles on its maps.
pub struct XdpProgram {
    object: Object,
    program: &'static str,
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

fn map_handle(object: &Object, name: &'static str) -> Result<MapHandle, XdpError> {
    let map = object.maps().find(|m| m.name() == name).ok_or(XdpError::Missing(name))?;
    MapHandle::try_from(&map).map_err(|source| XdpError::Map { map: name, source })
}

impl XdpProgram {
    /// Opens and loads the embedded program into the kernel (the verifier runs here). libbpf's own messages,
    /// the verifier log among them, go to the `libbpf` tracing target at DEBUG.
    pub fn load(variant: ProgramVariant) -> Result<XdpProgram, XdpError> {
        route_libbpf_logs();
        let mut open = ObjectBuilder::default().open_memory(OBJECT).map_err(XdpError::Load)?;
        let wanted = match variant {
            ProgramVariant::Plain => PROGRAM,
            ProgramVariant::DeviceBound { .. } => PROGRAM_HW,
        };
        for mut p in open.progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            p.set_autoload(name == wanted);
            if let (true, ProgramVariant::DeviceBound { ifindex }) = (name == wanted, variant) {
                p.set_ifindex(ifindex);
                p.set_flags(libbpf_sys::BPF_F_XDP_DEV_BOUND_ONLY);
            }
        }
        let object = open.load().map_err(XdpError::Load)?;
        if !object.progs().any(|p| p.name() == wanted) {
            return Err(XdpError::Missing("steering program"));
        }
        Ok(XdpProgram {
            program: wanted,
            variant,
            xsks: map_handle(&object, "shunt_xsks")?,
            ports: map_handle(&object, "shunt_ports")?,
            counters: map_handle(&object, "shunt_counters")?,
            settings: map_handle(&object, "shunt_settings")?,
            object,
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
        let prog = self.object.progs().find(|p| p.name() == self.program).ok_or(XdpError::Missing("program"))?;
        let flags = match mode {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => 0,
        };
        let mode_name = mode.name();
        let fd = sys::create_xdp_link(prog.as_fd().as_raw_fd(), ifindex, flags).map_err(|source| {
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

fn read_counters(map: &MapHandle) -> Result<XdpCounters, XdpError> {
    let mut sums = [0u64; 4];
    for (slot, sum) in sums.iter_mut().enumerate() {
        let per_cpu = map
            .lookup_percpu(&(slot as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "shunt_counters", source })?
            .unwrap_or_default();
        *sum =
            per_cpu.iter().filter_map(|v| v.get(..8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))).sum();
    }
    Ok(XdpCounters { redirected: sums[0], passed: sums[1], malformed: sums[2], no_socket: sums[3] })
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
