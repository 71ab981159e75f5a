//! Next-hop resolution against the kernel's real tables, in the veth lab: the `sys::route` queries (route
//! lookup, neighbour lookup, resolution with NTF_USE, the interface's MAC) and the datapath's `Resolver` and
//! `NextHops` caches following the kernel as neighbours resolve, change MAC and go away and as routes come and
//! go, over IPv4 and IPv6. Needs root.

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{poll_until, Lab, Side};
use shunt::{
    datapath::afxdp::nexthop::{Miss, NextHops, Resolver, ResolverParams},
    sys::{
        self,
        route::{NudState, RouteKind, RouteSocket},
    },
};

/// How long the kernel and the resolver get for anything: ARP/ND on veth answers in well under a second.
const DEADLINE: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(5);
const T: Duration = Duration::from_secs(20);

/// One address family's addresses in the lab.
struct Family {
    /// The client: a directly connected neighbour.
    client: IpAddr,
    /// Behind a gateway route via the client (added by the test).
    far: IpAddr,
    far_net: &'static str,
    /// On a network reached through another interface (a second veth in the server namespace).
    other_if: IpAddr,
    other_if_addr: &'static str,
    /// No route at all (the namespaces have no default route).
    unrouted: IpAddr,
    /// Behind a gateway route via an address nobody answers for.
    dead: IpAddr,
    dead_net: &'static str,
    dead_gateway: &'static str,
    /// `ip` option selecting the family.
    flag: &'static str,
}

fn v4() -> Family {
    Family {
        client: common::CLIENT_V4.into(),
        far: "198.19.1.5".parse().unwrap(),
        far_net: "198.19.1.0/24",
        other_if: "198.19.250.7".parse().unwrap(),
        other_if_addr: "198.19.250.1/24",
        unrouted: "198.19.251.9".parse().unwrap(),
        dead: "198.19.2.5".parse().unwrap(),
        dead_net: "198.19.2.0/24",
        dead_gateway: "198.18.0.99",
        flag: "-4",
    }
}

fn v6() -> Family {
    Family {
        client: common::CLIENT_V6.into(),
        far: "2001:2:1::5".parse().unwrap(),
        far_net: "2001:2:1::/64",
        other_if: "2001:2:fa::7".parse().unwrap(),
        other_if_addr: "2001:2:fa::1/64",
        unrouted: "2001:2:fb::9".parse().unwrap(),
        dead: "2001:2:2::5".parse().unwrap(),
        dead_net: "2001:2:2::/64",
        dead_gateway: "2001:2::99",
        flag: "-6",
    }
}

fn server(lab: &Lab, argv: &[&str]) {
    lab.exec(Side::Server, argv, T).expect_success();
}

/// A lab whose server namespace also has a second interface (one end of another veth pair, both ends there
/// and up; this kernel has no `dummy` driver) with an address of each family, so that some destinations are
/// routed out of another interface than the lab's veth.
fn lab_with_other_interface() -> Lab {
    let lab = Lab::new(1);
    let (other, peer) = (format!("{}d", lab.name()), format!("{}e", lab.name()));
    server(&lab, &["ip", "link", "add", &other, "type", "veth", "peer", "name", &peer]);
    for f in [v4(), v6()] {
        server(&lab, &["ip", f.flag, "addr", "add", f.other_if_addr, "dev", &other, "nodad"]);
    }
    server(&lab, &["ip", "link", "set", &peer, "up"]);
    server(&lab, &["ip", "link", "set", &other, "up"]);
    lab
}

fn server_ifindex(lab: &Lab) -> u32 {
    let name = lab.server_if();
    lab.in_server(move || sys::interface_index(&name)).expect("server interface index")
}

/// The client's IPv6 link-local address (the kernel gives every interface one).
fn client_link_local(lab: &Lab) -> Option<IpAddr> {
    let argv = ["ip", "-6", "-o", "addr", "show", "dev", &lab.client_if(), "scope", "link"];
    let out = lab.exec(Side::Client, &argv, T).expect_success().stdout;
    let addr = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
    addr.split('/').next()?.parse().ok()
}

/// Refreshes and looks `dst` up until `want` says yes, within [`DEADLINE`]; the last answer either way.
fn lookup_until(
    hops: &mut NextHops,
    dst: IpAddr,
    want: impl Fn(&Result<[u8; 6], Miss>) -> bool,
) -> Result<Result<[u8; 6], Miss>, Result<[u8; 6], Miss>> {
    let mut last = Err(Miss::Pending);
    let found = poll_until(DEADLINE, EVERY, || {
        hops.refresh();
        last = hops.lookup(dst);
        want(&last).then_some(last)
    });
    found.ok_or(last)
}

fn expect_mac(hops: &mut NextHops, dst: IpAddr, mac: [u8; 6], why: &str) {
    let started = Instant::now();
    let got = lookup_until(hops, dst, |r| *r == Ok(mac));
    assert!(
        got.is_ok(),
        "{why}: {dst} should resolve to {} within {DEADLINE:?}; last answer {got:?}",
        common::fmt_mac(&mac)
    );
    eprintln!("{why}: {dst} -> {} after {:?}", common::fmt_mac(&mac), started.elapsed());
}

fn expect_miss(hops: &mut NextHops, dst: IpAddr, miss: Miss, why: &str) {
    let got = lookup_until(hops, dst, |r| *r == Err(miss));
    assert!(got.is_ok(), "{why}: {dst} should miss with {miss:?} within {DEADLINE:?}; last answer {got:?}");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn route_socket_answers_like_ip_route_get_and_resolves_with_ntf_use() {
    common::require_lab();
    let lab = lab_with_other_interface();
    let ifindex = server_ifindex(&lab);
    let sif = lab.server_if();
    for f in [v4(), v6()] {
        let gateway = f.client.to_string();
        server(&lab, &["ip", f.flag, "route", "add", f.far_net, "via", &gateway, "dev", &sif]);
        server(&lab, &["ip", f.flag, "neigh", "flush", "dev", &sif]);
        let client_mac = lab.client_mac();
        let server_mac = lab.server_mac();
        let (f_client, f_far, f_other, f_unrouted) = (f.client, f.far, f.other_if, f.unrouted);
        let link_local = client_link_local(&lab).filter(|_| f.client.is_ipv6());
        lab.in_server(move || {
            let mut socket = RouteSocket::open().expect("netlink socket");
            assert_eq!(socket.link_mac(ifindex).unwrap(), Some(server_mac));

            let direct = socket.route_get(f_client).unwrap().expect("a route to the client");
            assert_eq!((direct.kind, direct.ifindex, direct.gateway), (RouteKind::Unicast, ifindex, None));
            assert!(direct.source.is_some(), "{direct:?}");
            let far = socket.route_get(f_far).unwrap().expect("a route to the far network");
            assert_eq!((far.kind, far.ifindex, far.gateway), (RouteKind::Unicast, ifindex, Some(f_client)));
            assert_eq!(far.next_hop(f_far), f_client);
            let other = socket.route_get(f_other).unwrap().expect("a route through the other interface");
            assert_ne!(other.ifindex, ifindex);
            assert_eq!(socket.route_get(f_unrouted).unwrap(), None, "no route to {f_unrouted}");
            if let Some(ll) = link_local {
                let on = socket.route_get_on(ll, Some(ifindex)).unwrap().expect("a route to the link-local address");
                assert_eq!((on.kind, on.ifindex, on.gateway), (RouteKind::Unicast, ifindex, None));
            }

            // Flushed: no entry (or one with no usable address). NTF_USE makes the kernel resolve it.
            let before = socket.neighbour_get(ifindex, f_client).unwrap();
            assert!(before.and_then(|n| n.usable_mac()).is_none(), "flushed, yet {before:?}");
            socket.neighbour_resolve(ifindex, f_client).expect("RTM_NEWNEIGH with NTF_USE");
            let resolved = poll_until(DEADLINE, EVERY, || {
                socket.neighbour_get(ifindex, f_client).unwrap().filter(|n| n.usable_mac().is_some())
            })
            .unwrap_or_else(|| panic!("NTF_USE did not resolve {f_client} within {DEADLINE:?}"));
            assert_eq!(resolved.lladdr, Some(client_mac));
            assert_eq!(resolved.state, NudState::REACHABLE);
            // Asking again for a valid entry changes nothing.
            socket.neighbour_resolve(ifindex, f_client).unwrap();
            assert_eq!(socket.neighbour_get(ifindex, f_client).unwrap().and_then(|n| n.usable_mac()), Some(client_mac));
        });
    }
}

/// The resolver and two workers' caches against the kernel, for one family.
fn resolver_follows_the_kernel(f: Family) {
    let lab = lab_with_other_interface();
    let ifindex = server_ifindex(&lab);
    let sif = lab.server_if();
    let client_mac = lab.client_mac();
    let gateway = f.client.to_string();
    server(&lab, &["ip", f.flag, "route", "add", f.far_net, "via", &gateway, "dev", &sif]);
    server(&lab, &["ip", f.flag, "neigh", "flush", "dev", &sif]);

    let (resolver, mut workers) = lab
        .in_server(move || Resolver::start(ResolverParams { capacity: 64, ..ResolverParams::new(ifindex, 2) }))
        .expect("resolver starts");
    assert_eq!(resolver.source_mac(), lab.server_mac());
    let mut w1 = workers.pop().unwrap();
    let mut w0 = workers.pop().unwrap();
    assert_eq!(w0.source_mac(), lab.server_mac());

    // Unresolved, directly connected: the first lookup misses, the resolver has the kernel resolve it, and
    // the client's MAC arrives.
    assert_eq!(w0.lookup(f.client), Err(Miss::Pending));
    expect_mac(&mut w0, f.client, client_mac, "connected, after a flush");
    let neigh = lab.exec(Side::Server, &["ip", f.flag, "neigh", "show", "dev", &sif], T).stdout;
    assert!(neigh.contains(&common::fmt_mac(&client_mac)), "the kernel resolved the client: {neigh}");

    // Behind a gateway: the gateway's MAC (the client's); in the other worker too.
    expect_mac(&mut w0, f.far, client_mac, "behind a gateway");
    expect_mac(&mut w1, f.far, client_mac, "behind a gateway, second worker");
    expect_mac(&mut w1, f.client, client_mac, "connected, second worker");

    // An IPv6 link-local destination (the client's own): looked up on our interface, the client's MAC.
    if let Some(link_local) = client_link_local(&lab).filter(|_| f.client.is_ipv6()) {
        expect_mac(&mut w0, link_local, client_mac, "link-local");
    }

    // Through another interface, or no route at all: NoRoute.
    expect_miss(&mut w0, f.other_if, Miss::NoRoute, "routed through another interface");
    expect_miss(&mut w0, f.unrouted, Miss::NoRoute, "no route");

    // The neighbour changes MAC: every cached destination through it follows, in every worker.
    let moved = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    server(
        &lab,
        &[
            "ip",
            f.flag,
            "neigh",
            "replace",
            &gateway,
            "dev",
            &sif,
            "lladdr",
            &common::fmt_mac(&moved),
            "nud",
            "permanent",
        ],
    );
    expect_mac(&mut w0, f.client, moved, "after the MAC changed");
    expect_mac(&mut w0, f.far, moved, "gateway after the MAC changed");
    expect_mac(&mut w1, f.far, moved, "gateway after the MAC changed, second worker");

    // The route goes away: the destination behind it is no longer sent to.
    server(&lab, &["ip", f.flag, "route", "del", f.far_net]);
    expect_miss(&mut w0, f.far, Miss::NoRoute, "gateway route removed");
    expect_miss(&mut w1, f.far, Miss::NoRoute, "gateway route removed, second worker");
    // ... and comes back.
    server(&lab, &["ip", f.flag, "route", "add", f.far_net, "via", &gateway, "dev", &sif]);
    expect_mac(&mut w0, f.far, moved, "gateway route back");

    // The neighbour entry is deleted: the old MAC is dropped at once (never served again), and the kernel
    // resolves the client afresh (the resolver asks it to, for a next hop it has handed out; and a worker asks
    // again after enough lookups of a negative answer).
    server(&lab, &["ip", f.flag, "neigh", "del", &gateway, "dev", &sif]);
    let gone = lookup_until(&mut w0, f.client, |r| *r != Ok(moved));
    assert!(matches!(gone, Ok(Err(Miss::Unresolved)) | Ok(Ok(_))), "deleted neighbour: {gone:?}");
    assert_ne!(gone, Ok(Ok(moved)));
    let started = Instant::now();
    let back = poll_until(DEADLINE, EVERY, || {
        w0.refresh();
        (0..5000).map(|_| w0.lookup(f.client)).find(|r| *r == Ok(client_mac))
    });
    assert!(back.is_some(), "the client was not resolved again within {DEADLINE:?}: {:?}", w0.lookup(f.client));
    eprintln!("re-resolved after deletion in {:?}", started.elapsed());
    expect_mac(&mut w1, f.far, client_mac, "gateway re-resolved, second worker");

    // The entry goes FAILED, or INCOMPLETE: its MAC is withdrawn from every worker.
    for nud in ["failed", "incomplete"] {
        let permanent = ["ip", f.flag, "neigh", "replace", &gateway, "dev", &sif, "lladdr", &common::fmt_mac(&moved)];
        server(&lab, &[&permanent[..], &["nud", "permanent"]].concat());
        expect_mac(&mut w0, f.far, moved, "permanent again");
        expect_mac(&mut w1, f.client, moved, "permanent again, second worker");
        server(&lab, &["ip", f.flag, "neigh", "replace", &gateway, "dev", &sif, "nud", nud]);
        let why = format!("neighbour set {nud}");
        expect_miss(&mut w0, f.client, Miss::Unresolved, &why);
        expect_miss(&mut w0, f.far, Miss::Unresolved, &why);
        expect_miss(&mut w1, f.client, Miss::Unresolved, &why);
    }

    // A gateway nobody answers for: Unresolved (INCOMPLETE, then FAILED), never a MAC.
    server(&lab, &["ip", f.flag, "route", "add", f.dead_net, "via", f.dead_gateway, "dev", &sif]);
    expect_miss(&mut w0, f.dead, Miss::Unresolved, "unanswered gateway");
    for _ in 0..100 {
        w0.refresh();
        assert_eq!(w0.lookup(f.dead), Err(Miss::Unresolved));
        std::thread::sleep(EVERY);
    }

    let stats = w0.stats();
    eprintln!("worker 0: {stats:?}; worker 1: {:?}", w1.stats());
    assert!(stats.misses > 0);
    assert_eq!(stats.requests_dropped, 0);

    // Stopping joins the thread; the caches then serve nothing.
    let t = Instant::now();
    resolver.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "stop took {:?}", t.elapsed());
    w0.refresh();
    assert_eq!(w0.lookup(f.client), Err(Miss::Pending));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn resolver_follows_the_kernel_ipv4() {
    common::require_lab();
    resolver_follows_the_kernel(v4());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn resolver_follows_the_kernel_ipv6() {
    common::require_lab();
    resolver_follows_the_kernel(v6());
}

/// The kernel re-confirming a next hop (REACHABLE, then DELAY or PROBE with a unicast probe, then REACHABLE
/// again) withdraws nothing: DELAY and PROBE entries keep their address, so the worker is served the MAC
/// throughout. Reachable time is cut to half a second to see two rounds quickly. (On this kernel the entry
/// goes round like this even without the resolver's nudge on STALE, so this does not show that the nudge is
/// needed; the resolver's unit tests show that it is given.)
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn re_confirming_a_next_hop_withdraws_nothing() {
    common::require_lab();
    let lab = Lab::new(1);
    let ifindex = server_ifindex(&lab);
    let sif = lab.server_if();
    let client_mac = lab.client_mac();
    for family in ["ipv4", "ipv6"] {
        server(
            &lab,
            &[
                "sysctl",
                "-qw",
                &format!("net.{family}.neigh.{sif}.base_reachable_time_ms=500"),
                &format!("net.{family}.neigh.{sif}.delay_first_probe_time=1"),
            ],
        );
    }
    // The client knows the server's MAC for good, so that it never solicits the server: the server's entry
    // for the client goes round on its own timers.
    let cif = lab.client_if();
    for (flag, server_ip) in [("-4", lab.server_v4().to_string()), ("-6", lab.server_v6().to_string())] {
        let mac = lab.server_mac_str();
        let argv = ["ip", flag, "neigh", "replace", &server_ip, "dev", &cif, "lladdr", &mac, "nud", "permanent"];
        lab.exec(Side::Client, &argv, T).expect_success();
    }
    let (resolver, mut workers) =
        lab.in_server(move || Resolver::start(ResolverParams::new(ifindex, 1))).expect("resolver starts");
    let w0 = &mut workers[0];
    for f in [v4(), v6()] {
        expect_mac(w0, f.client, client_mac, "connected");
        // Watch the kernel's entry until it has been re-confirmed (DELAY or PROBE, then REACHABLE) twice; the
        // worker's answer stays the client's MAC throughout.
        let client = f.client.to_string();
        let (mut previous, mut confirmations, mut seen) = (String::new(), 0, Vec::new());
        let confirmed = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            w0.refresh();
            assert_eq!(w0.lookup(f.client), Ok(client_mac));
            let out = lab.exec(Side::Server, &["ip", f.flag, "neigh", "show", &client, "dev", &sif], T).stdout;
            let state = out.split_whitespace().last().unwrap_or("none").to_string();
            if state != previous {
                if state == "REACHABLE" && (previous == "DELAY" || previous == "PROBE") {
                    confirmations += 1;
                }
                seen.push(state.clone());
                previous = state;
            }
            (confirmations >= 2).then_some(())
        });
        assert!(confirmed.is_some(), "{client}: not re-confirmed twice; states seen: {seen:?}");
        eprintln!("{client}: states seen {seen:?}");
    }
    resolver.stop();
}
