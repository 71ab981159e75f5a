#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed with `cargo install cargo-deb --locked` when missing):
#   target/debian/shunt_<version>-1_<arch>.deb
# with /usr/bin/shunt, /lib/systemd/system/shunt.service, /etc/shunt/shunt.toml (a conffile, from
# config/example.toml), /usr/sbin/shunt-tune-nic, the man page shunt(1) made from `shunt --help` by help2man
# (with every subcommand's --help), and the docs. The package's contents are listed in Cargo.toml,
# [package.metadata.deb]. Run by `make deb`; prints the path of the package last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}

if ! "$CARGO" deb --version >/dev/null 2>&1; then
    echo "build-deb: installing cargo-deb (cargo install cargo-deb --locked)"
    "$CARGO" install cargo-deb --locked
fi
command -v help2man >/dev/null || { echo "build-deb: help2man is missing (apt-get install help2man; make deps)" >&2; exit 1; }

"$CARGO" build --release -p shunt --bin shunt
BIN=target/release/shunt
OUT=target/deb
mkdir -p "$OUT"

# help2man documents `shunt --help`; the subcommands' own --help texts go in as extra sections.
{
    for sub in serve check-config stats; do
        printf '[COMMAND: %s]\n' "$(tr '[:lower:]' '[:upper:]' <<<"shunt $sub")"
        printf '.nf\n'
        # roff: a leading dot or quote would be read as a request; a backslash as an escape.
        "$BIN" "$sub" --help | sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
        printf '.fi\n'
    done
    cat <<'H2M'
[FILES]
.TP
.I /etc/shunt/shunt.toml
the configuration (every key with its default: /usr/share/doc/shunt/examples/shunt.toml)
.TP
.I /lib/systemd/system/shunt.service
the systemd unit (Type=notify; capabilities CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK)
.TP
.I /usr/sbin/shunt-tune-nic
NIC tuning: channels, IRQ affinity, flow steering (run it with --help)
[EXIT STATUS]
0 on a clean stop (SIGINT, SIGTERM); 1 when the report could not be written; 2 for a configuration, host or
privilege error (nothing was attached); 3 when a worker died (its handler panicked): detached and stopped.
[SEE ALSO]
/usr/share/doc/shunt/README.md, /usr/share/doc/shunt/docs/ (handlers, configuration, operations,
performance, internals, requirements), /usr/share/doc/shunt/deploying.md, /usr/share/doc/shunt/fleet.md
H2M
} >"$OUT/shunt.h2m"
help2man --no-info --no-discard-stderr --section 1 \
    --name "kernel-bypass UDP server (XDP + AF_XDP, pinned workers)" \
    --include "$OUT/shunt.h2m" --output "$OUT/shunt.1" "$BIN"
gzip -9nf "$OUT/shunt.1"

start=$(date +%s%N)
# --strip: the package carries no debug info (the build profile keeps it for perf in the tree).
deb=$("$CARGO" deb -p shunt --no-build --strip --output target/debian/ | tail -n 1)
end=$(date +%s%N)
[[ -f $deb ]] || { echo "build-deb: cargo deb did not name a package file (got '$deb')" >&2; exit 1; }
echo "build-deb: cargo deb took $(((end - start) / 1000000)) ms"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"
echo "$deb"
