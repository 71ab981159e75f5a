#!/usr/bin/env bash
# Checks that this host can run shunt, and prints the tuning that matters for latency on bare metal.
# Read-only: it changes nothing.
#
#   deploy/check-host.sh [INTERFACE]
set -uo pipefail
ok=1
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  MISSING %s\n' "$*"; ok=0; }
note() { printf '  note  %s\n' "$*"; }

echo "kernel $(uname -r):"
cfg=/boot/config-$(uname -r)
kconfig() {
  if [[ -r /proc/config.gz ]]; then zgrep -q "^$1=y" /proc/config.gz
  elif [[ -r $cfg ]]; then grep -q "^$1=y" "$cfg"
  else return 2; fi
}
for opt in CONFIG_BPF_SYSCALL CONFIG_XDP_SOCKETS CONFIG_BPF_JIT; do
  kconfig "$opt"; rc=$?
  case $rc in 0) pass "$opt";; 2) note "cannot read the kernel config to check $opt";; *) fail "$opt (rebuild the kernel with it)";; esac
done
[[ -e /sys/kernel/btf/vmlinux ]] && pass "BTF (/sys/kernel/btf/vmlinux)" || note "no kernel BTF (not required by shunt)"
major=$(uname -r | cut -d. -f1); minor=$(uname -r | cut -d. -f2)
if (( major > 5 || (major == 5 && minor >= 15) )); then pass "kernel >= 5.15 (bpf_link XDP attach, need_wakeup, XDP metadata)"
else fail "kernel >= 5.15 (this is $(uname -r))"; fi

if [[ -n ${1:-} ]]; then
  ifc=$1
  echo "interface $ifc:"
  if [[ ! -e /sys/class/net/$ifc ]]; then fail "interface $ifc does not exist"; else
    if [[ -e /sys/class/net/$ifc/device/driver ]]; then
      driver=$(basename "$(readlink -f "/sys/class/net/$ifc/device/driver")")
    else
      driver=$(ethtool -i "$ifc" 2>/dev/null | awk '/^driver:/{print $2}')
    fi
    driver=${driver:-unknown}
    pass "driver $driver"
    case $driver in
      ice|i40e|ixgbe|igc|igb|mlx5_core|stmmac|bnxt_en|virtio_net|veth) pass "driver has native XDP";;
      *) note "driver $driver: native XDP support unknown; use xdp.attach_mode = \"auto\"";;
    esac
    case $driver in
      ice|i40e|ixgbe|igc|mlx5_core|stmmac) pass "driver supports AF_XDP zero-copy (bind_mode = \"auto\" will use it)";;
      *) note "zero-copy unlikely with $driver: sockets will bind in copy mode";;
    esac
    ethtool -l "$ifc" 2>/dev/null | sed -n '/Current hardware settings/,$p' | sed 's/^/        /'
    note "steer the served ports to the served queues, e.g.: ethtool -N $ifc flow-type udp4 dst-port 9000 action 0"
  fi
fi

echo "latency tuning (bare metal; shunt's workers busy-poll their cores):"
iso=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)
[[ -n $iso ]] && pass "isolated cores: $iso" || note "no isolated cores: boot with isolcpus=W nohz_full=W rcu_nocbs=W for the worker cores W"
systemctl is-active --quiet irqbalance 2>/dev/null && note "irqbalance is running: pin the NIC queue IRQs (/proc/irq/N/smp_affinity_list) away from worker cores, or stop it" || pass "irqbalance not running"
gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a")
[[ $gov == performance || $gov == n/a ]] && pass "cpufreq governor: $gov" || note "cpufreq governor is $gov: 'performance' avoids frequency ramp-up on the worker cores"

(( ok )) && echo "host OK" || { echo "host is missing something shunt needs"; exit 1; }
