//! The in-kernel server: "the server inside the kernel" that shunt's AF_XDP datapath is compared with. An
//! XDP program (bpf/answer.bpf.c) answers the served UDP ports itself, from the XDP hook, with XDP_TX: no
//! socket, no user-space worker, no copy out of the kernel.
//!
//! It reads what the user-space path reads (Ethernet, one optional 802.1Q/802.1ad tag, IPv4 with options or
//! IPv6 without extension headers, UDP), makes the same consistency checks, accepts the same UDP checksums
//! (correct, zero over IPv4, or the pseudo-header-only value an offloading sender leaves) and writes the same
//! reply: MACs, addresses and ports swapped, the IP header the server's own (IPv4 options stripped, TOS /
//! traffic class 0, flow label 0, ID 0 with DF, TTL / hop limit 64: the defaults of `packet.reply_ttl` and
//! `packet.reply_dscp`, which this mode cannot change), the IPv4 header checksum recomputed, a full UDP
//! checksum. The handler is one of the two built in ([`InKernelHandler`]); everything that is not a
//! served UDP datagram goes to the kernel.
//!
//! What it cannot do, by construction:
//! - run an arbitrary [`Handler`](crate::handler::Handler): only echo and sockperf, written in C;
//! - answer payloads longer than [`MAX_PAYLOAD`] bytes (the checksum loop is bounded for the verifier):
//!   those go to the kernel, counted as [`InKernelCounters::too_long`];
//! - measure itself: the time from the hook to the frame leaving with XDP_TX is not observable from inside
//!   the program, so this mode has no in-server latency histogram; measure it from the client;
//! - filter sources or limit rates (the steering program's job in AF_XDP mode).
//!
//! Like the steering program, it can be told to answer only some destination addresses
//! ([`InKernelServer::serve_listed_addresses_only`]); the rest goes to the kernel.
//!
//! Over veth in native mode, XDP_TX frames reach the peer only if the peer runs NAPI (an XDP program on the
//! peer, or `ethtool -K PEER gro on`); otherwise the kernel drops them. Generic mode has no such condition.
//!
//! Like the steering program, it is attached through a bpf_link ([`XdpLink`]): when the link is dropped, or
//! the process exits by any means, the kernel detaches it and the ports go back to the kernel stack.

use std::{
    mem::MaybeUninit,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, MapHandle,
};

use crate::steer::{map_handle, route_libbpf_logs, AttachMode, ServedAddresses, XdpError, XdpLink};
use crate::sys::{
    self,
    answer_skel::{
        types::{answer_counter, answer_handler, answer_settings},
        AnswerSkelBuilder,
    },
};

/// The largest UDP payload the in-kernel server answers, in bytes: a 1500-byte IPv4 packet without options
/// (`ANSWER_MAX_PAYLOAD` in bpf/answer.bpf.c). Longer requests are passed to the kernel and counted in
/// [`InKernelCounters::too_long`].
pub const MAX_PAYLOAD: usize = 1472;

/// Which reply the in-kernel server makes: the built-in handlers, in C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InKernelHandler {
    /// The reply's payload is the request's ([`crate::handler`]'s `Echo`).
    Echo,
    /// sockperf's server ([`crate::handler`]'s `Sockperf`): answers messages of at least 14 bytes that carry
    /// CLIENT and PONG_REQUEST in the big-endian flags at payload offset 8, with CLIENT cleared; drops the
    /// rest ([`InKernelCounters::dropped_by_handler`]).
    Sockperf,
}

impl InKernelHandler {
    /// The lowercase name used in reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            InKernelHandler::Echo => "echo",
            InKernelHandler::Sockperf => "sockperf",
        }
    }

    /// The value of `answer_settings.handler` (`enum answer_handler` in bpf/answer.bpf.c).
    fn code(self) -> u32 {
        match self {
            InKernelHandler::Echo => answer_handler::ANSWER_ECHO.0,
            InKernelHandler::Sockperf => answer_handler::ANSWER_SOCKPERF.0,
        }
    }
}

/// Counters kept by the in-kernel server, summed over CPUs. Every frame the program sees is counted in
/// exactly one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InKernelCounters {
    /// Requests answered (replies sent with XDP_TX).
    pub answered: u64,
    /// Frames passed to the kernel because they were not ours: not IP/UDP, another port, an IPv4 fragment,
    /// an IPv6 extension header, a second VLAN tag.
    pub passed: u64,
    /// Frames that claimed to be IP/UDP but whose headers did not hold together (truncated, IHL below 5,
    /// wrong version, lengths below the headers or beyond the frame, a wrong IPv4 header checksum on a served
    /// port); passed to the kernel, which drops them.
    pub malformed: u64,
    /// Requests to a served port whose UDP checksum did not verify (corrupted on the way, or forged):
    /// dropped, never answered.
    pub bad_checksum: u64,
    /// Requests the handler chose not to answer (sockperf: no PONG_REQUEST or no CLIENT flag, shorter than
    /// its 14-byte header): dropped.
    pub dropped_by_handler: u64,
    /// Requests to a served port with a payload over [`MAX_PAYLOAD`] bytes: passed to the kernel.
    pub too_long: u64,
    /// Datagrams to a served port but a destination address that is not served
    /// ([`InKernelServer::serve_listed_addresses_only`]): traffic the host forwards; passed to the kernel.
    #[serde(default)]
    pub other_address: u64,
}

impl InKernelCounters {
    /// All frames the program has seen: the sum of every counter.
    pub fn total(&self) -> u64 {
        self.answered
            + self.passed
            + self.malformed
            + self.bad_checksum
            + self.dropped_by_handler
            + self.too_long
            + self.other_address
    }
}

/// The loaded (not yet attached) in-kernel server and handles on its maps. Like
/// [`XdpProgram`](crate::steer::XdpProgram), it holds its own file descriptors of the program and the maps; the
/// skeleton and libbpf's object are gone once [`InKernelServer::load`] returns.
pub struct InKernelServer {
    program: OwnedFd,
    handler: InKernelHandler,
    served_only: bool,
    ports: MapHandle,
    counters: MapHandle,
    settings: MapHandle,
    served: MapHandle,
}

impl std::fmt::Debug for InKernelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InKernelServer").field("handler", &self.handler).finish_non_exhaustive()
    }
}

impl InKernelServer {
    /// Opens and loads the embedded program into the kernel (the verifier runs here) and selects `handler`.
    /// No port is served until [`InKernelServer::set_ports`]. libbpf's own messages, the verifier log among
    /// them, go to the `libbpf` tracing target at DEBUG.
    pub fn load(handler: InKernelHandler) -> Result<InKernelServer, XdpError> {
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let skel =
            AnswerSkelBuilder::default().open(&mut storage).map_err(XdpError::Load)?.load().map_err(XdpError::Load)?;
        let program = skel.progs.answer.as_fd().try_clone_to_owned().map_err(|e| XdpError::Load(e.into()))?;
        let server = InKernelServer {
            program,
            handler,
            served_only: false,
            ports: map_handle(&skel.maps.answer_ports, "answer_ports")?,
            counters: map_handle(&skel.maps.answer_counters, "answer_counters")?,
            settings: map_handle(&skel.maps.answer_settings, "answer_settings")?,
            served: map_handle(&skel.maps.answer_served, "answer_served")?,
        };
        server.write_settings(handler, false)?;
        Ok(server)
    }

    /// The handler selected now.
    pub fn handler(&self) -> InKernelHandler {
        self.handler
    }

    /// Selects the handler; takes effect for the next packet, also while attached.
    pub fn set_handler(&mut self, handler: InKernelHandler) -> Result<(), XdpError> {
        self.write_settings(handler, self.served_only)?;
        self.handler = handler;
        Ok(())
    }

    /// From now on, answers only datagrams to the destination addresses in
    /// [`InKernelServer::served_addresses`]' map (empty at first: fill it before attaching); a datagram to a
    /// served port but another address is passed to the kernel and counted as
    /// [`InKernelCounters::other_address`]. Without this call every address is answered.
    pub fn serve_listed_addresses_only(&mut self) -> Result<(), XdpError> {
        self.write_settings(self.handler, true)?;
        self.served_only = true;
        Ok(())
    }

    /// A handle on the map of served destination addresses (a duplicated fd, usable from another thread); it
    /// is consulted once [`InKernelServer::serve_listed_addresses_only`] is called.
    pub fn served_addresses(&self) -> Result<ServedAddresses, XdpError> {
        ServedAddresses::of(&self.served, "answer_served")
    }

    fn write_settings(&self, handler: InKernelHandler, served_only: bool) -> Result<(), XdpError> {
        // `struct answer_settings` is two u32s: the handler, then served_only (checked at compile time below).
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&handler.code().to_ne_bytes());
        value[4..].copy_from_slice(&u32::from(served_only).to_ne_bytes());
        self.settings
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "answer_settings", source })
    }

    /// Marks `ports` as answered in the kernel (in addition to those already marked).
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), XdpError> {
        self.mark_ports(ports, 1)
    }

    /// Stops answering `ports`: their datagrams go to the kernel again (counted as passed).
    pub fn clear_ports(&self, ports: &[u16]) -> Result<(), XdpError> {
        self.mark_ports(ports, 0)
    }

    fn mark_ports(&self, ports: &[u16], value: u8) -> Result<(), XdpError> {
        for &port in ports {
            self.ports
                .update(&u32::from(port).to_ne_bytes(), &[value], MapFlags::ANY)
                .map_err(|source| XdpError::Map { map: "answer_ports", source })?;
        }
        Ok(())
    }

    /// Attaches the program to `ifindex` (named `interface`, for errors) as a bpf_link in the given mode. It
    /// answers as long as the returned [`XdpLink`] (or the process) lives. Must be called from a thread in
    /// the interface's network namespace (the index is looked up there).
    pub fn attach(&self, interface: &str, ifindex: u32, mode: AttachMode) -> Result<XdpLink, XdpError> {
        let flags = match mode {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => 0,
        };
        let fd = sys::create_xdp_link(self.program.as_raw_fd(), ifindex, flags).map_err(|source| {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => {
                    " (another XDP program is attached: remove it with `ip link set dev IF xdp off`)"
                }
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == AttachMode::Native => {
                    " (the driver may lack native XDP: try the generic attach mode)"
                }
                Some(libc::EPERM) => " (needs CAP_NET_ADMIN and CAP_BPF)",
                _ => "",
            };
            XdpError::Attach { interface: interface.to_string(), mode: mode.name(), source, hint }
        })?;
        Ok(XdpLink::new(fd, ifindex, mode))
    }

    /// Reads the program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<InKernelCounters, XdpError> {
        read_counters(&self.counters)
    }

    /// A handle that reads the counters from another thread, independent of this server's lifetime.
    pub fn counters_reader(&self) -> Result<InKernelCountersReader, XdpError> {
        MapHandle::try_from(&self.counters)
            .map(InKernelCountersReader)
            .map_err(|source| XdpError::Map { map: "answer_counters", source })
    }
}

// The settings value is written as two u32s: `struct answer_settings` must be exactly that.
const _: () = assert!(std::mem::size_of::<answer_settings>() == 2 * std::mem::size_of::<u32>());

/// Reads the in-kernel server's counters from any thread (a duplicated map fd).
#[derive(Debug)]
pub struct InKernelCountersReader(MapHandle);

impl InKernelCountersReader {
    /// The counters now, summed over CPUs.
    pub fn read(&self) -> Result<InKernelCounters, XdpError> {
        read_counters(&self.0)
    }
}

/// Reads the counters by the slots of `enum answer_counter` (bpf/answer.bpf.c), as the skeleton generates them
/// from the object's BTF. `InKernelCounters` has one field per slot (see the test below).
fn read_counters(map: &MapHandle) -> Result<InKernelCounters, XdpError> {
    let sum = |slot: answer_counter| -> Result<u64, XdpError> {
        let per_cpu = map
            .lookup_percpu(&slot.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map { map: "answer_counters", source })?
            .unwrap_or_default();
        Ok(per_cpu.iter().filter_map(|v| v.first_chunk::<8>()).map(|b| u64::from_ne_bytes(*b)).sum())
    };
    Ok(InKernelCounters {
        answered: sum(answer_counter::ANSWER_ANSWERED)?,
        passed: sum(answer_counter::ANSWER_PASSED)?,
        malformed: sum(answer_counter::ANSWER_MALFORMED)?,
        bad_checksum: sum(answer_counter::ANSWER_BAD_CHECKSUM)?,
        dropped_by_handler: sum(answer_counter::ANSWER_DROPPED_BY_HANDLER)?,
        too_long: sum(answer_counter::ANSWER_TOO_LONG)?,
        other_address: sum(answer_counter::ANSWER_OTHER_ADDRESS)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_counters` reads seven slots into seven fields; a slot added to `enum answer_counter` must get a field
    /// too, and the counters map must have room for every slot. Opening the skeleton parses the embedded
    /// object only: no privileges needed.
    #[test]
    fn counters_cover_every_slot_of_the_program() {
        assert_eq!(
            answer_counter::ANSWER_COUNTER_MAX.0,
            7,
            "bpf/answer.bpf.c has a new counter slot: add it to InKernelCounters and read_counters"
        );
        route_libbpf_logs();
        let mut storage = MaybeUninit::uninit();
        let open = AnswerSkelBuilder::default().open(&mut storage).expect("open the embedded BPF object");
        assert_eq!(open.maps.answer_counters.max_entries(), answer_counter::ANSWER_COUNTER_MAX.0);
        assert_eq!(open.maps.answer_served.max_entries() as usize, crate::steer::MAX_SERVED_ADDRESSES);
    }

    #[test]
    fn handler_codes_are_the_programs() {
        assert_eq!(InKernelHandler::Echo.code(), 0);
        assert_eq!(InKernelHandler::Sockperf.code(), 1);
        assert_eq!(serde_json::to_string(&InKernelHandler::Sockperf).unwrap(), "\"sockperf\"");
    }

    #[test]
    fn total_adds_every_counter() {
        let c = InKernelCounters {
            answered: 1,
            passed: 2,
            malformed: 4,
            bad_checksum: 8,
            dropped_by_handler: 16,
            too_long: 32,
            other_address: 64,
        };
        assert_eq!(c.total(), 127);
    }
}
