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
if [[ -e /sys/kernel/btf/vmlinux ]]; then pass "BTF (/sys/kernel/btf/vmlinux)"; else note "no kernel BTF (not required by shunt)"; fi
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
    note "tune the queues, IRQs and flow steering for shunt: deploy/tune-nic.sh $ifc --workers N --cores LIST --dry-run"
  fi
fi

echo "latency tuning (bare metal; shunt's workers busy-poll their cores):"
iso=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)
if [[ -n $iso ]]; then pass "isolated cores: $iso"; else note "no isolated cores: boot with isolcpus=W nohz_full=W rcu_nocbs=W for the worker cores W"; fi
if systemctl is-active --quiet irqbalance 2>/dev/null; then note "irqbalance is running: keep it off the NIC queue IRQs and worker cores (shunt-tune-nic says how), or stop it"; else pass "irqbalance not running"; fi
gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a")
if [[ $gov == performance || $gov == n/a ]]; then pass "cpufreq governor: $gov"; else note "cpufreq governor is $gov: 'performance' avoids frequency ramp-up on the worker cores"; fi

if (( ok )); then echo "host OK"; else echo "host is missing something shunt needs"; exit 1; fi
