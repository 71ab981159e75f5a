//! Probing the host before anything is loaded: every kernel and driver feature shunt can use, asked of the
//! kernel itself ([`crate::steer::probe`], [`crate::sys::probe`], the io_uring model's own probe), and the
//! choices made from the answers. `shunt check-host` prints the result; `serve` puts it in the report.

use super::config::{Config, Mode};
use crate::{
    datapath::socket::probe_io_uring,
    observe::host::{Finding, HostReport},
    steer::{
        probe::{self as bpf, Probed, HELPERS},
        StampMethod,
    },
    sys::{self, probe as os},
};

/// The kfunc a device-bound program calls for the NIC's RX hardware timestamp.
pub const RX_TIMESTAMP_KFUNC: &str = "bpf_xdp_metadata_rx_timestamp";

fn finding(feature: impl Into<String>, answer: Probed, needed_by: &str, required: bool, otherwise: &str) -> Finding {
    let (available, detail) = match answer {
        Ok(yes) => (Some(yes), String::new()),
        Err(why) => (None, why),
    };
    Finding {
        feature: feature.into(),
        available,
        needed_by: needed_by.to_string(),
        required,
        otherwise: otherwise.to_string(),
        detail,
    }
}

fn io_answer(r: std::io::Result<bool>) -> Probed {
    r.map_err(|e| format!("could not ask: {e}"))
}

/// What a helper's absence means.
fn without_helper(name: &str) -> &'static str {
    match name {
        "bpf_xdp_adjust_meta" => "latency.stamp = \"auto\" uses bpf_xdp_adjust_head (a prepended stamp)",
        "bpf_xdp_adjust_head" => {
            "with no bpf_xdp_adjust_meta either, only service latency is measured; mode = \"xdp\" cannot load"
        }
        "bpf_ktime_get_ns" => "no XDP-hook stamps and no rate limit (limits.per_source_pps must stay 0)",
        "bpf_ktime_get_tai_ns" => "nic_to_hook is not measured",
        "bpf_map_update_elem" => "no per-source rate limit (limits.per_source_pps must stay 0)",
        "bpf_xdp_adjust_tail" | "bpf_csum_diff" => "mode = \"xdp\" (the in-kernel server) cannot load",
        _ => "shunt cannot steer packets into AF_XDP",
    }
}

/// Probes the kernel (and `interface`, when given, in the calling thread's network namespace). Probing
/// BPF needs CAP_BPF (or CAP_SYS_ADMIN) and AF_XDP CAP_NET_RAW: without them the answers are "unknown".
/// io_uring is probed only when `io_uring` is set (`check-host`, or a run with `socket.io = "io_uring"`): a
/// server that does not use it makes no io_uring system call, which a system call filter may forbid.
pub fn probe(interface: Option<&str>, io_uring: bool) -> HostReport {
    let mut findings = Vec::new();
    findings.push(finding(
        "BPF_PROG_TYPE_XDP",
        bpf::xdp_programs(),
        "the steering program",
        true,
        "no AF_XDP datapath (mode = \"socket\" still serves)",
    ));
    for h in HELPERS {
        findings.push(finding(h.name, bpf::xdp_helper(h.id), h.needed_by, h.required, without_helper(h.name)));
    }
    let btf = bpf::vmlinux_btf();
    findings.push(finding(
        RX_TIMESTAMP_KFUNC,
        bpf::kernel_function(&btf, RX_TIMESTAMP_KFUNC),
        "NIC RX hardware timestamps (a device-bound program, native attach)",
        false,
        "the plain program: nic_to_hook is not measured",
    ));
    findings.push(finding(
        "XDP bpf_link",
        bpf::kernel_type(&btf, "bpf_xdp_link"),
        "attaching so that the program goes away with the process, however it ends",
        true,
        "shunt will not attach through netlink, which outlives a killed process",
    ));
    findings.push(finding("AF_XDP sockets", io_answer(os::af_xdp_sockets()), "the AF_XDP datapath", true, ""));
    findings.push(finding(
        "AF_XDP need_wakeup",
        io_answer(os::af_xdp_need_wakeup()),
        "kicking the kernel only when it asks (ring flags)",
        false,
        "a system call per ring move",
    ));
    findings.push(finding(
        "SO_PREFER_BUSY_POLL",
        io_answer(os::prefer_busy_poll()),
        "workers.poll_mode = \"busy_poll\"",
        false,
        "busy_poll is refused at start-up; use spin, wakeup or adaptive",
    ));
    findings.push(finding(
        "SO_TIMESTAMPING (software RX)",
        io_answer(os::rx_software_timestamps()),
        "in-server latency of mode = \"socket\"",
        false,
        "mode = \"socket\" measures no in-server latency",
    ));
    if io_uring {
        let uring = probe_io_uring();
        let uring_ok = uring.ring.clone().map(|()| true);
        let refused = |e: String| if e.contains("Operation not permitted") { Err(e) } else { Ok(false) };
        findings.push(finding(
            "io_uring with provided-buffer rings",
            uring_ok.clone().or_else(refused),
            "socket.io = \"io_uring\"",
            false,
            "socket.io = \"io_uring\" fails at start-up, naming the step",
        ));
        for (name, yes) in [("IORING_OP_RECVMSG", uring.recvmsg), ("IORING_OP_SENDMSG", uring.sendmsg)] {
            findings.push(finding(
                name,
                uring_ok.clone().map(|_| yes),
                "socket.io = \"io_uring\" (receives, replies)",
                false,
                "socket.io = \"io_uring\" fails at start-up",
            ));
        }
        findings.push(finding(
            "io_uring multishot recvmsg",
            uring.multishot_recvmsg,
            "socket.io = \"io_uring\": one receive armed per socket, many datagrams",
            false,
            "socket.io = \"io_uring\" fails when it arms its receives",
        ));
    }
    if let Some(name) = interface {
        match sys::interface_index(name) {
            Err(e) => {
                let mut missing = finding(format!("interface {name}"), Ok(false), "serving on it", true, "");
                missing.detail = e.to_string();
                findings.push(missing);
            }
            Ok(ifindex) => {
                let queues = sys::rx_queue_count(name).map(|n| format!("{n} receive queues")).unwrap_or_default();
                let mut present = finding(format!("interface {name}"), Ok(true), "serving on it", true, "");
                present.detail = queues;
                findings.push(present);
                let features = os::xdp_features(ifindex);
                let (native, zc, rxts) = match features {
                    Ok(Some(f)) => (Ok(f.native_redirect()), Ok(f.zero_copy()), Ok(f.rx_timestamp())),
                    Ok(None) => {
                        let why = "the kernel has no netdev netlink family to say (Linux 6.3+): only an attach or bind will tell"
                            .to_string();
                        (Err(why.clone()), Err(why.clone()), Err(why))
                    }
                    Err(e) => {
                        let why = format!("netdev netlink: {e}");
                        (Err(why.clone()), Err(why.clone()), Err(why))
                    }
                };
                findings.push(finding(
                    format!("native XDP redirect on {name}"),
                    native,
                    "xdp.attach_mode = \"native\" (the fast path)",
                    false,
                    "xdp.attach_mode = \"generic\" or \"auto\" (the skb-based hook, slower)",
                ));
                findings.push(finding(
                    format!("AF_XDP zero-copy on {name}"),
                    zc,
                    "xdp.bind_mode = \"zerocopy\"",
                    false,
                    "copy mode (xdp.bind_mode = \"auto\" falls back to it)",
                ));
                findings.push(finding(
                    format!("RX timestamp metadata on {name}"),
                    rxts,
                    "NIC RX hardware timestamps (bpf_xdp_metadata_rx_timestamp answers)",
                    false,
                    "nic_to_hook is not measured",
                ));
            }
        }
    }
    HostReport {
        kernel: rustix::system::uname().release().to_string_lossy().into_owned(),
        interface: interface.map(str::to_string),
        findings,
        choices: Default::default(),
    }
}

/// Why a configured feature cannot be had on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct Unavailable {
    /// The key whose value needs the feature.
    pub key: &'static str,
    /// What is missing, by the kernel's name.
    pub message: String,
}

/// The stamping method a run uses, and why: `latency.stamp` forced, or the best the probes allow.
pub fn choose_stamp(config: &Config, host: &HostReport) -> Result<(StampMethod, String), Unavailable> {
    if config.mode != Mode::Afxdp {
        return Ok((StampMethod::None, "only the AF_XDP datapath stamps packets in XDP".into()));
    }
    if !config.latency.enabled {
        return Ok((StampMethod::None, "latency.enabled = false".into()));
    }
    let answer = |method: StampMethod| -> Probed {
        match method.helper().and_then(|h| host.finding(h)) {
            Some(f) => f.available.ok_or_else(|| f.detail.clone()),
            None => Ok(true),
        }
    };
    match config.latency.stamp.forced() {
        Some(method) => match (method.helper(), answer(method)) {
            (Some(helper), Ok(false)) => Err(Unavailable {
                key: "latency.stamp",
                message: format!(
                    "\"{}\" needs the BPF helper {helper}, which this kernel refuses in XDP programs (use \"auto\", or \
                     {})",
                    method.name(),
                    match method {
                        StampMethod::Meta => "\"head\" or \"none\"",
                        _ => "\"none\"",
                    }
                ),
            }),
            _ => Ok((method, format!("latency.stamp = \"{}\"", method.name()))),
        },
        None => Ok(auto_stamp(host)),
    }
}

/// The method `latency.stamp = "auto"` picks from `host`'s probes, and why.
pub fn auto_stamp(host: &HostReport) -> (StampMethod, String) {
    let answer = |name: &str| -> Probed {
        match host.finding(name) {
            Some(f) => f.available.ok_or_else(|| f.detail.clone()),
            None => Err("not probed".into()),
        }
    };
    let method = bpf::best_stamp_method(&answer("bpf_xdp_adjust_meta"), &answer("bpf_xdp_adjust_head"));
    let reason = match method {
        StampMethod::Meta => "auto: bpf_xdp_adjust_meta is allowed (the stamp travels as XDP metadata)".into(),
        StampMethod::Head => "auto: this kernel refuses bpf_xdp_adjust_meta in XDP programs; bpf_xdp_adjust_head \
                              prepends the stamp and the worker strips it"
            .into(),
        StampMethod::None => "auto: this kernel allows neither bpf_xdp_adjust_meta nor bpf_xdp_adjust_head in XDP \
                              programs, so ring_dwell and total are not measured (service is)"
            .into(),
    };
    (method, reason)
}
