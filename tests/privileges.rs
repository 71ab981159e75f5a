//! Least privilege, proven in the lab: the real server, run as an unprivileged user (nobody) holding only the
//! systemd unit's capability set (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON, CAP_IPC_LOCK, as ambient
//! capabilities through setpriv), serves; with any one of them dropped, start-up exits 2 with a message
//! naming it, and nothing is left attached.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{client_socket, echo_exchange, echo_size, require_lab, EchoOpts, Lab};

/// The unit's capabilities (deploy/shunt.service), as setpriv names them and as shunt reports them.
const CAPS: [(&str, &str); 5] = [
    ("net_admin", "CAP_NET_ADMIN"),
    ("net_raw", "CAP_NET_RAW"),
    ("bpf", "CAP_BPF"),
    ("perfmon", "CAP_PERFMON"),
    ("ipc_lock", "CAP_IPC_LOCK"),
];

/// setpriv arguments that run a command as nobody with exactly `caps` (effective through the ambient set)
/// and no way to gain more.
fn as_nobody_with(caps: &[&str]) -> Vec<String> {
    let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let set = if plus.is_empty() { "-all".to_string() } else { format!("-all,{}", plus.join(",")) };
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn serves_with_the_unit_capabilities_alone_and_names_any_one_missing() {
    require_lab();
    let lab = Lab::new(1);
    // A directory the unprivileged server may write its report into.
    let dir = lab.dir().join("nobody");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let report = dir.join("report.json");
    let report_arg = report.display().to_string();

    // All five: it serves, and stops cleanly.
    let all: Vec<&str> = CAPS.iter().map(|(c, _)| *c).collect();
    let wrapper = as_nobody_with(&all);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut srv = lab.spawn_server_unready_with(&wrapper, &lab.serve_args(&["--quiet", "--report", &report_arg]));
    srv.wait_ready(Duration::from_secs(30));
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uid.split_whitespace().nth(2) == Some("65534"), "not running as nobody: {uid}");
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_string();
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_PERFMON 38, CAP_BPF 39; nothing else.
    let want = (1u64 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39);
    let eff = u64::from_str_radix(cap_eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff, want, "effective capabilities: {cap_eff}");
    let sock = client_socket(&lab, false, 9000);
    let st = echo_exchange(&sock, 0..1_000, echo_size, &EchoOpts::default()).expect("echo as nobody");
    assert_eq!(st.answered, 1_000);
    let fin = srv.stop();
    fin.assert_clean_exit();
    lab.assert_no_xdp_within(Duration::from_secs(5));

    // Any one dropped: exit 2, naming it, nothing attached.
    for (i, (_, name)) in CAPS.iter().enumerate() {
        let rest: Vec<&str> = CAPS.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (c, _))| *c).collect();
        let wrapper = as_nobody_with(&rest);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let fin = lab.run_server_expect_exit_with(&wrapper, &lab.serve_args(&[]), Duration::from_secs(30));
        assert_eq!(fin.code(), Some(2), "without {name}: expected exit 2\n{}", fin.describe());
        assert!(fin.stderr.contains(name), "without {name}: the message does not name it\n{}", fin.describe());
        lab.assert_no_xdp_within(Duration::from_secs(1));
    }
}
