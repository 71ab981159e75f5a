//! A server that runs without a config file: `shunt serve --interface IF --port P` on the built-in defaults
//! answers in the lab, and `--print-config` shows the effective configuration, which `check-config` accepts
//! and which reads back as what was printed.

mod common;

use std::time::Duration;

use common::{client_socket, echo_exchange, echo_size, require_lab, EchoOpts, Lab, Side};

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn serve_runs_on_built_in_defaults_and_prints_its_config() {
    require_lab();
    let lab = Lab::new(1);
    let sif = lab.server_if();
    // Core 1: the lab's client runs on core 0.
    let args = ["serve", "--interface", sif.as_str(), "--port", "9000", "--cores", "1", "--quiet"];
    let srv = lab.spawn_server(&args);
    for v6 in [false, true] {
        let sock = client_socket(&lab, v6, 9000);
        let st = echo_exchange(&sock, 0..500, echo_size, &EchoOpts::default()).expect("echo");
        assert_eq!(st.answered, 500, "every echo answered on the defaults");
    }
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("tx_packets"), 1_000, "{}", fin.describe());

    let bin = common::shunt_bin();
    let mut print = vec![bin, "serve", "--interface", sif.as_str(), "--port", "9000", "--cores", "1"];
    print.push("--print-config");
    let out = lab.exec(Side::Server, &print, Duration::from_secs(20));
    assert!(out.success(), "{}", out.combined());
    assert!(
        out.stdout.contains(&format!("interface = \"{sif}\"")) && out.stdout.contains("ports = [9000]"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("cores = [1]"), "the flags are applied: {}", out.stdout);
    let file = lab.tmp_path("printed", "toml");
    std::fs::write(&file, &out.stdout).expect("write the printed config");
    let file = file.display().to_string();
    let check = lab.exec(Side::Server, &[bin, "check-config", file.as_str()], Duration::from_secs(20));
    assert!(check.success(), "the printed config is valid: {}", check.combined());
    let again =
        lab.exec(Side::Server, &[bin, "serve", "--config", file.as_str(), "--print-config"], Duration::from_secs(20));
    assert_eq!(again.stdout, out.stdout, "printing the printed config gives it back");

    // Without a config file, the interface and the ports are needed: exit 2 naming the key.
    let missing = lab.exec(Side::Server, &[bin, "serve", "--port", "9000"], Duration::from_secs(20));
    assert_eq!(missing.code(), Some(2), "{}", missing.combined());
    assert!(missing.stderr.contains("`interface`"), "{}", missing.combined());
    lab.assert_no_xdp_within(Duration::from_secs(1));
}
