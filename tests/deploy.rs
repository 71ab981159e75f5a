//! Deployment: `deploy/tune-nic.sh`, the systemd unit `deploy/shunt.service` (its security rating, its system
//! call filter and capabilities applied to the real server, `Type=notify` readiness), the Debian package
//! (`make deb`), the fleet examples (`deploy/fleet/`), and shellcheck over every deploy script.
//!
//! Tests that need root (a lab, dpkg into a throw-away root, mount namespaces) are lab tests: ignored by a plain
//! `cargo test`, run by `make test` with --include-ignored. The others need only the Debian packages `make deps`
//! installs (shellcheck, systemd, bird2, python3-yaml) and fail, naming the package, without them.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UNIT: &str = "deploy/shunt.service";
const TUNE_NIC: &str = "deploy/tune-nic.sh";
const SANDBOX: &str = "deploy/unit-sandbox.py";
/// `systemd-analyze security --offline=true deploy/shunt.service` with systemd 252 (Debian 12), measured when
/// the unit was written: 2.1 "OK". A change that weakens the sandbox raises it and fails the test.
const MAX_EXPOSURE: f64 = 2.1;
/// The capabilities shunt checks for at start-up (src/control/server.rs) plus CAP_IPC_LOCK for the UMEM.
const UNIT_CAPS: [&str; 5] = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_PERFMON", "CAP_IPC_LOCK"];
const ECHO_PORT: u16 = 9000;
const T: Duration = Duration::from_secs(60);

/// Exit codes of tune-nic.sh.
const TUNE_USAGE: i32 = 2;
const TUNE_REFUSED: i32 = 3;

fn tool(name: &str, package: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("`{name}` is not installed: the Debian package {package} provides it (`make deps` installs it)");
}

fn repo(rel: &str) -> String {
    repo_path(rel).display().to_string()
}

/// `[Service]` entries of a unit file, in order.
fn unit_entries(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
        } else if section == "Service" {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn unit_values(entries: &[(String, String)], key: &str) -> Vec<String> {
    entries.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
}

/// "Overall exposure level for shunt.service: 2.1 OK" -> 2.1
fn exposure(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no 'Overall exposure level' line in:\n{out}"));
    let after = line.rsplit(':').next().unwrap_or("");
    after
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"))
}

fn security_exposure(unit: &Path) -> f64 {
    let sa = tool("systemd-analyze", "systemd");
    let u = unit.display().to_string();
    let out = run_cmd(&[sa.as_str(), "security", "--offline=true", "--no-pager", &u], T);
    assert!(out.success(), "systemd-analyze security failed:\n{}", out.combined());
    let score = exposure(&out.stdout);
    // The same bound through systemd-analyze's own threshold (0..100 scale).
    let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0).round() as u32);
    let out = run_cmd(&[sa.as_str(), "security", "--offline=true", "--no-pager", &threshold, &u], T);
    assert!(out.success(), "exposure above {MAX_EXPOSURE} by systemd-analyze --threshold:\n{}", out.combined());
    score
}

// ---------------------------------------------------------------------------------------------------------
// Without root
// ---------------------------------------------------------------------------------------------------------

#[test]
fn deploy_scripts_are_shellcheck_clean() {
    let sc = tool("shellcheck", "shellcheck");
    let mut files: Vec<String> = ["tune-nic.sh", "build-deb.sh", "lab.sh", "demo.sh", "install.sh", "check-host.sh"]
        .iter()
        .map(|f| repo(&format!("deploy/{f}")))
        .collect();
    files.extend(["postinst", "prerm", "postrm"].iter().map(|f| repo(&format!("deploy/debian/{f}"))));
    let mut argv = vec![sc.clone(), "--shell=bash".into(), "--severity=style".into()];
    // The maintainer scripts are POSIX sh: check them as such.
    let (bash, sh): (Vec<String>, Vec<String>) = files.into_iter().partition(|f| f.ends_with(".sh"));
    argv.extend(bash);
    let out = run_cmd(&argv, T);
    assert!(out.success(), "shellcheck found problems:\n{}", out.combined());
    let mut argv = vec![sc, "--shell=sh".into(), "--severity=style".into()];
    argv.extend(sh);
    let out = run_cmd(&argv, T);
    assert!(out.success(), "shellcheck found problems in the maintainer scripts:\n{}", out.combined());
}

#[test]
fn unit_is_notify_with_exactly_the_needed_capabilities_and_a_low_exposure() {
    let e = unit_entries(&repo_path(UNIT));
    assert_eq!(unit_values(&e, "Type"), ["notify"], "Type=notify: shunt sends READY=1 once it serves");
    let caps = |key: &str| -> BTreeSet<String> {
        unit_values(&e, key).iter().flat_map(|v| v.split_whitespace().map(str::to_string)).collect()
    };
    let want: BTreeSet<String> = UNIT_CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(caps("AmbientCapabilities"), want, "AmbientCapabilities");
    assert_eq!(caps("CapabilityBoundingSet"), want, "CapabilityBoundingSet");
    assert_eq!(unit_values(&e, "NoNewPrivileges"), ["yes"]);
    assert_eq!(
        unit_values(&e, "RestrictAddressFamilies"),
        ["AF_XDP AF_NETLINK AF_UNIX AF_INET AF_INET6"],
        "RestrictAddressFamilies"
    );
    assert!(
        unit_values(&e, "SystemCallFilter").iter().any(|v| v.split_whitespace().any(|s| s == "@system-service")),
        "SystemCallFilter starts from @system-service"
    );

    // Every command line of the unit uses the packaged binary with a subcommand and flags it accepts.
    let bin = shunt_bin();
    for key in ["ExecStartPre", "ExecStart"] {
        for line in unit_values(&e, key) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words.first(), Some(&"/usr/bin/shunt"), "{key}= runs the packaged binary: {line}");
            let sub = words.get(1).copied().unwrap_or_default();
            let help = run_cmd(&[bin, sub, "--help"], T);
            assert!(help.success(), "`shunt {sub} --help` (from {key}=) failed:\n{}", help.combined());
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(help.stdout.contains(flag), "{key}= passes {flag}, which `shunt {sub}` does not know");
            }
        }
    }

    let score = security_exposure(&repo_path(UNIT));
    eprintln!("systemd-analyze security --offline=true {UNIT}: overall exposure {score}");
    assert!(score <= MAX_EXPOSURE, "exposure {score} is above the measured {MAX_EXPOSURE}");
}

#[test]
fn tune_nic_rejects_bad_usage_with_exit_2() {
    let script = repo(TUNE_NIC);
    let cases: [(&[&str], &str); 6] = [
        (&[], "which interface"),
        (&["lo"], "--workers must be"),
        (&["lo", "--workers", "0"], "--workers must be"),
        (&["lo", "--workers", "2", "--steer", "ntuple"], "--steer ntuple needs --ports"),
        (&["lo", "--workers", "2", "--cores", "0,0"], "named twice"),
        (&["shuntnosuchif0", "--workers", "1", "--dry-run"], "no interface named 'shuntnosuchif0'"),
    ];
    for (args, message) in cases {
        let mut argv = vec![script.as_str()];
        argv.extend_from_slice(args);
        let out = run_cmd(&argv, T);
        assert_eq!(out.code(), Some(TUNE_USAGE), "usage error expected:\n{}", out.combined());
        assert!(out.stderr.contains(message), "expected {message:?} on stderr:\n{}", out.combined());
    }
    let help = run_cmd(&[script.as_str(), "--help"], T);
    assert!(help.success() && help.stdout.contains("--dry-run"), "--help:\n{}", help.combined());
}

/// `python3 -c yaml.safe_load_all` -> JSON documents.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let py = tool("python3", "python3");
    let code = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let p = path.display().to_string();
    let out = run_cmd(&[py.as_str(), "-c", code, &p], T);
    assert!(out.success(), "{p} is not valid YAML (or python3-yaml is missing: make deps):\n{}", out.combined());
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON from python");
    v.as_array().cloned().unwrap_or_default()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur
}

#[test]
fn fleet_manifests_parse_and_match_the_unit() {
    let docs = yaml_documents(&repo_path("deploy/fleet/daemonset.yaml"));
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in daemonset.yaml"));
    let ds = kind("DaemonSet");
    let pod = get(ds, "spec.template.spec");
    assert_eq!(pod["hostNetwork"], Value::Bool(true), "hostNetwork");
    let c = get(pod, "containers.0");
    let sc = &c["securityContext"];
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().unwrap_or_default()))
        .collect();
    let want: BTreeSet<String> = UNIT_CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(added, want, "the DaemonSet adds exactly the unit's capabilities");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "drop ALL");
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_ne!(sc["privileged"], Value::Bool(true), "not privileged");
    // A Guaranteed pod with whole CPUs: the static CPU manager's condition for exclusive cores.
    let res = &c["resources"];
    assert_eq!(res["requests"], res["limits"], "requests == limits (Guaranteed QoS)");
    let cpu = res["limits"]["cpu"].as_str().expect("limits.cpu as a string");
    assert!(cpu.parse::<u32>().is_ok(), "whole CPUs for the static CPU manager, got {cpu:?}");

    // The ConfigMap's shunt.toml is a valid config, its cores fit the CPUs asked for, and the readiness probe
    // hits its metrics endpoint.
    let toml = kind("ConfigMap")["data"]["shunt.toml"].as_str().expect("shunt.toml in the ConfigMap").to_string();
    let dir = std::env::temp_dir().join(format!("shunt-deploy-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shunt.toml");
    fs::write(&file, &toml).unwrap();
    let out = run_cmd(&[shunt_bin(), "check-config", &file.display().to_string()], T);
    let _ = fs::remove_dir_all(&dir);
    assert!(out.success(), "the ConfigMap's shunt.toml fails check-config:\n{}", out.combined());
    let config: toml_cores::Config = toml_cores::parse(&toml);
    assert!(
        config.cores < cpu.parse::<usize>().unwrap(),
        "the pod asks for {cpu} CPUs: the {} worker cores plus one for the control threads",
        config.cores
    );
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/ready", "readiness on /ready");
    let port = probe["port"].as_u64().expect("probe port");
    assert_eq!(
        config.metrics_listen.as_deref(),
        Some(format!("0.0.0.0:{port}").as_str()),
        "metrics.listen must be reachable by the kubelet on the node's address"
    );

    let docs = yaml_documents(&repo_path("deploy/fleet/metallb.yaml"));
    let svc = docs.iter().find(|d| d["kind"] == "Service").expect("a Service in metallb.yaml");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local", "announce only from nodes with a ready pod");
    assert_eq!(svc["spec"]["selector"], get(ds, "spec.selector.matchLabels").clone(), "the Service selects the pods");

    // The service addresses are on no interface of the node (MetalLB) or on lo (the bare-metal drop-in), never
    // on the served one: the config must list them, or shunt would serve only the interface's own addresses.
    let lb = svc["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"].as_str().expect("loadBalancerIPs");
    let dropin = fs::read_to_string(repo_path("deploy/fleet/shunt-anycast.conf")).unwrap();
    for addr in [lb, "198.18.100.1", "2001:2:0:100::1"] {
        assert!(config.addresses.iter().any(|a| a == addr), "the ConfigMap's xdp.addresses lists {addr}");
    }
    for addr in &config.addresses {
        let prefix = if addr.contains(':') { 128 } else { 32 };
        assert!(dropin.contains(&format!("replace {addr}/{prefix} dev lo")), "the drop-in puts {addr} on lo");
    }
}

/// The keys of a shunt.toml the fleet test needs, read with the toml crate's parser through serde_json.
mod toml_cores {
    pub struct Config {
        pub cores: usize,
        pub metrics_listen: Option<String>,
        pub addresses: Vec<String>,
    }
    pub fn parse(text: &str) -> Config {
        let v: toml::Value = toml::from_str(text).expect("TOML");
        let cores = v.get("workers").and_then(|w| w.get("cores")).and_then(|c| c.as_array()).map_or(0, |a| a.len());
        let metrics_listen =
            v.get("metrics").and_then(|m| m.get("listen")).and_then(|l| l.as_str()).map(str::to_string);
        let addresses = v
            .get("xdp")
            .and_then(|x| x.get("addresses"))
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Config { cores, metrics_listen, addresses }
    }
}

#[test]
fn fleet_bird_configs_parse() {
    let bird = tool("bird", "bird2");
    for f in ["deploy/fleet/bird-host.conf", "deploy/fleet/bird-tor.conf"] {
        let out = run_cmd(&[bird.as_str(), "-p", "-c", &repo(f)], T);
        assert!(out.success(), "`bird -p -c {f}` rejects it:\n{}", out.combined());
    }
    // The drop-in toggles exactly the addresses the host config announces.
    let dropin = fs::read_to_string(repo_path("deploy/fleet/shunt-anycast.conf")).unwrap();
    let host = fs::read_to_string(repo_path("deploy/fleet/bird-host.conf")).unwrap();
    for (addr, prefix) in
        [("198.18.100.1/32", "198.18.100.0/24{32,32}"), ("2001:2:0:100::1/128", "2001:2:0:100::/64{128,128}")]
    {
        assert!(dropin.contains(&format!("replace {addr} dev lo")), "ExecStartPost adds {addr}");
        assert!(dropin.contains(&format!("del {addr} dev lo")), "ExecStopPost removes {addr}");
        assert!(host.contains(prefix), "bird-host.conf imports {prefix} from lo");
    }
}

// ---------------------------------------------------------------------------------------------------------
// tune-nic in the lab
// ---------------------------------------------------------------------------------------------------------

/// Everything tune-nic could change on the server interface, as text.
fn interface_state(lab: &Lab) -> String {
    let ifc = lab.server_if();
    let mut s = String::new();
    for argv in [
        vec!["ethtool", "-k", ifc.as_str()],
        vec!["ethtool", "-l", ifc.as_str()],
        vec!["ip", "-d", "link", "show", "dev", ifc.as_str()],
        vec!["cat", &format!("/sys/class/net/{ifc}/napi_defer_hard_irqs")],
        vec!["cat", &format!("/sys/class/net/{ifc}/gro_flush_timeout")],
    ] {
        let out = lab.exec(Side::Server, &argv, T);
        s += &format!("$ {}\n{}{}\n", argv.join(" "), out.stdout, out.stderr);
    }
    s
}

fn tune_nic(lab: &Lab, args: &[&str]) -> CmdOutput {
    let script = repo(TUNE_NIC);
    let ifc = lab.server_if();
    let mut argv = vec![script.as_str(), ifc.as_str()];
    argv.extend_from_slice(args);
    lab.exec(Side::Server, &argv, T)
}

fn refusals(out: &CmdOutput) -> Vec<String> {
    out.stderr.lines().filter_map(|l| l.strip_prefix("tune-nic: refused: ")).map(str::to_string).collect()
}

fn commands(out: &CmdOutput, marker: &str) -> Vec<String> {
    out.stdout.lines().filter_map(|l| l.trim_start().strip_prefix(marker)).map(|c| c.trim().to_string()).collect()
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn tune_nic_on_veth_refuses_what_veth_cannot_do_and_changes_nothing() {
    require_lab();
    let lab = Lab::new(2);
    let before = interface_state(&lab);

    let dry = tune_nic(&lab, &["--workers", "2", "--dry-run"]);
    eprintln!("{}", dry.combined());
    assert_eq!(dry.code(), Some(TUNE_REFUSED), "veth cannot be tuned for 2 workers:\n{}", dry.combined());
    let r = refusals(&dry);
    assert_eq!(r.len(), 3, "three refusals (channels, IRQs, steering):\n{}", dry.combined());
    assert!(r[0].starts_with("combined channels: veth has none"), "{r:?}");
    assert!(r[1].starts_with("queue IRQs:") && r[1].contains("virtual device"), "{r:?}");
    assert!(r[2].starts_with("flow steering: veth has no RSS hash configuration"), "{r:?}");
    assert!(dry.stdout.contains("native XDP: yes"), "veth has native XDP (kernel xdp-features):\n{}", dry.stdout);
    assert!(dry.stdout.contains("zero-copy AF_XDP: no"), "veth has no zero-copy:\n{}", dry.stdout);
    assert!(commands(&dry, "would run").is_empty(), "nothing left to do on veth:\n{}", dry.stdout);
    assert_eq!(interface_state(&lab), before, "a dry run changed the interface");

    // For real, asking for more (ports, busy polling): refused before anything changes, busy polling too
    // (veth's sockets are copy-mode), even though veth has the sysfs knobs it would write.
    let real = tune_nic(&lab, &["--workers", "2", "--ports", "9000,9001", "--poll-mode", "busy_poll"]);
    eprintln!("{}", real.combined());
    assert_eq!(real.code(), Some(TUNE_REFUSED), "{}", real.combined());
    let r = refusals(&real);
    assert_eq!(r.len(), 4, "{}", real.combined());
    assert!(r[2].contains("ntuple-filters: off [fixed]"), "with ports, ntuple is tried too: {r:?}");
    assert!(r[3].starts_with("busy polling: veth has no zero-copy AF_XDP"), "{r:?}");
    assert!(real.stdout.contains("nothing was changed"), "{}", real.stdout);
    assert!(commands(&real, "run ").is_empty(), "ran commands although refused:\n{}", real.stdout);
    assert_eq!(interface_state(&lab), before, "a refused run changed the interface");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn tune_nic_on_veth_turns_udp_gro_off_once_and_is_idempotent() {
    require_lab();
    let lab = Lab::new(1);
    let ifc = lab.server_if();
    lab.exec(Side::Server, &["ethtool", "-K", &ifc, "rx-gro-list", "on", "rx-udp-gro-forwarding", "on"], T)
        .expect_success();
    let skip = ["--workers", "1", "--skip", "channels,irqs,steer"];

    let before = interface_state(&lab);
    let mut dry_args = skip.to_vec();
    dry_args.push("--dry-run");
    let dry = tune_nic(&lab, &dry_args);
    assert_eq!(dry.code(), Some(0), "{}", dry.combined());
    let want = [format!("ethtool -K {ifc} rx-gro-list off"), format!("ethtool -K {ifc} rx-udp-gro-forwarding off")];
    assert_eq!(commands(&dry, "would run"), want, "dry run plan:\n{}", dry.stdout);
    assert_eq!(interface_state(&lab), before, "a dry run changed the interface");

    let first = tune_nic(&lab, &skip);
    eprintln!("{}", first.combined());
    assert_eq!(first.code(), Some(0), "{}", first.combined());
    assert_eq!(commands(&first, "run "), want, "{}", first.stdout);
    let k = lab.exec(Side::Server, &["ethtool", "-k", &ifc], T).stdout;
    for f in ["rx-gro-list: off", "rx-udp-gro-forwarding: off"] {
        assert!(k.lines().any(|l| l.trim() == f), "{f} after tune-nic:\n{k}");
    }

    let second = tune_nic(&lab, &skip);
    assert_eq!(second.code(), Some(0), "{}", second.combined());
    assert!(commands(&second, "run ").is_empty(), "the second run changed something:\n{}", second.stdout);
    assert!(second.stdout.contains("is already tuned; nothing to change"), "{}", second.stdout);
}

/// A stand-in `ethtool` answering like an i40e NIC with 8 combined channels (4 in use), an RSS table over
/// queues 0..3, UDP hashed on addresses only, ntuple filters off with one rule (UDP/IPv4 9001 -> queue 3) and
/// hardware GRO on; it logs every changing call to $FAKE_ETHTOOL_LOG and changes nothing. Outputs are in the
/// format of ethtool 6.1.
const FAKE_ETHTOOL: &str = r#"#!/bin/bash
log() { printf '%s\n' "ethtool $*" >>"$FAKE_ETHTOOL_LOG"; }
case "$1" in
-i) printf 'driver: i40e\nversion: 6.1.0\nfirmware-version: 8.70\nbus-info: 0000:3b:00.0\nsupports-statistics: yes\n' ;;
-l) printf 'Channel parameters for %s:\nPre-set maximums:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t8\nCurrent hardware settings:\nRX:\t\tn/a\nTX:\t\tn/a\nOther:\t\t1\nCombined:\t4\n' "$2" ;;
-x) printf 'RX flow hash indirection table for %s with 4 RX ring(s):\n' "$2"
    for i in 0 8 16 24; do printf '%5d:      0     1     2     3     0     1     2     3\n' "$i"; done
    printf 'RSS hash key:\n6d:5a:56:da:25:5b:0e:c2:41:67\nRSS hash function:\n    toeplitz: on\n' ;;
-k) printf 'Features for %s:\nlarge-receive-offload: off [fixed]\nntuple-filters: off\nrx-gro-hw: on\nrx-gro-list: off\nrx-udp-gro-forwarding: off\n' "$2" ;;
-n) if [[ ${3:-} == rx-flow-hash ]]; then
        printf 'UDP over IPV%s flows use these fields for computing Hash flow key:\nIP SA\nIP DA\n\n' "${4#udp}"
    else
        printf '4 RX rings available\nTotal 1 rules\n\nFilter: 1022\n\tRule Type: UDP over IPv4\n\tSrc IP addr: 0.0.0.0 mask: 255.255.255.255\n\tDest IP addr: 0.0.0.0 mask: 255.255.255.255\n\tTOS: 0x0 mask: 0xff\n\tSrc port: 0 mask: 0xffff\n\tDest port: 9001 mask: 0x0\n\tAction: Direct to queue 3\n\n'
    fi ;;
-L|-N|-K|-X) log "$@" ;;
*) echo "fake ethtool: unexpected $*" >&2; exit 64 ;;
esac
"#;

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn tune_nic_plans_channels_rss_and_ntuple_for_a_multiqueue_nic() {
    require_lab();
    let lab = Lab::new(1);
    let ifc = lab.server_if();
    let dir = lab.dir().join("fake-ethtool");
    fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("ethtool");
    fs::write(&fake, FAKE_ETHTOOL).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("log");
    let path = format!("PATH={}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let log_env = format!("FAKE_ETHTOOL_LOG={}", log.display());
    let script = repo(TUNE_NIC);
    let run = |args: &[&str]| {
        let _ = fs::remove_file(&log);
        let mut argv = vec!["env", path.as_str(), log_env.as_str(), script.as_str(), ifc.as_str()];
        argv.extend_from_slice(args);
        let out = lab.exec(Side::Server, &argv, T);
        eprintln!("{}", out.combined());
        let logged = fs::read_to_string(&log).unwrap_or_default();
        (out, logged.lines().map(str::to_string).collect::<Vec<_>>())
    };
    let cmd = |s: &str| s.replace("IF", &ifc);

    // RSS (auto: the hash is configurable): shrink the table before the channels, hash on ports, table again
    // after the channel change, hardware GRO off. IRQs skipped (the interface is a veth underneath).
    let rss_plan: Vec<String> = [
        "ethtool -X IF equal 2",
        "ethtool -L IF combined 2",
        "ethtool -N IF rx-flow-hash udp4 sdfn",
        "ethtool -N IF rx-flow-hash udp6 sdfn",
        "ethtool -X IF equal 2",
        "ethtool -K IF rx-gro-hw off",
    ]
    .iter()
    .map(|s| cmd(s))
    .collect();
    let (dry, logged) = run(&["--workers", "2", "--cores", "0,1", "--skip", "irqs", "--dry-run"]);
    assert_eq!(dry.code(), Some(0), "{}", dry.combined());
    let planned: Vec<String> =
        commands(&dry, "would run").iter().map(|c| c.split("   (").next().unwrap_or("").to_string()).collect();
    assert_eq!(planned, rss_plan, "dry-run plan:\n{}", dry.stdout);
    assert!(logged.is_empty(), "a dry run called ethtool to change something: {logged:?}");
    assert!(dry.stdout.contains("combined channels: 4 now, 2 wanted (maximum 8)"), "{}", dry.stdout);

    let (real, logged) = run(&["--workers", "2", "--cores", "0,1", "--skip", "irqs"]);
    assert_eq!(real.code(), Some(0), "{}", real.combined());
    assert_eq!(logged, rss_plan, "commands run");
    assert!(real.stdout.contains("tuned (6 change(s))"), "{}", real.stdout);

    // ntuple: turn the feature on, one rule per port and family (port i -> queue i mod 2), the stale rule
    // for 9001 (queue 3) deleted first.
    let (nt, logged) =
        run(&["--workers", "2", "--steer", "ntuple", "--ports", "9000,9001", "--skip", "irqs,channels", "--dry-run"]);
    assert_eq!(nt.code(), Some(0), "{}", nt.combined());
    assert!(logged.is_empty(), "{logged:?}");
    let nt_plan: Vec<String> = [
        "ethtool -K IF ntuple on",
        "ethtool -N IF flow-type udp4 dst-port 9000 action 0",
        "ethtool -N IF flow-type udp6 dst-port 9000 action 0",
        "ethtool -N IF delete 1022",
        "ethtool -N IF flow-type udp4 dst-port 9001 action 1",
        "ethtool -N IF flow-type udp6 dst-port 9001 action 1",
        "ethtool -K IF rx-gro-hw off",
    ]
    .iter()
    .map(|s| cmd(s))
    .collect();
    assert_eq!(commands(&nt, "would run"), nt_plan, "{}", nt.stdout);

    // More workers than the NIC has channels: refused, nothing called.
    let (too_many, logged) = run(&["--workers", "16", "--skip", "irqs"]);
    assert_eq!(too_many.code(), Some(TUNE_REFUSED), "{}", too_many.combined());
    assert_eq!(refusals(&too_many), [format!("combined channels: {ifc} has at most 8, asked for 16 workers")]);
    assert!(logged.is_empty(), "{logged:?}");
}

// ---------------------------------------------------------------------------------------------------------
// The unit's sandbox, applied to the real server
// ---------------------------------------------------------------------------------------------------------

/// A directory every user can read, with copies of what the dynamic user must reach (the repository may sit
/// under a directory only root can enter): the binary, the unit, the sandbox script, the lab config; and an
/// `out/` every user can write (report, notify socket).
struct SandboxFiles {
    dir: PathBuf,
    bin: String,
    unit: String,
    script: String,
    config: String,
    out: PathBuf,
}

fn sandbox_files(lab: &Lab, config: &Path) -> SandboxFiles {
    let dir = lab.dir().join("sandbox");
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let copy = |from: &Path, mode: u32| -> String {
        let to = dir.join(from.file_name().unwrap());
        fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).unwrap();
        to.display().to_string()
    };
    let files = SandboxFiles {
        bin: copy(Path::new(shunt_bin()), 0o755),
        unit: copy(&repo_path(UNIT), 0o644),
        script: copy(&repo_path(SANDBOX), 0o755),
        config: copy(config, 0o644),
        out: out.clone(),
        dir: dir.clone(),
    };
    // The lab directory itself must be traversable.
    let mut p = dir.as_path();
    while let Some(parent) = p.parent() {
        if parent == Path::new("/") || parent == std::env::temp_dir() {
            break;
        }
        let mode = fs::metadata(parent).unwrap().permissions().mode();
        fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o755)).unwrap();
        p = parent;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    files
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn server_runs_under_the_units_sandbox_and_notifies_ready_once_serving() {
    require_lab();
    tool("setpriv", "util-linux");
    let py = tool("python3", "python3");
    let check = run_cmd(&[py.as_str(), "-c", "import seccomp"], T);
    assert!(check.success(), "python3-seccomp is missing (make deps installs it):\n{}", check.combined());

    let lab = Lab::new(1);
    let f = sandbox_files(&lab, &lab_config());
    let notify_path = f.out.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777)).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let notify_env = format!("NOTIFY_SOCKET={}", notify_path.display());
    let report = f.out.join("report.json").display().to_string();
    let metrics_port = "9464";
    let metrics = format!("127.0.0.1:{metrics_port}");

    // The copy of the binary, through the sandbox, with NOTIFY_SOCKET set as systemd would.
    let wrapper =
        ["env", notify_env.as_str(), py.as_str(), f.script.as_str(), "--unit", f.unit.as_str(), "--", f.bin.as_str()];
    let args = [
        "serve",
        "--config",
        f.config.as_str(),
        "--interface",
        &lab.server_if(),
        "--report",
        &report,
        "--metrics",
        &metrics,
    ];
    let mut srv = spawn_sandboxed(&lab, &wrapper, &args);

    // READY=1 arrives on the notify socket; at that moment the port already answers.
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 256];
    let msg = loop {
        match notify.recv(&mut buf) {
            Ok(n) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) if Instant::now() < deadline && srv.try_alive() => continue,
            Err(e) => {
                let out = srv.kill();
                panic!("no READY=1 on {notify_env} ({e})\n{}", out.describe());
            }
        }
    };
    assert_eq!(msg.trim(), "READY=1", "notify message");
    let sock = client_socket(&lab, false, ECHO_PORT);
    let one = EchoOpts { window: 1, rto: Duration::from_secs(1), max_tries: 1, deadline: Duration::from_secs(5) };
    echo_exchange(&sock, 0..1, echo_size, &one)
        .unwrap_or_else(|e| panic!("first request right after READY=1 not answered: {e}\n{}", srv.describe()));
    assert!(lab.server_xdp().is_some(), "XDP program attached while serving");

    // The process runs as the dynamic user with exactly the unit's capabilities, seccomp filters on.
    let status = fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("").to_string();
    let uid: u32 = field("Uid:").split_whitespace().next().unwrap().parse().unwrap();
    assert!((61184..=65519).contains(&uid), "runs as a dynamic user, uid {uid}");
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_PERFMON 38, CAP_BPF 39.
    let caps = format!("{:016x}", (1u64 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39));
    for k in ["CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(k), caps, "{k} of the server");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");

    // Traffic through every path: IPv4 and IPv6 echo, and the metrics endpoint (AF_INET, the readiness probe).
    for v6 in [false, true] {
        let sock = client_socket(&lab, v6, ECHO_PORT);
        echo_exchange(&sock, 0..2000, echo_size, &EchoOpts::default())
            .unwrap_or_else(|e| panic!("echo under the sandbox (v6={v6}): {e}\n{}", srv.describe()));
    }
    let body = lab.in_server(|| http_get(&metrics, "/metrics"));
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("shunt_rx_packets"), "metrics:\n{body}");

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert!(fin.report_u64("rx_packets") >= 4001, "report written by the dynamic user\n{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
    let _ = fs::remove_dir_all(&f.dir);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn server_without_bpf_in_the_filter_is_killed_by_sigsys() {
    require_lab();
    let py = tool("python3", "python3");
    let lab = Lab::new(1);
    let f = sandbox_files(&lab, &lab_config());
    // The negative control: the same sandbox minus bpf() must kill the server, proving the filter is applied.
    let wrapper = [py.as_str(), f.script.as_str(), "--unit", f.unit.as_str(), "--deny", "bpf", "--", f.bin.as_str()];
    let args = ["serve", "--config", f.config.as_str(), "--interface", &lab.server_if()];
    let mut srv = spawn_sandboxed(&lab, &wrapper, &args);
    let exited = srv.child.as_mut().and_then(|c| wait_exit(c, READY_TIMEOUT));
    assert!(exited.is_some(), "the server kept running without bpf()\n{}", srv.describe());
    let fin = srv.kill();
    assert_eq!(fin.status.signal(), Some(libc::SIGSYS), "killed by SIGSYS\n{}", fin.describe());
    assert!(!contains_word(&fin.stderr, "ready"), "it must not get as far as ready\n{}", fin.describe());
    assert!(lab.server_xdp().is_none(), "nothing attached");
}

/// The server through `wrapper` (which ends with the binary to run) with `args`, in the server namespace.
fn spawn_sandboxed(lab: &Lab, wrapper: &[&str], args: &[&str]) -> Sandboxed {
    let stderr_path = lab.tmp_path("sandboxed", "stderr");
    let stdout_path = lab.tmp_path("sandboxed", "stdout");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &lab.server_ns()])
        .args(wrapper)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap());
    let cmdline = format!("ip netns exec {} {} {}", lab.server_ns(), wrapper.join(" "), args.join(" "));
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    Sandboxed { child: Some(child), cmdline, stdout_path, stderr_path }
}

/// A server started by [`spawn_sandboxed`]; killed on drop.
struct Sandboxed {
    child: Option<std::process::Child>,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

struct SandboxedExit {
    status: std::process::ExitStatus,
    stderr: String,
    text: String,
}

impl SandboxedExit {
    fn describe(&self) -> String {
        self.text.clone()
    }
    fn assert_clean_exit(&self) {
        assert_eq!(self.status.code(), Some(0), "server did not exit cleanly\n{}", self.describe());
    }
    fn report_u64(&self, key: &str) -> u64 {
        let path = self.text.lines().find_map(|l| l.strip_prefix("report: ")).unwrap_or("").to_string();
        let v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("report {path}: {e}\n{}", self.describe()));
        v[key].as_u64().unwrap_or_else(|| panic!("report has no {key}\n{}", self.describe()))
    }
}

impl Sandboxed {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
    fn try_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    fn describe(&self) -> String {
        format!(
            "$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }
    fn finish(&mut self, status: std::process::ExitStatus) -> SandboxedExit {
        self.child = None;
        let report = self.cmdline.split_whitespace().skip_while(|w| *w != "--report").nth(1).unwrap_or("").to_string();
        SandboxedExit {
            status,
            stderr: fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            text: format!("[{}]\nreport: {report}\n{}", describe_status(&status), self.describe()),
        }
    }
    fn stop(mut self) -> SandboxedExit {
        let pid = self.pid();
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        match self.child.as_mut().and_then(|c| wait_exit(c, STOP_TIMEOUT)) {
            Some(st) => self.finish(st),
            None => {
                let out = self.kill();
                panic!("server did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", out.describe());
            }
        }
    }
    fn kill(&mut self) -> SandboxedExit {
        let mut child = self.child.take().expect("child");
        if let Ok(Some(st)) = child.try_wait() {
            self.child = Some(child);
            return self.finish(st);
        }
        let _ = child.kill();
        let st = child.wait().expect("reap");
        self.finish(st)
    }
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bounded HTTP/1.1 GET; the whole response as text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------------------
// The Debian package
// ---------------------------------------------------------------------------------------------------------

/// A throw-away dpkg root, removed on drop.
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn built_deb() -> PathBuf {
    let dir = repo_path("target/debian");
    let prefix = format!("shunt_{}-1_", env!("CARGO_PKG_VERSION"));
    let found = fs::read_dir(&dir).ok().and_then(|rd| {
        rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
    });
    found.unwrap_or_else(|| {
        panic!("no {}/{prefix}*.deb: build it first with `make deb` (`make test` does)", dir.display())
    })
}

fn dpkg(root: &Path, args: &[&str]) -> CmdOutput {
    let r = format!("--root={}", root.display());
    let log = format!("--log={}", root.join("dpkg.log").display());
    // --force-script-chrootless: the maintainer scripts run here with DPKG_ROOT set (they touch only
    // $DPKG_ROOT); --force-depends: the throw-away root has none of the dependencies installed.
    let mut argv =
        vec!["dpkg", r.as_str(), log.as_str(), "--force-script-chrootless", "--force-depends", "--force-confold"];
    argv.extend_from_slice(args);
    run_cmd(&argv, T)
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn deb_installs_into_a_throwaway_root_verifies_and_purges() {
    require_lab();
    let deb = built_deb();
    let deb_s = deb.display().to_string();
    let root = Root(std::env::temp_dir().join(format!("shunt-deb-root-{}", std::process::id())));
    let r = root.0.clone();
    let _ = fs::remove_dir_all(&r);
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("var/lib/dpkg/status"), "").unwrap();

    let install = dpkg(&r, &["-i", &deb_s]);
    assert!(install.success(), "dpkg -i:\n{}", install.combined());
    assert!(install.stdout.contains("shunt: set interface"), "postinst ran (first install):\n{}", install.combined());

    // The packaged files are the tree's (a stale .deb fails here: run `make deb`).
    for (tree, packaged) in [
        (UNIT, "lib/systemd/system/shunt.service"),
        (TUNE_NIC, "usr/sbin/shunt-tune-nic"),
        ("config/example.toml", "etc/shunt/shunt.toml"),
    ] {
        let a = fs::read(repo_path(tree)).unwrap();
        let b = fs::read(r.join(packaged)).unwrap_or_else(|e| panic!("{packaged} not installed: {e}"));
        assert!(a == b, "{packaged} in {deb_s} differs from {tree}: the package is stale, run `make deb`");
    }
    let conffiles = fs::read_to_string(r.join("var/lib/dpkg/info/shunt.conffiles")).unwrap_or_default();
    assert_eq!(conffiles.trim(), "/etc/shunt/shunt.toml", "conffiles");
    assert!(r.join("usr/share/man/man1/shunt.1.gz").exists(), "man page installed");

    // The installed binary runs and accepts the installed config.
    let bin = r.join("usr/bin/shunt").display().to_string();
    let conf = r.join("etc/shunt/shunt.toml").display().to_string();
    let v = run_cmd(&[bin.as_str(), "--version"], T).expect_success();
    assert_eq!(v.stdout.trim(), format!("shunt {}", env!("CARGO_PKG_VERSION")));
    let cc = run_cmd(&[bin.as_str(), "check-config", &conf], T);
    assert!(cc.success() && cc.stdout.contains(": ok"), "check-config of the installed config:\n{}", cc.combined());
    let tn = run_cmd(&[r.join("usr/sbin/shunt-tune-nic").display().to_string().as_str(), "--help"], T);
    assert!(tn.success(), "shunt-tune-nic --help:\n{}", tn.combined());

    // The installed unit verifies with its /usr/bin/shunt and man:shunt(1) resolved from the package: in a
    // private mount namespace, /usr/bin gets the package's files overlaid (nothing changes outside it).
    let unit = r.join("lib/systemd/system/shunt.service");
    let sa = tool("systemd-analyze", "systemd");
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir={r}/usr/bin:/usr/bin /usr/bin; \
         MANPATH={r}/usr/share/man {sa} verify {unit}",
        r = r.display(),
        unit = unit.display()
    );
    let verify = run_cmd(&["unshare", "--mount", "--propagation", "private", "sh", "-c", &script], T);
    assert!(verify.success() && verify.stderr.trim().is_empty(), "systemd-analyze verify:\n{}", verify.combined());
    let score = security_exposure(&unit);
    eprintln!("installed unit: systemd-analyze verify passed; security exposure {score}");

    // Upgrade (re-install) keeps a changed conffile; remove keeps it; purge removes it.
    fs::write(&conf, format!("{}\n# local change\n", fs::read_to_string(&conf).unwrap())).unwrap();
    let again = dpkg(&r, &["-i", &deb_s]);
    assert!(again.success(), "{}", again.combined());
    assert!(again.stdout.contains("shunt: upgraded from 0"), "postinst on upgrade:\n{}", again.combined());
    assert!(fs::read_to_string(&conf).unwrap().contains("# local change"), "the changed conffile was kept");
    let remove = dpkg(&r, &["-r", "shunt"]);
    assert!(remove.success(), "{}", remove.combined());
    assert!(!r.join("usr/bin/shunt").exists(), "binary removed");
    assert!(Path::new(&conf).exists(), "config kept on remove");
    fs::create_dir_all(r.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/shunt.service",
        r.join("etc/systemd/system/multi-user.target.wants/shunt.service"),
    )
    .unwrap();
    let purge = dpkg(&r, &["-P", "shunt"]);
    assert!(purge.success(), "{}", purge.combined());
    assert!(!Path::new(&conf).exists(), "config removed on purge");
    assert!(
        fs::symlink_metadata(r.join("etc/systemd/system/multi-user.target.wants/shunt.service")).is_err(),
        "enablement link removed on purge"
    );
    let status = dpkg(&r, &["-s", "shunt"]);
    assert!(!status.success() || status.stdout.contains("not-installed"), "{}", status.combined());
}
