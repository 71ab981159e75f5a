//! What the kernel lets shunt's XDP programs do, found by asking it: libbpf's probes for program types and
//! helpers (each loads a tiny program and reads the verifier's answer) and the kernel's own BTF for kfuncs and
//! link types. Never a comparison of version numbers: distributions backport features and, as on the kernel
//! this project's CI runs, refuse helpers that upstream allows.

use libbpf_rs::{btf::types::Func, Btf, ProgramType};

use super::StampMethod;

/// The answer to one probe: `Ok(true)` / `Ok(false)`, or `Err` saying why the kernel could not be asked.
pub type Probed = Result<bool, String>;

/// A BPF helper an XDP program of shunt's calls, with its id and kernel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    /// `enum bpf_func_id`.
    pub id: u32,
    /// The kernel's name, e.g. `bpf_xdp_adjust_meta`.
    pub name: &'static str,
    /// What needs it.
    pub needed_by: &'static str,
    /// Whether shunt cannot serve on AF_XDP without it.
    pub required: bool,
}

/// Every helper the steering program (bpf/shunt.bpf.c) and the in-kernel server (bpf/answer.bpf.c) call.
pub const HELPERS: [Helper; 9] = [
    Helper {
        id: libbpf_sys::BPF_FUNC_redirect_map,
        name: "bpf_redirect_map",
        needed_by: "steering packets into AF_XDP sockets",
        required: true,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_map_lookup_elem,
        name: "bpf_map_lookup_elem",
        needed_by: "the port, filter and counter maps",
        required: true,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_xdp_adjust_meta,
        name: "bpf_xdp_adjust_meta",
        needed_by: "latency stamp as XDP metadata (latency.stamp = \"meta\")",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_xdp_adjust_head,
        name: "bpf_xdp_adjust_head",
        needed_by: "latency stamp prepended to the packet (latency.stamp = \"head\"); the in-kernel server \
                    (mode = \"xdp\") strips IPv4 options with it",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_ktime_get_ns,
        name: "bpf_ktime_get_ns",
        needed_by: "latency stamps and the per-source rate limit",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_ktime_get_tai_ns,
        name: "bpf_ktime_get_tai_ns",
        needed_by: "comparing NIC hardware RX timestamps with the XDP hook (nic_to_hook)",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_map_update_elem,
        name: "bpf_map_update_elem",
        needed_by: "the per-source rate limit (limits.per_source_pps)",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_xdp_adjust_tail,
        name: "bpf_xdp_adjust_tail",
        needed_by: "the in-kernel server (mode = \"xdp\"): replies of another length",
        required: false,
    },
    Helper {
        id: libbpf_sys::BPF_FUNC_csum_diff,
        name: "bpf_csum_diff",
        needed_by: "the in-kernel server (mode = \"xdp\"): UDP checksums",
        required: false,
    },
];

/// The helper named `name` in [`HELPERS`].
pub fn helper(name: &str) -> Option<&'static Helper> {
    HELPERS.iter().find(|h| h.name == name)
}

fn libbpf_answer(result: libbpf_rs::Result<bool>) -> Probed {
    result.map_err(|e| format!("the kernel could not be asked: {e}"))
}

/// Whether the kernel loads XDP programs at all.
pub fn xdp_programs() -> Probed {
    libbpf_answer(ProgramType::Xdp.is_supported())
}

/// Whether the verifier lets an XDP program call helper `id` (libbpf's `libbpf_probe_bpf_helper`: a
/// refusal such as "program of this type cannot use helper" is a no).
pub fn xdp_helper(id: u32) -> Probed {
    libbpf_answer(ProgramType::Xdp.is_helper_supported(id))
}

/// The kernel's own BTF, where kfuncs and kernel types are listed (`/sys/kernel/btf/vmlinux`).
pub fn vmlinux_btf() -> Result<Btf<'static>, String> {
    Btf::from_vmlinux().map_err(|e| format!("no kernel BTF (/sys/kernel/btf/vmlinux): {e}"))
}

/// Whether the kernel has a function (a kfunc, for example) named `name`, by its BTF.
pub fn kernel_function(btf: &Result<Btf<'static>, String>, name: &str) -> Probed {
    match btf {
        Ok(btf) => Ok(btf.type_by_name::<Func<'_>>(name).is_some()),
        Err(e) => Err(e.clone()),
    }
}

/// Whether the kernel has a type named `name` (a struct, for example), by its BTF.
pub fn kernel_type(btf: &Result<Btf<'static>, String>, name: &str) -> Probed {
    match btf {
        Ok(btf) => Ok(btf.type_by_name::<libbpf_rs::btf::BtfType<'_>>(name).is_some()),
        Err(e) => Err(e.clone()),
    }
}

/// The stamping method `auto` picks from what the kernel allows: XDP metadata where `bpf_xdp_adjust_meta` is
/// allowed (no copy), else the prepended stamp where `bpf_xdp_adjust_head` is, else none.
pub fn best_stamp_method(adjust_meta: &Probed, adjust_head: &Probed) -> StampMethod {
    if *adjust_meta == Ok(true) {
        StampMethod::Meta
    } else if *adjust_head == Ok(true) {
        StampMethod::Head
    } else {
        StampMethod::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_metadata_then_head_then_none() {
        let yes: Probed = Ok(true);
        let no: Probed = Ok(false);
        let unknown: Probed = Err("EPERM".into());
        assert_eq!(best_stamp_method(&yes, &yes), StampMethod::Meta);
        assert_eq!(best_stamp_method(&no, &yes), StampMethod::Head);
        assert_eq!(best_stamp_method(&unknown, &yes), StampMethod::Head);
        assert_eq!(best_stamp_method(&no, &no), StampMethod::None);
        assert_eq!(best_stamp_method(&no, &unknown), StampMethod::None);
    }

    #[test]
    fn every_helper_the_programs_name_is_listed() {
        // The probe list follows the BPF sources: a helper added there without a probe is caught here.
        for (file, text) in [
            ("bpf/shunt.bpf.c", include_str!("../../bpf/shunt.bpf.c")),
            ("bpf/answer.bpf.c", include_str!("../../bpf/answer.bpf.c")),
        ] {
            let mut rest = text;
            while let Some(at) = rest.find("bpf_") {
                rest = &rest[at..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[name.len()..];
                let is_call = rest.starts_with('(');
                let not_a_helper = [
                    "bpf_htons",
                    "bpf_ntohs",
                    "bpf_htonl",
                    "bpf_ntohl",
                    "bpf_cpu_to_be64",
                    "bpf_xdp_metadata_rx_timestamp",
                ];
                if is_call && !not_a_helper.contains(&name.as_str()) && !name.starts_with("bpf_ksym") {
                    assert!(helper(&name).is_some(), "{file} calls {name}, which steer::probe::HELPERS does not probe");
                }
            }
        }
    }
}
