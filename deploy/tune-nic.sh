#!/usr/bin/env bash
# Tunes a NIC for shunt: one combined channel per worker, each queue's IRQ on its worker's core, the served
# UDP ports' flows spread over the worker queues, no hardware/UDP receive aggregation in front of XDP, and
# (only for --poll-mode busy_poll) the NAPI busy-poll knobs. Idempotent: every step reads the current state
# first and changes only what differs, so a second run changes nothing.
#
#   tune-nic.sh IF --workers N [--cores LIST] [--irq-cores LIST] [--ports P,...] [--steer auto|rss|ntuple]
#               [--poll-mode spin|busy_poll] [--defer-hard-irqs N] [--gro-flush-timeout NS]
#               [--skip STEP,...] [--dry-run]
#
#   --workers N        shunt serves queues 0..N-1 (workers.queues = [0, ..., N-1]); the NIC gets N channels
#   --cores LIST       the workers' cores, as in workers.cores (default 0..N-1): "2,3" or "2-3"
#   --irq-cores LIST   where queue i's IRQ goes (default: worker i's core, so the NAPI poll that fills its
#                      RX ring runs next to the worker's cache)
#   --ports P,...      the served UDP ports (needed for --steer ntuple)
#   --steer MODE       rss: hash UDP flows on addresses and ports (ethtool -N rx-flow-hash udp4/udp6 sdfn) and
#                      spread the RSS table over the N queues, so every port's flows use every worker;
#                      ntuple: one rule per port and family, port i -> queue i mod N (a port then uses one
#                      worker); auto (default): rss where the driver supports it, else ntuple
#   --poll-mode MODE   as workers.poll_mode: spin (default), wakeup or adaptive leave the sysfs busy-poll
#                      knobs alone; busy_poll writes napi_defer_hard_irqs and gro_flush_timeout (--defer-hard-irqs,
#                      default 2; --gro-flush-timeout, default 200000 ns) and needs zero-copy AF_XDP
#   --skip STEPS       leave steps out: channels, irqs, steer, offloads, busy-poll
#   --dry-run          print every check's outcome and every command it would run; change nothing
#
# Every check runs before anything changes. When the NIC cannot do what was asked (no combined channels, no
# queue IRQs, no way to steer flows, ...) it prints one line per missing feature, "tune-nic: refused: FEATURE:
# why", changes nothing, and exits 3. Exit codes: 0 done (or nothing to do), 1 a command failed while
# applying, 2 usage error (bad option, unknown interface, not root without --dry-run), 3 refused.
set -uo pipefail

readonly EXIT_FAILED=1 EXIT_USAGE=2 EXIT_REFUSED=3
PROG=tune-nic

usage() { # EXIT-CODE: 0 prints to stdout (--help), anything else to stderr
    if (($1 == 0)); then sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
    else sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2; fi
    exit "$1"
}
die_usage() {
    echo "$PROG: $*" >&2
    exit "$EXIT_USAGE"
}

# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------
IFACE="" WORKERS="" CORES_ARG="" IRQ_CORES_ARG="" PORTS_ARG="" STEER=auto POLL_MODE=spin DRY=0
DEFER_HARD_IRQS=2 GRO_FLUSH_TIMEOUT=200000 SKIP=""
while (($#)); do
    case $1 in
    -h | --help) usage 0 ;;
    --dry-run) DRY=1; shift; continue ;;
    --workers | --cores | --irq-cores | --ports | --steer | --poll-mode | --defer-hard-irqs | --gro-flush-timeout | --skip)
        (($# >= 2)) || die_usage "$1 needs a value"
        opt=$1 val=$2
        shift 2
        ;;
    --*=*) opt=${1%%=*} val=${1#*=}; shift ;;
    -*) die_usage "unknown option $1 (--help lists them)" ;;
    *)
        [[ -z $IFACE ]] || die_usage "one interface only (got $IFACE and $1)"
        IFACE=$1
        shift
        continue
        ;;
    esac
    case $opt in
    --workers) WORKERS=$val ;;
    --cores) CORES_ARG=$val ;;
    --irq-cores) IRQ_CORES_ARG=$val ;;
    --ports) PORTS_ARG=$val ;;
    --steer) STEER=$val ;;
    --poll-mode) POLL_MODE=$val ;;
    --defer-hard-irqs) DEFER_HARD_IRQS=$val ;;
    --gro-flush-timeout) GRO_FLUSH_TIMEOUT=$val ;;
    --skip) SKIP=$val ;;
    *) die_usage "unknown option $opt (--help lists them)" ;;
    esac
done

[[ -n $IFACE ]] || die_usage "which interface? (tune-nic.sh IF --workers N ...; --help)"
if ! [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || ((WORKERS > 1024)); then die_usage "--workers must be 1..1024, got '${WORKERS}'"; fi
case $STEER in auto | rss | ntuple) ;; *) die_usage "--steer must be auto, rss or ntuple, got '$STEER'" ;; esac
case $POLL_MODE in spin | wakeup | adaptive | busy_poll) ;; *) die_usage "--poll-mode must be spin, wakeup, adaptive or busy_poll, got '$POLL_MODE'" ;; esac
[[ $DEFER_HARD_IRQS =~ ^[0-9]+$ ]] || die_usage "--defer-hard-irqs must be a number"
[[ $GRO_FLUSH_TIMEOUT =~ ^[0-9]+$ ]] || die_usage "--gro-flush-timeout must be a number of ns"

declare -A SKIPPED=()
IFS=, read -r -a skip_list <<<"$SKIP"
for s in "${skip_list[@]}"; do
    case $s in
    channels | irqs | steer | offloads | busy-poll) SKIPPED[$s]=1 ;;
    "") ;;
    *) die_usage "--skip: unknown step '$s' (channels, irqs, steer, offloads, busy-poll)" ;;
    esac
done
skipped() { [[ -n ${SKIPPED[$1]:-} ]]; }
seq_list() { # A B C -> "A, B, C"
    local IFS=,
    local joined="$*"
    printf '%s' "${joined//,/, }"
}

# "2,3", "2-5", "0,4-6" -> one number per line.
expand_list() {
    local part a b
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]}
            ((a <= b)) || return 1
            seq "$a" "$b"
        elif [[ $part =~ ^[0-9]+$ ]]; then
            echo "$part"
        else
            return 1
        fi
    done
}

cpu_online() {
    [[ -d /sys/devices/system/cpu/cpu$1 ]] || return 1
    [[ ! -r /sys/devices/system/cpu/cpu$1/online ]] || [[ $(cat "/sys/devices/system/cpu/cpu$1/online") == 1 ]]
}

# read_cores OPTION VALUE -> CORES_OUT (array of N cores)
read_cores() {
    local opt=$1 value=$2 c
    local -a list
    mapfile -t list < <(expand_list "$value") || true
    expand_list "$value" >/dev/null || die_usage "$opt: cannot read '$value' (use 2,3 or 2-3)"
    ((${#list[@]} == WORKERS)) || die_usage "$opt: ${#list[@]} core(s) for $WORKERS worker(s)"
    # The cores matter only for the IRQ step (and the config hint): with --skip irqs they are not checked.
    if ! skipped irqs; then
        for c in "${list[@]}"; do
            cpu_online "$c" || die_usage "$opt: core $c does not exist or is offline"
        done
    fi
    CORES_OUT=("${list[@]}")
}
CORES_OUT=()
if [[ -n $CORES_ARG ]]; then
    read_cores --cores "$CORES_ARG"
    [[ $(printf '%s\n' "${CORES_OUT[@]}" | sort -u | wc -l) == "$WORKERS" ]] || die_usage "--cores: a core is named twice (one worker per core)"
    CORES_DEFAULT=0
else
    read_cores --cores "0-$((WORKERS - 1))"
    CORES_DEFAULT=1
fi
CORES=("${CORES_OUT[@]}")
if [[ -n $IRQ_CORES_ARG ]]; then
    read_cores --irq-cores "$IRQ_CORES_ARG"
    IRQ_CORES=("${CORES_OUT[@]}")
else
    IRQ_CORES=("${CORES[@]}")
fi

PORTS=()
if [[ -n $PORTS_ARG ]]; then
    IFS=, read -r -a PORTS <<<"$PORTS_ARG"
    for p in "${PORTS[@]}"; do
        if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die_usage "--ports: '$p' is not a UDP port (1..65535)"; fi
    done
fi
[[ $STEER != ntuple || ${#PORTS[@]} -gt 0 ]] || die_usage "--steer ntuple needs --ports (one rule per served port)"

SYS=/sys/class/net/$IFACE
[[ -e $SYS ]] || die_usage "no interface named '$IFACE' in this network namespace"
((DRY)) || [[ $(id -u) == 0 ]] || die_usage "must run as root to change $IFACE (or use --dry-run)"
command -v ethtool >/dev/null || die_usage "ethtool is not installed (apt-get install ethtool)"

# ----------------------------------------------------------------------------------------------------------
# Output and the plan
# ----------------------------------------------------------------------------------------------------------
REFUSALS=()
PLANNED=0
line() { printf '  %-9s %s\n' "$1" "$2"; }
ok() { line ok "$*"; }
note() { line note "$*"; }
STEP_REFUSED=0
refuse() { # FEATURE WHY
    line REFUSED "$1: $2"
    REFUSALS+=("$1: $2")
    STEP_REFUSED=1
}
quote() {
    local out="" a
    for a in "$@"; do out+="$(printf '%q' "$a") "; done
    printf '%s' "${out% }"
}
# Run a command (or, in a dry run, print it). A failure is fatal: the steps after it depend on it.
run() {
    PLANNED=$((PLANNED + 1))
    if ((DRY)); then
        line "would run" "$(quote "$@")"
        return 0
    fi
    line run "$(quote "$@")"
    local err
    if ! err=$("$@" 2>&1 >/dev/null); then
        echo "$PROG: failed: $(quote "$@"): ${err:-exit status $?}" >&2
        echo "$PROG: $IFACE is partly tuned; fix the cause and run again (each step is idempotent)" >&2
        exit "$EXIT_FAILED"
    fi
}
# Write VALUE to a sysfs/procfs FILE (or, in a dry run, print the write).
write_value() { # FILE VALUE
    PLANNED=$((PLANNED + 1))
    if ((DRY)); then
        line "would run" "echo $2 > $1"
        return 0
    fi
    line run "echo $2 > $1"
    if ! printf '%s\n' "$2" 2>/dev/null >"$1"; then
        echo "$PROG: failed: echo $2 > $1" >&2
        echo "$PROG: $IFACE is partly tuned; fix the cause and run again (each step is idempotent)" >&2
        exit "$EXIT_FAILED"
    fi
}

# ----------------------------------------------------------------------------------------------------------
# What the driver supports
# ----------------------------------------------------------------------------------------------------------
DRIVER=$(ethtool -i "$IFACE" 2>/dev/null | awk '/^driver:/ {print $2}')
if [[ -z $DRIVER && -e $SYS/device/driver ]]; then
    DRIVER=$(basename "$(readlink -f "$SYS/device/driver")")
fi
DRIVER=${DRIVER:-unknown}
IFINDEX=$(cat "$SYS/ifindex")

# The kernel's own answer (Linux 6.3+): the netdev generic-netlink family's xdp-features of this device.
# Prints "FEATURES ZC_MAX_SEGS" (decimal), or fails.
xdp_features() {
    local py
    py=$(command -v /usr/bin/python3 || command -v python3) || return 1
    "$py" - "$IFINDEX" <<'EOF'
import os, socket, struct, sys
def attr(t, data):
    n = 4 + len(data)
    return struct.pack("HH", n, t) + data + b"\0" * ((4 - n % 4) % 4)
def attrs(buf):
    out, off = {}, 0
    while off + 4 <= len(buf):
        n, t = struct.unpack_from("HH", buf, off)
        if n < 4:
            break
        out[t & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
sock.settimeout(2)
def request(family, cmd, payload, seq):
    body = struct.pack("BBH", cmd, 1, 0) + payload
    sock.send(struct.pack("IHHII", 16 + len(body), family, 1 | 4, seq, 0) + body)  # REQUEST | ACK
    while True:
        data, off = sock.recv(65536), 0
        while off + 16 <= len(data):
            n, typ, _, rseq, _ = struct.unpack_from("IHHII", data, off)
            msg, off = data[off + 16:off + n], off + ((n + 3) & ~3)
            if rseq != seq:
                continue
            if typ == 2:  # NLMSG_ERROR (an ACK when 0)
                err = struct.unpack_from("i", msg)[0]
                if err:
                    raise OSError(-err, os.strerror(-err))
                continue
            return attrs(msg[4:])
try:
    family = request(0x10, 3, attr(2, b"netdev\0"), 1)  # CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME
    fid = struct.unpack("H", family[1][:2])[0]
    dev = request(fid, 1, attr(1, struct.pack("I", int(sys.argv[1]))), 2)  # NETDEV_CMD_DEV_GET, IFINDEX
except (OSError, KeyError, socket.timeout) as e:
    sys.exit(f"netdev netlink: {e}")
feat = struct.unpack("Q", dev[3][:8])[0] if 3 in dev else 0  # NETDEV_A_DEV_XDP_FEATURES
zc = struct.unpack("I", dev[4][:4])[0] if 4 in dev else 0    # NETDEV_A_DEV_XDP_ZC_MAX_SEGS
print(feat, zc)
EOF
}

ZEROCOPY=unknown
report_driver() {
    echo "driver:"
    ok "driver $DRIVER ($(ethtool -i "$IFACE" 2>/dev/null | awk -F': ' '/^bus-info:/ {print $2}' | grep . || echo "no bus"))"
    local feats zc names="" bit name
    if read -r feats zc < <(xdp_features 2>/dev/null) && [[ $feats =~ ^[0-9]+$ ]]; then
        for bit in 1:basic 2:redirect 4:ndo-xmit 8:xsk-zerocopy 16:hw-offload 32:rx-sg 64:ndo-xmit-sg; do
            ((feats & ${bit%%:*})) && names+="${bit#*:} "
        done
        names=${names% }
        if ((feats & 1 && feats & 2)); then
            ok "native XDP: yes (kernel xdp-features: ${names}); xdp.attach_mode = \"native\""
        else
            note "native XDP: no (kernel xdp-features: ${names:-none}); use xdp.attach_mode = \"generic\""
        fi
        if ((feats & 8)); then
            ZEROCOPY=yes
            ok "zero-copy AF_XDP: yes (xdp_zc_max_segs $zc); xdp.bind_mode = \"auto\" will use it"
        else
            ZEROCOPY=no
            note "zero-copy AF_XDP: no; sockets bind in copy mode (bind_mode = \"auto\" falls back to it)"
        fi
        return
    fi
    # Kernels before 6.3 do not report xdp-features: fall back to what is known of in-tree drivers.
    case $DRIVER in
    ice | i40e | ixgbe | igc | igb | mlx5_core | mlx4_en | stmmac | bnxt_en | virtio_net | veth | ena | nfp | qede | tun)
        ok "native XDP: yes (known for driver $DRIVER; this kernel does not report xdp-features)" ;;
    *) note "native XDP: unknown for driver $DRIVER (kernel does not report xdp-features); try xdp.attach_mode = \"native\", shunt refuses cleanly if it cannot" ;;
    esac
    case $DRIVER in
    ice | i40e | ixgbe | igc | mlx5_core | stmmac)
        ZEROCOPY=yes
        ok "zero-copy AF_XDP: yes (known for driver $DRIVER)" ;;
    *) note "zero-copy AF_XDP: unknown for driver $DRIVER; bind_mode = \"auto\" tries it and falls back to copy" ;;
    esac
}

# ----------------------------------------------------------------------------------------------------------
# Step 1: combined channels = N
# ----------------------------------------------------------------------------------------------------------
CH_CUR="" CH_CHANGE=0
check_channels() {
    echo "channels (one combined RX/TX channel per worker):"
    local out max cur
    if ! out=$(ethtool -l "$IFACE" 2>&1); then
        refuse "combined channels" "$DRIVER does not report channels (ethtool -l: ${out##*$'\n'})"
        return
    fi
    max=$(awk '/^Pre-set maximums/ {s = 1} /^Current hardware settings/ {s = 2} s == 1 && /^Combined:/ {print $2}' <<<"$out")
    cur=$(awk '/^Pre-set maximums/ {s = 1} /^Current hardware settings/ {s = 2} s == 2 && /^Combined:/ {print $2}' <<<"$out")
    if ! [[ $max =~ ^[0-9]+$ && $cur =~ ^[0-9]+$ ]] || ((max == 0)); then
        refuse "combined channels" "$DRIVER has none (ethtool -l: Combined ${max:-n/a}); its queue count is fixed when the device is created"
        return
    fi
    if ((WORKERS > max)); then
        refuse "combined channels" "$IFACE has at most $max, asked for $WORKERS workers"
        return
    fi
    CH_CUR=$cur
    if ((cur == WORKERS)); then
        ok "combined channels: $cur"
    else
        CH_CHANGE=1
        note "combined channels: $cur now, $WORKERS wanted (maximum $max)"
    fi
}
apply_channels() {
    ((CH_CHANGE)) || return 0
    # A smaller channel count is refused while the RSS table points at the queues that would go away.
    if ((CH_CUR > WORKERS)) && [[ $STEER_MODE == rss ]] && ! rss_table_ok; then
        run ethtool -X "$IFACE" equal "$WORKERS"
    fi
    run ethtool -L "$IFACE" combined "$WORKERS"
}

# ----------------------------------------------------------------------------------------------------------
# Step 2: each queue's IRQ on its worker's core
# ----------------------------------------------------------------------------------------------------------
# The IRQ of queue Q: among the device's MSI vectors (or every line of /proc/interrupts naming IF), the one
# whose name ends in the queue number after a per-queue vector name used by the common drivers:
# IF-TxRx-Q (ice, i40e, ixgbe, igb, igc, bnxt_en), mlx5_compQ@pci..., virtioN-input.Q, ena-Tx-Rx-Q, IF-rx-Q.
queue_irq() { # QUEUE -> IRQ number
    local q=$1 msi="" irq name
    if [[ -d $SYS/device/msi_irqs ]]; then
        local f
        for f in "$SYS"/device/msi_irqs/*; do msi+=" ${f##*/}"; done
        msi+=" "
    fi
    while read -r irq name; do
        if [[ -n $msi ]]; then
            [[ $msi == *" $irq "* ]] || continue
        else
            [[ $name == *"$IFACE"* ]] || continue
        fi
        if [[ $name =~ (^|[-_])(TxRx|txrx|Tx-Rx|rx|RX|Rx|comp|input|queue)[-_.]?${q}(@.*)?$ ]]; then
            echo "$irq"
            return 0
        fi
    done < <(awk -F: 'NR > 1 && $1 ~ /^ *[0-9]+$/ {n = split($2, f, " "); print $1 + 0, f[n]}' /proc/interrupts)
    return 1
}
IRQ_DEFERRED=0
declare -A QUEUE_IRQ=()
check_irqs() {
    echo "queue IRQs (queue i -> core $(IFS=,; echo "${IRQ_CORES[*]}"), position by position):"
    if [[ ! -e $SYS/device ]]; then
        refuse "queue IRQs" "$IFACE ($DRIVER) is a virtual device with no interrupts to pin"
        return
    fi
    local q irq known=$WORKERS
    # Queues that appear only after the channel change get their IRQs then.
    if ((CH_CHANGE)) && ((CH_CUR < WORKERS)); then
        known=$CH_CUR
        IRQ_DEFERRED=1
    fi
    for ((q = 0; q < known; q++)); do
        if ! irq=$(queue_irq "$q"); then
            refuse "queue IRQs" "no IRQ found for queue $q of $IFACE ($DRIVER) in /proc/interrupts; pin it by hand: echo CORE > /proc/irq/N/smp_affinity_list"
            return
        fi
        QUEUE_IRQ[$q]=$irq
        local cur
        cur=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null)
        if [[ $cur == "${IRQ_CORES[q]}" ]]; then
            ok "queue $q: IRQ $irq on core $cur"
        else
            note "queue $q: IRQ $irq on cores ${cur:-?}, wanted ${IRQ_CORES[q]}"
        fi
    done
    ((IRQ_DEFERRED)) && note "queues $CH_CUR..$((WORKERS - 1)): IRQs looked up after the channel change"
    if pgrep -x irqbalance >/dev/null 2>&1; then
        note "irqbalance is running and will move these IRQs again: in /etc/default/irqbalance set"
        note "  IRQBALANCE_BANNED_CPULIST=$(IFS=,; echo "${CORES[*]}")   (no other IRQs on the worker cores)"
        note "  IRQBALANCE_ARGS=\"--banirq=<each queue IRQ above>\"   (leave these where tune-nic puts them)"
        note "  then: systemctl restart irqbalance; and run tune-nic again"
    else
        ok "irqbalance is not running"
    fi
}
apply_irqs() {
    local q irq cur
    for ((q = 0; q < WORKERS; q++)); do
        irq=${QUEUE_IRQ[$q]:-}
        if [[ -z $irq ]]; then
            if ((DRY)); then
                PLANNED=$((PLANNED + 1))
                line "would run" "echo ${IRQ_CORES[q]} > /proc/irq/<IRQ of queue $q after the channel change>/smp_affinity_list"
                continue
            fi
            irq=$(queue_irq "$q") || {
                echo "$PROG: failed: no IRQ found for queue $q of $IFACE after the channel change" >&2
                exit "$EXIT_FAILED"
            }
        fi
        cur=$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null)
        [[ $cur == "${IRQ_CORES[q]}" ]] || write_value "/proc/irq/$irq/smp_affinity_list" "${IRQ_CORES[q]}"
    done
}

# ----------------------------------------------------------------------------------------------------------
# Step 3: the served ports' flows onto the worker queues
# ----------------------------------------------------------------------------------------------------------
STEER_MODE="" HASH4_SET=1 HASH6_SET=1
hash_has_ports() { # FLOW-TYPE -> 0 when the hash includes both UDP ports, 1 when not, 2 when unsupported
    local out
    out=$(ethtool -n "$IFACE" rx-flow-hash "$1" 2>/dev/null) || return 2
    [[ $out == *"L4 bytes 0 & 1"* && $out == *"L4 bytes 2 & 3"* ]]
}
rss_table_ok() { # the RSS indirection table uses exactly queues 0..N-1
    local out used want
    out=$(ethtool -x "$IFACE" 2>/dev/null) || return 1
    used=$(awk '/^ *[0-9]+: / {for (i = 2; i <= NF; i++) print $i}' <<<"$out" | sort -nu | tr '\n' ' ')
    want=$(seq 0 $((WORKERS - 1)) | tr '\n' ' ')
    [[ $used == "$want" ]]
}
ntuple_state() { # -> on | off | fixed | none
    local v
    v=$(ethtool -k "$IFACE" 2>/dev/null | awk -F': ' '$1 == "ntuple-filters" {print $2}')
    case $v in on*) echo on ;; "off [fixed]") echo fixed ;; off*) echo off ;; *) echo none ;; esac
}
# Existing ntuple rules: "LOC udp4|udp6 PORT QUEUE" per UDP rule on a destination port.
ntuple_rules() {
    ethtool -n "$IFACE" 2>/dev/null | awk '
        /^Filter:/ {loc = $2; type = ""; port = ""}
        /Rule Type: UDP over IPv4/ {type = "udp4"}
        /Rule Type: UDP over IPv6/ {type = "udp6"}
        /Dest port:/ {port = $3}
        /Action: Direct to queue/ {if (type != "" && port != "") print loc, type, port, $NF}'
}
check_steer() {
    echo "flow steering (${PORTS_ARG:-all served ports} over queues 0..$((WORKERS - 1))):"
    local rc4 rc6 nt
    hash_has_ports udp4; rc4=$?
    nt=$(ntuple_state)
    STEER_MODE=$STEER
    if [[ $STEER == auto ]]; then
        if ((rc4 != 2)); then STEER_MODE=rss
        elif [[ ${#PORTS[@]} -gt 0 && ( $nt == on || $nt == off ) ]]; then STEER_MODE=ntuple
        else
            local why="$DRIVER has no RSS hash configuration (ethtool -n rx-flow-hash udp4)"
            if [[ ${#PORTS[@]} -eq 0 ]]; then why+=", and without --ports no ntuple rules can be made"
            else why+=" and no ntuple filters (ethtool -k: ntuple-filters: ${nt/fixed/off [fixed]})"; fi
            refuse "flow steering" "$why"
            return
        fi
    fi
    if [[ $STEER_MODE == rss ]]; then
        if ((rc4 == 2)); then
            refuse "flow steering" "$DRIVER has no RSS hash configuration (ethtool -n rx-flow-hash udp4), needed for --steer rss"
            return
        fi
        HASH4_SET=$rc4
        if ((rc4 == 0)); then ok "RSS hash of udp4 includes the UDP ports"
        else note "RSS hash of udp4 leaves the UDP ports out (flows of one client address pile onto one queue)"; fi
        hash_has_ports udp6; rc6=$?
        HASH6_SET=$rc6
        case $rc6 in
        0) ok "RSS hash of udp6 includes the UDP ports" ;;
        1) note "RSS hash of udp6 leaves the UDP ports out" ;;
        *) note "RSS hash of udp6 is not configurable on $DRIVER; left as it is" ;;
        esac
        if ethtool -x "$IFACE" >/dev/null 2>&1; then
            if rss_table_ok; then ok "RSS table spreads over queues 0..$((WORKERS - 1))"
            else note "RSS table does not use exactly queues 0..$((WORKERS - 1))"; fi
        else
            note "RSS table not readable (ethtool -x); the driver's default spreads over all channels"
        fi
    else
        case $nt in
        fixed) refuse "flow steering" "ntuple filters are fixed off on $DRIVER (ethtool -k: ntuple-filters: off [fixed])"; return ;;
        none) refuse "flow steering" "$DRIVER has no ntuple filters (ethtool -k lists no ntuple-filters)"; return ;;
        on) ok "ntuple filters on" ;;
        off) note "ntuple filters off (will be turned on)" ;;
        esac
        local i p q
        for i in "${!PORTS[@]}"; do
            p=${PORTS[i]} q=$((i % WORKERS))
            note "udp4/udp6 dst-port $p -> queue $q"
        done
        ((${#PORTS[@]} < WORKERS)) && note "${#PORTS[@]} port(s) for $WORKERS workers: with ntuple each port uses one queue, so some workers stay idle (--steer rss spreads every port)"
    fi
}
apply_steer() {
    if [[ $STEER_MODE == rss ]]; then
        ((HASH4_SET == 0)) || run ethtool -N "$IFACE" rx-flow-hash udp4 sdfn
        ((HASH6_SET != 1)) || run ethtool -N "$IFACE" rx-flow-hash udp6 sdfn
        if ethtool -x "$IFACE" >/dev/null 2>&1; then
            # After a channel change the driver resets a default table; look again then.
            if ((CH_CHANGE)) && ((DRY)); then
                PLANNED=$((PLANNED + 1))
                line "would run" "ethtool -X $IFACE equal $WORKERS   (if the table after the channel change does not use exactly queues 0..$((WORKERS - 1)))"
            elif ! rss_table_ok; then
                run ethtool -X "$IFACE" equal "$WORKERS"
            fi
        fi
        return
    fi
    [[ $(ntuple_state) == on ]] || run ethtool -K "$IFACE" ntuple on
    local rules i p q type loc rtype rport rqueue found
    rules=$(ntuple_rules)
    for i in "${!PORTS[@]}"; do
        p=${PORTS[i]} q=$((i % WORKERS))
        for type in udp4 udp6; do
            found=0
            while read -r loc rtype rport rqueue; do
                [[ $rtype == "$type" && $rport == "$p" ]] || continue
                if [[ $rqueue == "$q" ]]; then found=1; else run ethtool -N "$IFACE" delete "$loc"; fi
            done <<<"$rules"
            if ((found)); then ok "$type dst-port $p -> queue $q (rule present)"
            else run ethtool -N "$IFACE" flow-type "$type" dst-port "$p" action "$q"; fi
        done
    done
}

# ----------------------------------------------------------------------------------------------------------
# Step 4: no receive aggregation in front of XDP
# ----------------------------------------------------------------------------------------------------------
# LRO and hardware GRO merge frames before the XDP hook (drivers refuse native XDP with them on); UDP
# fraglist GRO and UDP GRO forwarding merge the served ports' datagrams before the generic hook. Software
# GRO itself is left on: it aggregates TCP for the kernel's own traffic, not the served UDP.
OFFLOADS_OFF=()
check_offloads() {
    echo "receive aggregation (must be off in front of XDP):"
    local k feature state
    k=$(ethtool -k "$IFACE" 2>/dev/null) || { note "ethtool -k not supported by $DRIVER; nothing to turn off"; return; }
    for feature in large-receive-offload rx-gro-hw rx-gro-list rx-udp-gro-forwarding; do
        state=$(awk -F': ' -v f="$feature" '$1 == f {print $2}' <<<"$k")
        case $state in
        "") ;;
        off*) ok "$feature: $state" ;;
        "on [fixed]") refuse "$feature" "fixed on in $DRIVER; it cannot be turned off, and XDP sees merged frames" ;;
        on*)
            note "$feature: on (will be turned off)"
            OFFLOADS_OFF+=("$feature")
            ;;
        esac
    done
}
apply_offloads() {
    local f
    for f in "${OFFLOADS_OFF[@]}"; do
        [[ $f == large-receive-offload ]] && f=lro
        run ethtool -K "$IFACE" "$f" off
    done
}

# ----------------------------------------------------------------------------------------------------------
# Step 5: busy-poll knobs (only for --poll-mode busy_poll)
# ----------------------------------------------------------------------------------------------------------
BUSY_WRITES=()
check_busy_poll() {
    echo "busy polling (--poll-mode $POLL_MODE):"
    local f cur
    if [[ $POLL_MODE != busy_poll ]]; then
        for f in napi_defer_hard_irqs gro_flush_timeout; do
            [[ -r $SYS/$f ]] && ok "$f = $(cat "$SYS/$f") (left as it is: only busy_poll uses it)"
        done
        return
    fi
    if [[ $ZEROCOPY == no ]]; then
        refuse "busy polling" "$DRIVER has no zero-copy AF_XDP; copy-mode sockets get no NAPI id, so deferred interrupts would wait for gro_flush_timeout (use --poll-mode spin)"
        return
    fi
    [[ $ZEROCOPY == yes ]] || note "zero-copy support unknown: busy polling works only with zero-copy sockets"
    for f in napi_defer_hard_irqs:$DEFER_HARD_IRQS gro_flush_timeout:$GRO_FLUSH_TIMEOUT; do
        if [[ ! -e $SYS/${f%%:*} ]]; then
            refuse "busy polling" "this kernel has no $SYS/${f%%:*} (Linux 5.10+)"
            return
        fi
        cur=$(cat "$SYS/${f%%:*}")
        if [[ $cur == "${f#*:}" ]]; then ok "${f%%:*} = $cur"
        else
            note "${f%%:*} = $cur, wanted ${f#*:}"
            BUSY_WRITES+=("$f")
        fi
    done
}
apply_busy_poll() {
    local f
    for f in "${BUSY_WRITES[@]}"; do write_value "$SYS/${f%%:*}" "${f#*:}"; done
}

# ----------------------------------------------------------------------------------------------------------
# Main: every check, then (unless refused) every change
# ----------------------------------------------------------------------------------------------------------
echo "$PROG: $IFACE: $WORKERS worker(s) on queues 0..$((WORKERS - 1)), cores $(IFS=,; echo "${CORES[*]}")$( ((CORES_DEFAULT)) && echo " (default; pass --cores to match workers.cores)"), poll mode $POLL_MODE, steering $STEER$( ((DRY)) && echo ", dry run")"
report_driver
STEPS=(channels irqs steer offloads busy-poll)
declare -A STEP_OK=()
for step in "${STEPS[@]}"; do
    if skipped "$step"; then
        echo "$step: skipped (--skip)"
        continue
    fi
    STEP_REFUSED=0
    case $step in
    channels) check_channels ;;
    irqs) check_irqs ;;
    steer) check_steer ;;
    offloads) check_offloads ;;
    busy-poll) check_busy_poll ;;
    esac
    ((STEP_REFUSED)) || STEP_OK[$step]=1
done

if ((${#REFUSALS[@]})); then
    echo "$PROG: $IFACE cannot do what was asked; nothing was changed"
    for r in "${REFUSALS[@]}"; do echo "$PROG: refused: $r" >&2; done
    ((DRY)) || exit "$EXIT_REFUSED"
    echo "changes (dry run; for the steps that were not refused):"
else
    echo "changes:"
fi
for step in "${STEPS[@]}"; do
    [[ -n ${STEP_OK[$step]:-} ]] || continue
    case $step in
    channels) apply_channels ;;
    irqs) apply_irqs ;;
    steer) apply_steer ;;
    offloads) apply_offloads ;;
    busy-poll) [[ $POLL_MODE != busy_poll ]] || apply_busy_poll ;;
    esac
done
((PLANNED)) || echo "  (none)"

if ((${#REFUSALS[@]})); then
    echo "$PROG: dry run: ${#REFUSALS[@]} refusal(s), $PLANNED command(s) for the rest; nothing was changed"
    exit "$EXIT_REFUSED"
fi
if ((PLANNED == 0)); then
    echo "$PROG: $IFACE is already tuned; nothing to change"
elif ((DRY)); then
    echo "$PROG: dry run: $PLANNED command(s) would run; nothing was changed"
else
    echo "$PROG: $IFACE tuned ($PLANNED change(s))"
fi
echo "shunt.toml: interface = \"$IFACE\"; [workers] queues = [$(seq_list $(seq 0 $((WORKERS - 1))))], cores = [$(seq_list "${CORES[@]}")], poll_mode = \"$POLL_MODE\""
exit 0
