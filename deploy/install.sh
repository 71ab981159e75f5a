#!/usr/bin/env bash
# Installs shunt on a bare-metal Debian host from source: build dependencies, the release binary, an example
# config and the systemd unit. Re-running it upgrades the binary and unit and keeps an existing config.
# The Debian package (`make deb`, deploy/README.md) is the other way, into /usr.
#
#   deploy/install.sh            install (as root)
#   deploy/install.sh --uninstall
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
etc=/etc/shunt
unit=/etc/systemd/system/shunt.service

die() { echo "install.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root"

if [[ ${1:-} == --uninstall ]]; then
  systemctl disable --now shunt.service 2>/dev/null || true
  rm -f "$unit" "$prefix/bin/shunt" "$prefix/bin/shunt-bench"
  rm -rf "$prefix/share/doc/shunt"
  systemctl daemon-reload 2>/dev/null || true
  echo "removed shunt (config kept in $etc)"
  exit 0
fi

make deps build
deploy/check-host.sh || die "the host is missing something shunt needs (see above)"
install -Dm755 target/release/shunt "$prefix/bin/shunt"
install -Dm755 target/release/shunt-bench "$prefix/bin/shunt-bench" 2>/dev/null || true
install -Dm644 README.md "$prefix/share/doc/shunt/README.md"
install -Dm644 -t "$prefix/share/doc/shunt/docs" docs/*.md
install -Dm644 config/example.toml "$prefix/share/doc/shunt/example.toml"
if [[ ! -e $etc/shunt.toml ]]; then
  install -Dm644 config/example.toml "$etc/shunt.toml"
  echo "wrote $etc/shunt.toml from config/example.toml: set interface, ports, queues and cores before starting"
fi
# The unit names the package's paths (/usr/bin, /usr/share/doc); this install lives under $prefix.
sed -e "s#/usr/bin/shunt#$prefix/bin/shunt#g" -e "s#/usr/share/doc/shunt#$prefix/share/doc/shunt#g" \
  deploy/shunt.service >"$unit.tmp"
install -Dm644 "$unit.tmp" "$unit"
rm -f "$unit.tmp"
systemctl daemon-reload
echo "installed; check the config with: shunt check-config $etc/shunt.toml"
echo "then: systemctl enable --now shunt.service; journalctl -u shunt -f"
