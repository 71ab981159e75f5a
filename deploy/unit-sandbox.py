#!/usr/bin/python3
"""Run a command under a systemd unit's process sandbox, without systemd.

    unit-sandbox.py --unit deploy/shunt.service [--deny SYSCALL]... [--show] -- COMMAND [ARG]...

For hosts (and CI containers) where systemd is not PID 1, so `systemd-run` cannot start the unit. As root, it
reads the unit's [Service] section and applies, in the order systemd's exec does, then execs COMMAND:

  - DynamicUser=yes: a fresh UID/GID from systemd's dynamic range (61184..65519) unused on this host, no
    supplementary groups (with User=/Group= instead: those);
  - CapabilityBoundingSet=, AmbientCapabilities=: exactly those (through setpriv(1), util-linux);
  - LimitMEMLOCK=;
  - NoNewPrivileges=yes (implied by the seccomp filters anyway);
  - SystemCallFilter= (allow or deny lists, group names expanded by `systemd-analyze syscall-filter`, so the
    sets are systemd's own for this systemd version; an allow list also gets @default, as systemd adds it),
    SystemCallErrorNumber= (default: kill the process with SIGSYS, as systemd does), SystemCallArchitectures=;
  - RestrictAddressFamilies=: socket() with any other family fails with EAFNOSUPPORT, as under systemd;
  - MemoryDenyWriteExecute=yes: mmap/mprotect asking for write+execute / execute fail with EPERM;
  - RestrictRealtime=yes: sched_setscheduler/sched_setattr to a realtime policy fail with EPERM.

The seccomp filters come from libseccomp (python3-seccomp), the library systemd itself uses. Not applied
(they need systemd's mount/namespace machinery): ProtectSystem=, ProtectHome=, PrivateTmp=, PrivateDevices=,
PrivateMounts=, ProtectKernel*=, ProtectControlGroups=, ProtectClock=, ProtectHostname=, ProtectProc=,
RestrictNamespaces=, LockPersonality=, StateDirectory=, UMask=. COMMAND is found on PATH before the user
changes and must be readable and executable by the dynamic user.

--deny SYSCALL removes a system call from the allow list (a negative control: the filter is really applied).
--show prints what would be applied and exits.
"""

import argparse
import errno
import os
import pwd
import grp
import resource
import shutil
import subprocess
import sys

STAGE2 = "--stage2"

# Address family numbers (linux/socket.h); Python's socket module lacks some (AF_XDP).
AF = {
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4, "AF_APPLETALK": 5,
    "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_INET6": 10, "AF_ROSE": 11, "AF_DECnet": 12,
    "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15, "AF_NETLINK": 16, "AF_PACKET": 17, "AF_ASH": 18,
    "AF_ECONET": 19, "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22, "AF_IRDA": 23, "AF_PPPOX": 24,
    "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28, "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31,
    "AF_IUCV": 32, "AF_RXRPC": 33, "AF_ISDN": 34, "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37,
    "AF_ALG": 38, "AF_NFC": 39, "AF_VSOCK": 40, "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_XDP": 44,
    "AF_MCTP": 45,
}
AF_MAX = 46


def die(msg):
    sys.exit(f"unit-sandbox: {msg}")


def read_service(path):
    """The [Service] section as a list of (key, value), in order (repeated keys kept)."""
    entries, section = [], None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section == "Service" and "=" in line:
                key, value = line.split("=", 1)
                entries.append((key.strip(), value.strip()))
    return entries


def syscall_groups():
    """{"@group": [member, ...]} from `systemd-analyze syscall-filter` (members may be @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], check=True,
                         capture_output=True, text=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.startswith("    ") and not line.strip().startswith("#"):
            groups[current].append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for name in names:
        name = name.split(":", 1)[0]  # "name:errno" form
        if name.startswith("@"):
            if name in seen:
                continue
            seen.add(name)
            if name not in groups:
                die(f"unknown system call group {name}")
            out |= expand(groups[name], groups, seen)
        else:
            out.add(name)
    return out


def syscall_policy(entries, groups):
    """(allow_list: bool, names) from the SystemCallFilter= lines, with systemd's merge rules."""
    allow_list, names = None, set()
    for key, value in entries:
        if key != "SystemCallFilter":
            continue
        if not value:
            allow_list, names = None, set()
            continue
        invert = value.startswith("~")
        items = expand(value.lstrip("~").split(), groups)
        if allow_list is None:
            allow_list = not invert
            if allow_list:
                names |= expand(["@default"], groups)
        if allow_list:
            names = names - items if invert else names | items
        else:
            names = names | items if invert else names - items
    return allow_list, names


def families(entries):
    """Allowed address family numbers, or None when unrestricted."""
    allowed = None
    for key, value in entries:
        if key != "RestrictAddressFamilies":
            continue
        if not value:
            allowed = None
            continue
        if value == "none":
            allowed = set()
            continue
        invert = value.startswith("~")
        items = {AF[n] for n in value.lstrip("~").split()}
        if allowed is None:
            allowed = set(range(AF_MAX)) - items if invert else items
        else:
            allowed = allowed - items if invert else allowed | items
    return allowed


def caps(entries, key):
    value = " ".join(v for k, v in entries if k == key)
    return [c.lower().removeprefix("cap_") for c in value.split()]


def last(entries, key, default=None):
    values = [v for k, v in entries if k == key]
    return values[-1] if values else default


def free_dynamic_id():
    for uid in range(61184, 65520):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
            continue
        except KeyError:
            return uid
    die("no free UID in systemd's dynamic range")


def stage1(args):
    if os.geteuid() != 0:
        die("must run as root (it changes to the unit's user and capabilities)")
    entries = read_service(args.unit)
    command = shutil.which(args.command[0])
    if not command:
        die(f"{args.command[0]}: not found")
    if last(entries, "DynamicUser", "no") in ("yes", "true", "1", "on"):
        uid = gid = free_dynamic_id()
    elif last(entries, "User"):
        user = pwd.getpwnam(last(entries, "User"))
        uid, gid = user.pw_uid, user.pw_gid
    else:
        uid = gid = 0
    bounding = caps(entries, "CapabilityBoundingSet")
    ambient = caps(entries, "AmbientCapabilities")
    memlock = last(entries, "LimitMEMLOCK")
    if memlock and not args.show:
        limit = resource.RLIM_INFINITY if memlock == "infinity" else int(memlock)
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
        except (ValueError, OSError) as e:
            # systemd (PID 1) can always raise it; root in a container without CAP_SYS_RESOURCE cannot.
            print(f"unit-sandbox: LimitMEMLOCK={memlock} not applied ({e}); keeping "
                  f"{resource.getrlimit(resource.RLIMIT_MEMLOCK)}", file=sys.stderr)
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    if bounding:
        setpriv.append("--bounding-set=-all," + ",".join("+" + c for c in bounding))
    if ambient:
        plus = ",".join("+" + c for c in ambient)
        setpriv += [f"--inh-caps=-all,{plus}", f"--ambient-caps=-all,{plus}"]
    else:
        setpriv += ["--inh-caps=-all"]
    if last(entries, "NoNewPrivileges", "no") in ("yes", "true", "1", "on"):
        setpriv.append("--no-new-privs")
    # Debian's interpreter (python3-seccomp is installed for it), reachable by the dynamic user.
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    stage2 = [python, os.path.abspath(__file__), STAGE2, "--unit", os.path.abspath(args.unit)]
    for d in args.deny:
        stage2 += ["--deny", d]
    argv = setpriv + ["--"] + stage2 + ["--", command] + args.command[1:]
    if args.show:
        print(" ".join(argv))
    else:
        os.execvp("setpriv", argv)


def stage2(args):
    import seccomp  # python3-seccomp: only the stage that applies the filters needs it

    entries = read_service(args.unit)
    groups = syscall_groups()
    allow_list, names = syscall_policy(entries, groups)
    names -= set(args.deny)
    err = last(entries, "SystemCallErrorNumber")
    fail = seccomp.ERRNO(getattr(errno, err)) if err else seccomp.KILL_PROCESS

    # The system call filter goes last, as systemd loads it: the filters before it may need seccomp() itself.
    filters = []
    if allow_list is not None:
        f = seccomp.SyscallFilter(defaction=fail if allow_list else seccomp.ALLOW)
        action = seccomp.ALLOW if allow_list else fail
        for name in sorted(names):
            try:
                f.add_rule(action, name)
            except (RuntimeError, ValueError):
                pass  # not a system call on this architecture: systemd skips it too
        syscall_filter = f
    else:
        syscall_filter = None

    allowed = families(entries)
    restrict_rt = last(entries, "RestrictRealtime", "no") in ("yes", "true", "1", "on")
    mdwe = last(entries, "MemoryDenyWriteExecute", "no") in ("yes", "true", "1", "on")
    if allowed is not None or restrict_rt or mdwe:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        if allowed is not None:
            for fam in range(AF_MAX):
                if fam not in allowed:
                    f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, fam))
            f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, AF_MAX))
        if mdwe:
            wx = 0x2 | 0x4  # PROT_WRITE | PROT_EXEC
            f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
            for name in ("mprotect", "pkey_mprotect"):
                f.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(2, seccomp.MASKED_EQ, 0x4, 0x4))
        if restrict_rt:
            # SCHED_FIFO 1, SCHED_RR 2, SCHED_DEADLINE 6.
            for policy in (1, 2, 6):
                f.add_rule(seccomp.ERRNO(errno.EPERM), "sched_setscheduler", seccomp.Arg(1, seccomp.EQ, policy))
        filters.append(f)
    if syscall_filter is not None:
        filters.append(syscall_filter)

    for f in filters:
        f.load()
    os.execv(args.command[0], args.command)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(STAGE2, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--unit", required=True, help="the unit file")
    p.add_argument("--deny", action="append", default=[], metavar="SYSCALL",
                   help="take this system call out of the allow list (negative control)")
    p.add_argument("--show", action="store_true", help="print the setpriv command line and exit")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no COMMAND")
    (stage2 if args.stage2 else stage1)(args)


if __name__ == "__main__":
    main()
