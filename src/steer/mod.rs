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

pub mod probe;

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

/// How the steering program stamps each redirected packet with the XDP-hook time (`struct shunt_meta`), so that
/// a worker can measure how long the packet waited in its RX ring. Chosen before the program is loaded: it is a
/// load-time constant of the program (`shunt_stamp_method`), and the verifier prunes the methods not chosen, so
/// a kernel that refuses one method's helper still loads the program with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StampMethod {
    /// No stamp: workers measure `service` only; `ring_dwell` and `total` are not measured.
    None,
    /// `bpf_xdp_adjust_meta`: the stamp travels as XDP metadata in front of the packet, outside its data.
    Meta,
    /// `bpf_xdp_adjust_head`: the stamp is prepended to the packet's data and the worker strips it (a copy of
    /// the packet within its frame, since the descriptor's address cannot be moved), for kernels that refuse
    /// `bpf_xdp_adjust_meta` in XDP programs.
    Head,
}

impl StampMethod {
    /// The name used in the config, reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            StampMethod::None => "none",
            StampMethod::Meta => "meta",
            StampMethod::Head => "head",
        }
    }

    /// The BPF helper the method calls, by its kernel name.
    pub fn helper(self) -> Option<&'static str> {
        match self {
            StampMethod::None => None,
            StampMethod::Meta => Some("bpf_xdp_adjust_meta"),
            StampMethod::Head => Some("bpf_xdp_adjust_head"),
        }
    }

    /// Whether packets carry the XDP-hook time, so that `ring_dwell` and `total` are measured.
    pub fn stamps(self) -> bool {
        self != StampMethod::None
    }

    /// `SHUNT_STAMP_*` in bpf/shunt.bpf.c.
    fn code(self) -> u32 {
        match self {
            StampMethod::None => 0,
            StampMethod::Meta => 1,
            StampMethod::Head => 2,
        }
    }
}
/// Bit in the settings map: drop requests from sources no real client has (see [`SourcePolicy`]).
pub const SETTING_FILTER_SOURCE: u32 = 1 << 1;
/// Bit in the settings map: limit each source's request rate.
pub const SETTING_RATE_LIMIT: u32 = 1 << 2;
/// Bit in the settings map: serve only sources in the allow-list.
pub const SETTING_ALLOW_LIST: u32 = 1 << 3;
/// Bit in the settings map: serve only the destination addresses in [`ServedAddresses`]; a datagram to a
/// served port but another address (traffic the host forwards, e.g. to a pod) is passed to the kernel and
/// counted as [`XdpCounters::other_address`]. Without it every address is served.
pub const SETTING_SERVED_ONLY: u32 = 1 << 4;

/// Which sources the program serves, and how fast: checked in XDP before a request is steered, so abuse
/// never reaches user space (nor the kernel's stack: filtered and over-rate requests are dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Drop requests from unspecified, loopback, multicast and broadcast addresses, from `own` addresses,
    /// from source port 0 and from `deny_source_ports`, and from `deny`; and, when `allow` is not empty, from
    /// anything outside it.
    pub filter: bool,
    /// Source ports of reflection-prone services (their "requests" are replies being reflected at us).
    pub deny_source_ports: Vec<u16>,
    /// When not empty, the only prefixes served.
    pub allow: Vec<ipnet::IpNet>,
    /// Prefixes never served.
    pub deny: Vec<ipnet::IpNet>,
    /// This host's addresses: a request "from" one is forged.
    pub own: Vec<std::net::IpAddr>,
    /// Per-source limit: (requests per second, burst); `None`: no limit.
    pub rate: Option<(u64, u64)>,
}

impl SourcePolicy {
    /// The settings bits this policy turns on.
    pub fn setting_bits(&self) -> u32 {
        let mut bits = 0;
        if self.filter {
            bits |= SETTING_FILTER_SOURCE;
            if !self.allow.is_empty() {
                bits |= SETTING_ALLOW_LIST;
            }
        }
        if self.rate.is_some() {
            bits |= SETTING_RATE_LIMIT;
        }
        bits
    }
}

/// An address as the program's maps key it: 16 bytes, IPv4 as ::ffff:a.b.c.d.
fn map_addr(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// An LPM-trie key (`struct shunt_prefix`): prefix length in bits, then the mapped address.
fn prefix_key(net: &ipnet::IpNet) -> [u8; 20] {
    let bits = match net {
        ipnet::IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        ipnet::IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&bits.to_ne_bytes());
    key[4..].copy_from_slice(&map_addr(net.network()));
    key
}

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
    /// Requests for a served port from a source that is never served ([`SourcePolicy`]): dropped.
    pub filtered: u64,
    /// Requests for a served port over their source's rate: dropped.
    pub rate_limited: u64,
    /// Requests for a served port that could not be stamped with [`StampMethod::Head`] (no headroom in front
    /// of the packet, which drivers guarantee): passed to the kernel.
    #[serde(default)]
    pub stamp_failed: u64,
    /// Datagrams for a served port but to a destination address that is not served ([`SETTING_SERVED_ONLY`],
    /// [`ServedAddresses`]): traffic the host forwards or that is meant for another address; passed to the
    /// kernel.
    #[serde(default)]
    pub other_address: u64,
}

/// The loaded (not yet attached) steering program and handles on its maps. It holds its own file descriptors
/// of the program and the maps, which keep them in the kernel; the skeleton and libbpf's object are gone once
/// [`XdpProgram::load`] returns.
pub struct XdpProgram {
    program: OwnedFd,
    /// The variant that was loaded.
    pub variant: ProgramVariant,
    /// How it stamps packets.
    pub stamp: StampMethod,
    xsks: MapHandle,
    ports: MapHandle,
    counters: MapHandle,
    settings: MapHandle,
    allow: MapHandle,
    deny: MapHandle,
    own: MapHandle,
    deny_sport: MapHandle,
    rate: MapHandle,
    served: MapHandle,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram").finish_non_exhaustive()
    }
}

pub(crate) fn route_libbpf_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let print: libbpf_rs::PrintCallback = |_level, message| {
            tracing::debug!(target: "libbpf", "{}", message.trim_end());
        };
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
    });
}

/// A handle of its own (a duplicated fd) on one of the skeleton's maps; `name` is for the error only.
pub(crate) fn map_handle(map: &MapMut<'_>, name: &'static str) -> Result<MapHandle, XdpError> {
    MapHandle::try_from(map).map_err(|source| XdpError::Map { map: name, source })
}

impl XdpProgram {
    /// Opens and loads the embedded program, stamping packets by `stamp`, into the kernel (the verifier runs here). libbpf's own messages,
    /// the verifier log among them, go to the `libbpf` tracing target at DEBUG.
    pub fn load(variant: ProgramVariant, stamp: StampMethod) -> Result<XdpProgram, XdpError> {
        Self::load_with(variant, stamp, DEFAULT_RATE_TABLE)
    }

    /// [`XdpProgram::load`] with room for `rate_table` sources in the per-source rate limiter (least recently
    /// seen ones are evicted when it is full).
    pub fn load_with(variant: ProgramVariant, stamp: StampMethod, rate_table: u32) -> Result<XdpProgram, XdpError> {
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let mut open = ShuntSkelBuilder::default().open(&mut storage).map_err(XdpError::Load)?;
        // Only the chosen variant is loaded (and verified).
        open.maps.shunt_buckets.set_max_entries(rate_table.max(1)).map_err(XdpError::Load)?;
        // The stamping method is a constant of the loaded program: the verifier prunes the other methods.
        let rodata = open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
            XdpError::Load(libbpf_rs::Error::from(std::io::Error::other("the program's .rodata is not mapped")))
        })?;
        rodata.shunt_stamp_method = stamp.code();
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
            stamp,
            xsks: map_handle(&skel.maps.shunt_xsks, "shunt_xsks")?,
            ports: map_handle(&skel.maps.shunt_ports, "shunt_ports")?,
            counters: map_handle(&skel.maps.shunt_counters, "shunt_counters")?,
            settings: map_handle(&skel.maps.shunt_settings, "shunt_settings")?,
            allow: map_handle(&skel.maps.shunt_allow, "shunt_allow")?,
            deny: map_handle(&skel.maps.shunt_deny, "shunt_deny")?,
            own: map_handle(&skel.maps.shunt_own, "shunt_own")?,
            deny_sport: map_handle(&skel.maps.shunt_deny_sport, "shunt_deny_sport")?,
            rate: map_handle(&skel.maps.shunt_rate, "shunt_rate")?,
            served: map_handle(&skel.maps.shunt_served, "shunt_served")?,
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

    /// Fills the source filter's and the rate limiter's maps from `policy`. The settings bits that turn them
    /// on are [`SourcePolicy::setting_bits`]; write them with [`XdpProgram::set_settings`].
    pub fn set_source_policy(&self, policy: &SourcePolicy) -> Result<(), XdpError> {
        let one = [1u8];
        for net in &policy.allow {
            self.allow
                .update(&prefix_key(net), &one, MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_allow", source })?;
        }
        for net in &policy.deny {
            self.deny
                .update(&prefix_key(net), &one, MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_deny", source })?;
        }
        for ip in &policy.own {
            self.own
                .update(&map_addr(*ip), &one, MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_own", source })?;
        }
        for port in &policy.deny_source_ports {
            self.deny_sport
                .update(&u32::from(*port).to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_deny_sport", source })?;
        }
        if let Some((pps, burst)) = policy.rate {
            // GCRA: one request per interval, a burst of `burst` at once.
            let interval = 1_000_000_000 / pps.max(1);
            let tolerance = interval.saturating_mul(burst.max(1) - 1);
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&interval.to_ne_bytes());
            value[8..].copy_from_slice(&tolerance.to_ne_bytes());
            self.rate
                .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "shunt_rate", source })?;
        }
        Ok(())
    }

    /// A handle on the map of served destination addresses (a duplicated fd, usable from another thread and
    /// independent of this program's lifetime). The map starts empty; it is consulted only once
    /// [`SETTING_SERVED_ONLY`] is set.
    pub fn served_addresses(&self) -> Result<ServedAddresses, XdpError> {
        ServedAddresses::of(&self.served, "shunt_served")
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
        filtered: sum(shunt_counter::SHUNT_FILTERED)?,
        rate_limited: sum(shunt_counter::SHUNT_RATE_LIMITED)?,
        stamp_failed: sum(shunt_counter::SHUNT_STAMP_FAILED)?,
        other_address: sum(shunt_counter::SHUNT_NOT_SERVED_ADDR)?,
    })
}

/// The most destination addresses a program serves (`max_entries` of `shunt_served` and `answer_served`).
pub const MAX_SERVED_ADDRESSES: usize = 1024;

/// The destination addresses an XDP program serves (`shunt_served` in bpf/shunt.bpf.c, `answer_served` in
/// bpf/answer.bpf.c), through a duplicated map fd: it can be moved to a control thread that keeps the map in
/// step with the interface's addresses. It remembers what it wrote, so [`ServedAddresses::replace`] changes
/// only the difference and a packet to an address that stays served is never passed on in between.
#[derive(Debug)]
pub struct ServedAddresses {
    map: MapHandle,
    name: &'static str,
    current: std::collections::BTreeSet<std::net::IpAddr>,
}

impl ServedAddresses {
    pub(crate) fn of(map: &MapHandle, name: &'static str) -> Result<ServedAddresses, XdpError> {
        let map = MapHandle::try_from(map).map_err(|source| XdpError::Map { map: name, source })?;
        Ok(ServedAddresses { map, name, current: Default::default() })
    }

    /// The addresses served now (as written through this handle).
    pub fn current(&self) -> impl Iterator<Item = std::net::IpAddr> + '_ {
        self.current.iter().copied()
    }

    /// Makes `addresses` exactly the served set: adds the new ones first, then removes those no longer
    /// listed. Returns (added, removed). An address that does not fit (more than [`MAX_SERVED_ADDRESSES`])
    /// fails the call with the map's error; those written before it stay.
    pub fn replace(
        &mut self,
        addresses: &[std::net::IpAddr],
    ) -> Result<(Vec<std::net::IpAddr>, Vec<std::net::IpAddr>), XdpError> {
        let wanted: std::collections::BTreeSet<std::net::IpAddr> = addresses.iter().copied().collect();
        let added: Vec<_> = wanted.difference(&self.current).copied().collect();
        let removed: Vec<_> = self.current.difference(&wanted).copied().collect();
        // Removed first: a full map still takes a new set that fits once the old addresses are gone (the
        // addresses kept are never out of the map).
        for ip in &removed {
            match self.map.delete(&map_addr(*ip)) {
                Ok(()) => {}
                // Already gone: what we wanted.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => return Err(XdpError::Map { map: self.name, source }),
            }
            self.current.remove(ip);
        }
        for ip in &added {
            self.map
                .update(&map_addr(*ip), &[1u8], MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: self.name, source })?;
            self.current.insert(*ip);
        }
        Ok((added, removed))
    }
}

/// Sources the per-source rate limiter keeps by default ([`XdpProgram::load`]).
pub const DEFAULT_RATE_TABLE: u32 = 65_536;

/// An attached program. Dropping it detaches the program from the interface.
#[derive(Debug)]
pub struct XdpLink {
    _fd: OwnedFd,
    /// The interface it is attached to.
    pub ifindex: u32,
    /// The mode it was attached in.
    pub mode: AttachMode,
}

impl XdpLink {
    /// Wraps the link `fd` of a program attached to `ifindex` in `mode`: the link detaches when dropped.
    pub(crate) fn new(fd: OwnedFd, ifindex: u32, mode: AttachMode) -> XdpLink {
        XdpLink { _fd: fd, ifindex, mode }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_counters` reads eight slots into eight fields; a slot added to `enum shunt_counter` must get a field
    /// too. The enum and the map both come from the BPF object, so this also checks that the counters map has
    /// room for every slot. Opening the skeleton parses the embedded object only: no privileges needed.
    #[test]
    fn counters_cover_every_slot_of_the_program() {
        assert_eq!(
            shunt_counter::SHUNT_COUNTER_MAX.0,
            8,
            "bpf/shunt.bpf.c has a new counter slot: add it to XdpCounters and read_counters"
        );
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let open = ShuntSkelBuilder::default().open(&mut storage).expect("open the embedded BPF object");
        assert_eq!(open.maps.shunt_counters.max_entries(), shunt_counter::SHUNT_COUNTER_MAX.0);
        assert_eq!(open.maps.shunt_served.max_entries() as usize, MAX_SERVED_ADDRESSES);
    }
}
