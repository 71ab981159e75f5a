#!/usr/bin/env bash
# Lab for shunt: two network namespaces joined by a veth pair.
#
#   lab.sh up NAME [--queues N]      create namespaces ${NAME}s / ${NAME}c and veth ${NAME}s / ${NAME}c
#   lab.sh down NAME                 delete everything (idempotent)
#   lab.sh exec NAME server|client CMD...   run CMD inside a namespace
#   lab.sh info NAME                 interface names, MACs, addresses
#   lab.sh name                      print a fresh unique lab name (shunt + 8 hex chars)
#
# NAME must start with "shunt" and be at most 14 characters (interface names are NAME + one letter and
# must fit in 15 characters). Addresses: server 198.18.0.1/24 + 2001:2::1/64, client 198.18.0.2/24 +
# 2001:2::2/64. Nothing is created or changed in the root namespace.
set -euo pipefail

SERVER_V4=198.18.0.1
CLIENT_V4=198.18.0.2
SERVER_V6=2001:2::1
CLIENT_V6=2001:2::2

die() {
    echo "lab.sh: $*" >&2
    exit 2
}

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_name() {
    local name=$1
    [[ $name == shunt* ]] || die "lab name '$name' must start with 'shunt'"
    [[ $name =~ ^[A-Za-z0-9]+$ ]] || die "lab name '$name' may contain only letters and digits"
    ((${#name} <= 14)) || die "lab name '$name' is too long (max 14 chars: interface names are NAME + 1 char)"
}

ns_exists() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"
}

cmd_down() {
    local name=$1
    local ns
    for ns in "${name}s" "${name}c"; do
        if ns_exists "$ns"; then
            # Deleting the namespace removes the veth end living in it (and thereby its peer).
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    return 0
}

cmd_up() {
    local name=$1
    shift
    local queues=1
    while (($#)); do
        case $1 in
        --queues)
            (($# >= 2)) || die "--queues needs a value"
            queues=$2
            shift 2
            ;;
        --queues=*)
            queues=${1#--queues=}
            shift
            ;;
        *) die "unknown option for up: $1" ;;
        esac
    done
    if ! [[ $queues =~ ^[1-9][0-9]*$ ]] || ((queues > 64)); then die "--queues must be 1..64, got '$queues'"; fi

    local sns="${name}s" cns="${name}c"
    local sif="${name}s" cif="${name}c"
    if ns_exists "$sns" || ns_exists "$cns"; then
        die "lab '$name' already exists (lab.sh down $name)"
    fi

    # On any failure from here on, remove what was created.
    trap 'cmd_down "$name"' ERR
    trap 'cmd_down "$name"; exit 130' INT TERM
    ip netns add "$sns"
    ip netns add "$cns"
    # Create the pair directly inside the server namespace, peer directly in the client namespace:
    # no interface ever appears in the root namespace.
    ip -n "$sns" link add "$sif" numtxqueues "$queues" numrxqueues "$queues" type veth \
        peer name "$cif" numtxqueues "$queues" numrxqueues "$queues" netns "$cns"

    local ns
    for ns in "$sns" "$cns"; do
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
        ip netns exec "$ns" sysctl -qw "net.ipv4.conf.${ns}.rp_filter=0"
    done
    ip -n "$sns" addr add "$SERVER_V4/24" dev "$sif"
    ip -n "$cns" addr add "$CLIENT_V4/24" dev "$cif"
    ip -n "$sns" -6 addr add "$SERVER_V6/64" dev "$sif" nodad
    ip -n "$cns" -6 addr add "$CLIENT_V6/64" dev "$cif" nodad
    ip -n "$sns" link set "$sif" up
    ip -n "$cns" link set "$cif" up

    # On veth the receiving queue is the sender's transmit queue. Pin client TX queue i to CPU (i mod ncpus)
    # with XPS, so that a client thread pinned to CPU i deterministically feeds server RX queue i.
    if ((queues > 1)); then
        local ncpu q
        ncpu=$(nproc)
        for ((q = 0; q < queues; q++)); do
            ip netns exec "$cns" sh -c "printf '%x' $((1 << (q % ncpu))) > /sys/class/net/$cif/queues/tx-$q/xps_cpus"
        done
    fi

    # Wait (bounded) until both ends have carrier and no tentative IPv6 address.
    local i ok=0
    for ((i = 0; i < 100; i++)); do
        if ip -n "$sns" link show dev "$sif" | grep -q LOWER_UP &&
            ip -n "$cns" link show dev "$cif" | grep -q LOWER_UP &&
            [[ -z $(ip -n "$sns" -6 addr show dev "$sif" tentative) ]] &&
            [[ -z $(ip -n "$cns" -6 addr show dev "$cif" tentative) ]]; then
            ok=1
            break
        fi
        sleep 0.05
    done
    ((ok)) || {
        cmd_down "$name"
        die "lab '$name' did not come up within 5 s"
    }
    trap - ERR INT TERM
    echo "lab $name up: server ns/if $sns ($SERVER_V4, $SERVER_V6), client ns/if $cns ($CLIENT_V4, $CLIENT_V6), $queues queue(s)"
}

mac_of() {
    ip -n "$1" link show dev "$2" | awk '/link\/ether/ {print $2; exit}'
}

cmd_info() {
    local name=$1
    local sns="${name}s" cns="${name}c"
    if ! ns_exists "$sns" || ! ns_exists "$cns"; then die "lab '$name' does not exist"; fi
    echo "server_ns=$sns"
    echo "server_if=${name}s"
    echo "server_mac=$(mac_of "$sns" "${name}s")"
    echo "server_v4=$SERVER_V4"
    echo "server_v6=$SERVER_V6"
    echo "client_ns=$cns"
    echo "client_if=${name}c"
    echo "client_mac=$(mac_of "$cns" "${name}c")"
    echo "client_v4=$CLIENT_V4"
    echo "client_v6=$CLIENT_V6"
    echo "queues=$(ip -n "$sns" -d link show dev "${name}s" | grep -o 'numrxqueues [0-9]*' | awk '{print $2}')"
}

cmd_exec() {
    local name=$1 side=${2:-}
    shift 2 || die "exec needs NAME server|client CMD..."
    (($#)) || die "exec needs a command"
    case $side in
    server) exec ip netns exec "${name}s" "$@" ;;
    client) exec ip netns exec "${name}c" "$@" ;;
    *) die "exec: side must be 'server' or 'client', got '$side'" ;;
    esac
}

main() {
    (($# >= 1)) || usage
    local cmd=$1
    shift
    case $cmd in
    name)
        printf 'shunt%s\n' "$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
        return 0
        ;;
    up | down | exec | info) ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd'" ;;
    esac
    (($# >= 1)) || die "$cmd needs a lab NAME"
    local name=$1
    shift
    check_name "$name"
    [[ $(id -u) == 0 ]] || die "must run as root"
    case $cmd in
    up) cmd_up "$name" "$@" ;;
    down) cmd_down "$name" ;;
    exec) cmd_exec "$name" "$@" ;;
    info) cmd_info "$name" ;;
    esac
}

main "$@"
