#!/usr/bin/env bash
# Checks that this host can run shunt (`shunt check-host`), and prints the tuning that matters for latency on
# bare metal. Read-only: it changes nothing. Exit 0 when shunt can serve here, 2 otherwise.
#
#   deploy/check-host.sh [INTERFACE]
set -uo pipefail
ok=1
pass() { printf '  ok    %s\n' "$*"; }
note() { printf '  note  %s\n' "$*"; }

# What the kernel and the interface offer is shunt's own probe (`shunt check-host`): each BPF helper by its
# kernel name, kfuncs, bpf_link, AF_XDP, need_wakeup, busy polling, timestamps, io_uring, and the interface's
# native XDP / zero-copy / RX-metadata features, with what shunt does without each. This script adds the
# bare-metal tuning notes that are not features.
shunt_bin=${SHUNT:-$(command -v shunt || true)}
if [[ -z $shunt_bin ]]; then
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  shunt_bin=$here/target/release/shunt
fi
if [[ ! -x $shunt_bin ]]; then
  echo "check-host: no shunt binary (install the package, or build it: make build)" >&2
  exit 2
fi
"$shunt_bin" check-host ${1:+--interface "$1"}
rc=$?
(( rc == 0 )) || ok=0
if [[ -n ${1:-} && -e /sys/class/net/$1 ]]; then
  ethtool -l "$1" 2>/dev/null | sed -n '/Current hardware settings/,$p' | sed 's/^/        /'
  note "tune the queues, IRQs and flow steering for shunt: deploy/tune-nic.sh $1 --workers N --cores LIST --dry-run"
fi

echo "latency tuning (bare metal; shunt's workers busy-poll their cores):"
iso=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)
if [[ -n $iso ]]; then pass "isolated cores: $iso"; else note "no isolated cores: boot with isolcpus=W nohz_full=W rcu_nocbs=W for the worker cores W"; fi
if systemctl is-active --quiet irqbalance 2>/dev/null; then note "irqbalance is running: keep it off the NIC queue IRQs and worker cores (shunt-tune-nic says how), or stop it"; else pass "irqbalance not running"; fi
gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a")
if [[ $gov == performance || $gov == n/a ]]; then pass "cpufreq governor: $gov"; else note "cpufreq governor is $gov: 'performance' avoids frequency ramp-up on the worker cores"; fi

if (( ok )); then echo "host OK"; else echo "host is missing something shunt needs (see above)"; exit 2; fi
