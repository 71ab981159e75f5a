//! The DNS example's unit tests: every behaviour on hand-built queries against the lab's test zone
//! (tests/data/dns), replies read back with hickory-proto's parser and the raw header.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::Message as Parsed;
use hickory_proto::rr::Record;
use shunt::handler::Time;

use super::*;
use crate::wire::rtype;

#[global_allocator]
static GLOBAL: crate::alloc::CountingAllocator = crate::alloc::CountingAllocator;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dns");

fn zones() -> Arc<Zones> {
    let args =
        [format!("{DATA}/example.test.zone"), format!("10.18.198.in-addr.arpa={DATA}/10.18.198.in-addr.arpa.zone")];
    Arc::new(Zones::load(&args).unwrap())
}

fn server() -> Server<Arc<Zones>> {
    Server::new(zones(), 1232, Rrl::new(0, 0))
}

/// EDNS in a query: UDP size, version, DO.
#[derive(Clone, Copy)]
struct Edns(u16, u8, bool);

fn opt(e: Edns) -> Vec<u8> {
    let mut o = vec![0, 0, 41];
    o.extend(e.0.to_be_bytes());
    o.extend([0, e.1, if e.2 { 0x80 } else { 0 }, 0]);
    o.extend([0, 0]);
    o
}

fn qname(name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q
}

/// A query: id 0x1234, RD, one question, an OPT if `edns`.
fn query(name: &str, qtype: u16, edns: Option<Edns>) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())];
    q.extend(qname(name));
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    if let Some(e) = edns {
        q.extend(opt(e));
    }
    q
}

const CLIENT: &str = "198.18.0.2";

/// Runs `q` through the server in a 4 kB frame; the reply's bytes, or None.
fn ask_at(s: &mut Server<Arc<Zones>>, q: &[u8], src: &str, now_ns: u64) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    buf[..q.len()].copy_from_slice(q);
    let src: IpAddr = src.parse().unwrap();
    s.answer(&mut buf, q.len(), src, now_ns).map(|n| buf[..n].to_vec())
}

fn ask(q: &[u8]) -> Vec<u8> {
    ask_at(&mut server(), q, CLIENT, 0).expect("a reply")
}

/// The reply's header fields.
struct Header {
    id: u16,
    flags: u16,
    counts: [u16; 4],
}

fn header(r: &[u8]) -> Header {
    let w = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
    Header { id: w(0), flags: w(2), counts: [w(4), w(6), w(8), w(10)] }
}

fn rcode(r: &[u8]) -> u16 {
    header(r).flags & 0xF
}

fn aa(r: &[u8]) -> bool {
    header(r).flags & 0x0400 != 0
}

fn tc(r: &[u8]) -> bool {
    header(r).flags & 0x0200 != 0
}

fn parsed(r: &[u8]) -> Parsed {
    Parsed::from_vec(r).unwrap_or_else(|e| panic!("unparsable reply {r:02x?}: {e}"))
}

/// A section as sorted "name TTL TYPE RDATA" lines.
fn lines(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name().to_lowercase(), r.ttl(), r.record_type(), r.data()))
        .collect();
    v.sort();
    v
}

fn answer_of(r: &[u8]) -> Vec<String> {
    lines(parsed(r).answers())
}

fn authority_of(r: &[u8]) -> Vec<String> {
    lines(parsed(r).name_servers())
}

/// The additional section without the OPT (hickory takes it out into `extensions`).
fn additional_of(r: &[u8]) -> Vec<String> {
    lines(parsed(r).additionals())
}

const SOA: &str = "example.test. 300 SOA ns1.example.test. hostmaster.example.test. 2026120701 3600 900 604800 300";

#[test]
fn every_record_type_is_answered_with_additional_addresses_for_ns_mx_srv() {
    let a = ask(&query("example.test", rtype::A, None));
    assert_eq!((rcode(&a), aa(&a), tc(&a)), (0, true, false));
    assert_eq!(answer_of(&a), ["example.test. 3600 A 198.18.10.1"]);
    assert!(authority_of(&a).is_empty() && additional_of(&a).is_empty());

    assert_eq!(answer_of(&ask(&query("example.test", rtype::AAAA, None))), ["example.test. 3600 AAAA 2001:2::10:1"]);
    let mx = ask(&query("example.test", rtype::MX, None));
    assert_eq!(
        answer_of(&mx),
        ["example.test. 3600 MX 10 mail.example.test.", "example.test. 3600 MX 20 mx.example.net."]
    );
    assert_eq!(
        additional_of(&mx),
        ["mail.example.test. 3600 A 198.18.10.4", "mail.example.test. 3600 AAAA 2001:2::10:4"]
    );
    let ns = ask(&query("example.test", rtype::NS, None));
    assert_eq!(answer_of(&ns), ["example.test. 3600 NS ns1.example.test.", "example.test. 3600 NS ns2.example.test."]);
    assert_eq!(
        additional_of(&ns),
        [
            "ns1.example.test. 3600 A 198.18.10.2",
            "ns1.example.test. 3600 AAAA 2001:2::10:2",
            "ns2.example.test. 3600 A 198.18.10.3"
        ]
    );
    assert_eq!(
        answer_of(&ask(&query("example.test", rtype::SOA, None))),
        ["example.test. 3600 SOA ns1.example.test. hostmaster.example.test. 2026120701 3600 900 604800 300"]
    );
    assert_eq!(answer_of(&ask(&query("example.test", rtype::TXT, None))), ["example.test. 3600 TXT v=spf1 -all"]);
    let multi = answer_of(&ask(&query("multi.example.test", rtype::TXT, None)));
    assert_eq!(multi, ["multi.example.test. 3600 TXT another string", "multi.example.test. 3600 TXT onetwothree"]);
    let srv = ask(&query("_sip._udp.example.test", rtype::SRV, None));
    assert_eq!(
        answer_of(&srv),
        [
            "_sip._udp.example.test. 3600 SRV 10 60 5060 sip.example.test.",
            "_sip._udp.example.test. 3600 SRV 20 0 5060 sip2.example.net."
        ]
    );
    assert_eq!(
        additional_of(&srv),
        ["sip.example.test. 3600 A 198.18.10.7", "sip.example.test. 3600 AAAA 2001:2::10:7"]
    );
    assert_eq!(
        answer_of(&ask(&query("ptr.example.test", rtype::PTR, None))),
        ["ptr.example.test. 3600 PTR host1.example.test."]
    );
    assert_eq!(
        answer_of(&ask(&query("5.10.18.198.in-addr.arpa", rtype::PTR, None))),
        ["5.10.18.198.in-addr.arpa. 3600 PTR host1.example.test."],
        "the second zone, given as ORIGIN=FILE"
    );
    let caa = ask(&query("example.test", rtype::CAA, None));
    let caa_raw = parsed(&caa).answers().iter().map(|r| r.data().to_string()).collect::<Vec<_>>();
    assert_eq!(caa_raw.len(), 2, "{caa_raw:?}");
    assert!(caa_raw.iter().any(|c| c.contains("issue") && c.contains("letsencrypt.org")), "{caa_raw:?}");
    assert_eq!(
        answer_of(&ask(&query("www.example.test", rtype::CNAME, None))),
        ["www.example.test. 3600 CNAME web.example.test."],
        "a CNAME query gets the CNAME, not chased"
    );
}

#[test]
fn cname_chains_are_followed_inside_the_zone() {
    let r = ask(&query("www.example.test", rtype::A, None));
    assert_eq!((rcode(&r), aa(&r)), (0, true));
    assert_eq!(
        answer_of(&r),
        [
            "host1.example.test. 3600 A 198.18.10.5",
            "host1.example.test. 3600 A 198.18.10.6",
            "web.example.test. 3600 CNAME host1.example.test.",
            "www.example.test. 3600 CNAME web.example.test.",
        ]
    );
    // To a name that does not exist: NXDOMAIN (RFC 6604), the CNAME, the SOA.
    let r = ask(&query("dangling.example.test", rtype::A, None));
    assert_eq!(rcode(&r), 3);
    assert_eq!(answer_of(&r), ["dangling.example.test. 3600 CNAME nowhere.example.test."]);
    assert_eq!(authority_of(&r), [SOA]);
    // Out of the zone: the CNAME alone; a loop: each link once.
    assert_eq!(
        answer_of(&ask(&query("external.example.test", rtype::A, None))),
        ["external.example.test. 3600 CNAME www.example.net."]
    );
    let r = ask(&query("loop1.example.test", rtype::A, None));
    assert_eq!(rcode(&r), 0);
    assert_eq!(
        answer_of(&r),
        ["loop1.example.test. 3600 CNAME loop2.example.test.", "loop2.example.test. 3600 CNAME loop1.example.test."]
    );
    // Through a wildcard CNAME, the owner being the query name.
    assert_eq!(
        answer_of(&ask(&query("zz.cw.example.test", rtype::A, None))),
        [
            "host1.example.test. 3600 A 198.18.10.5",
            "host1.example.test. 3600 A 198.18.10.6",
            "zz.cw.example.test. 3600 CNAME host1.example.test.",
        ]
    );
}

#[test]
fn nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl() {
    let r = ask(&query("nothere.example.test", rtype::A, None));
    assert_eq!((rcode(&r), aa(&r)), (3, true));
    assert!(answer_of(&r).is_empty());
    assert_eq!(authority_of(&r), [SOA], "TTL min(3600, MINIMUM 300)");
    let r = ask(&query("mail.example.test", rtype::TXT, None));
    assert_eq!((rcode(&r), aa(&r)), (0, true));
    assert!(answer_of(&r).is_empty());
    assert_eq!(authority_of(&r), [SOA]);
    // An empty non-terminal exists: NODATA, and names below it that do not exist are NXDOMAIN.
    let r = ask(&query("ent.example.test", rtype::A, None));
    assert_eq!((rcode(&r), authority_of(&r)), (0, vec![SOA.to_string()]));
    assert_eq!(rcode(&ask(&query("b.ent.example.test", rtype::A, None))), 0);
    assert_eq!(rcode(&ask(&query("x.ent.example.test", rtype::A, None))), 3);
    // A type the zone does not have anywhere.
    assert_eq!(rcode(&ask(&query("example.test", 999, None))), 0);
}

#[test]
fn delegations_are_referrals_with_glue_and_without_aa() {
    for name in ["sub.example.test", "foo.sub.example.test", "a.b.sub.example.test", "ns.sub.example.test"] {
        let r = ask(&query(name, rtype::A, None));
        assert_eq!((rcode(&r), aa(&r)), (0, false), "{name}");
        assert!(answer_of(&r).is_empty(), "{name}");
        assert_eq!(
            authority_of(&r),
            ["sub.example.test. 3600 NS ns.example.net.", "sub.example.test. 3600 NS ns.sub.example.test."],
            "{name}"
        );
        assert_eq!(
            additional_of(&r),
            ["ns.sub.example.test. 3600 A 198.18.10.9", "ns.sub.example.test. 3600 AAAA 2001:2::10:9"],
            "{name}"
        );
    }
    // The DS at the cut is the parent's: an authoritative NODATA here (the zone is unsigned).
    let r = ask(&query("sub.example.test", rtype::DS, None));
    assert_eq!((rcode(&r), aa(&r), authority_of(&r)), (0, true, vec![SOA.to_string()]));
}

#[test]
fn wildcards_follow_rfc_4592() {
    let r = ask(&query("anything.wild.example.test", rtype::A, None));
    assert_eq!((rcode(&r), aa(&r)), (0, true));
    assert_eq!(answer_of(&r), ["anything.wild.example.test. 3600 A 198.18.10.20"], "owner = the query name");
    assert_eq!(
        answer_of(&ask(&query("a.b.wild.example.test", rtype::TXT, None))),
        ["a.b.wild.example.test. 3600 TXT wildcard"]
    );
    let mx = ask(&query("m.wild.example.test", rtype::MX, None));
    assert_eq!(additional_of(&mx).len(), 2, "additional addresses for a synthesised MX");
    // NODATA at a wildcard match.
    let r = ask(&query("q.wild.example.test", rtype::AAAA, None));
    assert_eq!((rcode(&r), answer_of(&r).len(), authority_of(&r)), (0, 0, vec![SOA.to_string()]));
    // An existing name blocks the wildcard: its own data, NODATA, and NXDOMAIN below it (closest encloser
    // exists.wild, which has no wildcard child).
    assert_eq!(
        answer_of(&ask(&query("exists.wild.example.test", rtype::A, None))),
        ["exists.wild.example.test. 3600 A 198.18.10.21"]
    );
    let r = ask(&query("exists.wild.example.test", rtype::TXT, None));
    assert_eq!((rcode(&r), answer_of(&r).len()), (0, 0));
    assert_eq!(rcode(&ask(&query("a.exists.wild.example.test", rtype::A, None))), 3);
    // An empty non-terminal blocks it too: y.w2 exists (x.y.w2 is below it).
    let r = ask(&query("y.w2.example.test", rtype::A, None));
    assert_eq!((rcode(&r), answer_of(&r).len()), (0, 0));
    assert_eq!(rcode(&ask(&query("z.y.w2.example.test", rtype::A, None))), 3);
    assert_eq!(
        answer_of(&ask(&query("q.w2.example.test", rtype::A, None))),
        ["q.w2.example.test. 3600 A 198.18.10.31"]
    );
    // The wildcard name itself, asked literally.
    assert_eq!(
        answer_of(&ask(&query("*.wild.example.test", rtype::A, None))),
        ["*.wild.example.test. 3600 A 198.18.10.20"]
    );
}

#[test]
fn any_gets_the_first_rrset_by_type() {
    assert_eq!(answer_of(&ask(&query("example.test", rtype::ANY, None))), ["example.test. 3600 A 198.18.10.1"]);
    assert_eq!(
        answer_of(&ask(&query("www.example.test", rtype::ANY, None))),
        ["www.example.test. 3600 CNAME web.example.test."]
    );
    let r = ask(&query("_sip._udp.example.test", rtype::ANY, None));
    assert_eq!((answer_of(&r).len(), additional_of(&r).len()), (2, 2));
}

#[test]
fn edns_gets_an_opt_with_the_servers_size_and_the_do_bit_echoed() {
    let r = ask(&query("example.test", rtype::A, Some(Edns(4096, 0, true))));
    let p = parsed(&r);
    let e = p.extensions().as_ref().expect("an OPT");
    assert_eq!((e.max_payload(), e.version(), e.flags().dnssec_ok), (1232, 0, true));
    assert_eq!(header(&r).counts, [1, 1, 0, 1]);
    let r = ask(&query("example.test", rtype::A, Some(Edns(1232, 0, false))));
    assert!(!parsed(&r).extensions().as_ref().unwrap().flags().dnssec_ok);
    // No OPT without EDNS.
    assert_eq!(header(&ask(&query("example.test", rtype::A, None))).counts[3], 0);
}

#[test]
fn edns_version_1_gets_badvers() {
    let r = ask(&query("example.test", rtype::A, Some(Edns(1232, 1, false))));
    assert_eq!(rcode(&r), 0, "BADVERS is 16: 0 in the header");
    assert!(!aa(&r));
    assert_eq!(header(&r).counts, [1, 0, 0, 1]);
    let opt_ttl = &r[r.len() - 6..r.len() - 2];
    assert_eq!(opt_ttl, [1, 0, 0, 0], "extended rcode 1 (BADVERS), version 0");
    // Even for a name out of the zones (the version is checked first).
    let r = ask(&query("example.org", rtype::A, Some(Edns(1232, 1, false))));
    assert_eq!(r[r.len() - 6], 1);
}

#[test]
fn a_malformed_opt_is_formerr_with_the_question() {
    let q = query("example.test", rtype::A, None);
    let edns = opt(Edns(1232, 0, false));
    let with = |an: u8, ns: u8, ar: u8, tail: &[u8]| {
        let mut m = q.clone();
        m[7] = an;
        m[9] = ns;
        m[11] = ar;
        m.extend(tail);
        m
    };
    let mut bad_owner = vec![1, b'a', 0];
    bad_owner.extend(&edns[1..]);
    let mut bad_options = edns[..edns.len() - 2].to_vec();
    bad_options.extend([0, 3, 0, 10, 0]);
    let cases = [
        ("two OPTs", with(0, 0, 2, &[edns.clone(), edns.clone()].concat())),
        ("OPT in the answer section", with(1, 0, 0, &edns)),
        ("OPT in the authority section", with(0, 1, 0, &edns)),
        ("OPT not owned by the root", with(0, 0, 1, &bad_owner)),
        ("an option cut short", with(0, 0, 1, &bad_options)),
        ("an OPT promised but missing", with(0, 0, 1, &[])),
        ("bytes after the last record", with(0, 0, 0, b"xyz")),
    ];
    for (what, m) in cases {
        let r = ask(&m);
        assert_eq!(rcode(&r), 1, "{what}: FORMERR");
        assert_eq!(header(&r).counts, [1, 0, 0, 0], "{what}: the question alone");
        assert_eq!(&r[12..], &q[12..], "{what}: the question echoed");
        assert!(!aa(&r), "{what}");
    }
}

#[test]
fn answers_that_do_not_fit_are_truncated_to_header_question_and_opt() {
    let q = query("big.example.test", rtype::TXT, None);
    let r = ask(&q);
    assert_eq!((rcode(&r), aa(&r), tc(&r)), (0, true, true));
    assert_eq!(header(&r).counts, [1, 0, 0, 0]);
    assert_eq!(r.len(), q.len(), "header and question");
    // It fits the server's 1232 with EDNS.
    let r = ask(&query("big.example.test", rtype::TXT, Some(Edns(1232, 0, false))));
    assert!(!tc(&r));
    assert_eq!(answer_of(&r).len(), 5);
    assert!(r.len() > 512 && r.len() <= 1232);
    // A size below 512 counts as 512.
    let q = query("big.example.test", rtype::TXT, Some(Edns(100, 0, false)));
    let r = ask(&q);
    assert!(tc(&r));
    assert_eq!(header(&r).counts, [1, 0, 0, 1], "the OPT stays");
    assert_eq!(r.len(), q.len());
    // More than the server's size, whatever the client offers.
    let r = ask(&query("huge.example.test", rtype::TXT, Some(Edns(65000, 0, false))));
    assert!(tc(&r));
    let r = ask_at(
        &mut Server::new(zones(), 4096, Rrl::new(0, 0)),
        &query("huge.example.test", rtype::TXT, Some(Edns(4096, 0, false))),
        CLIENT,
        0,
    )
    .unwrap();
    assert!(!tc(&r) && r.len() > 1232, "with --udp-size 4096 it fits");
    // Additional records that do not fit are left out without TC: the NS answer (97 bytes with glue) at 512
    // always fits, so check with a frame too small for the glue.
    let q = query("example.test", rtype::NS, None);
    let mut buf = [0u8; 80];
    buf[..q.len()].copy_from_slice(&q);
    let n = server().answer(&mut buf, q.len(), CLIENT.parse().unwrap(), 0).unwrap();
    let r = &buf[..n];
    assert!(!tc(r));
    assert_eq!(header(r).counts[1..3], [2, 0]);
}

#[test]
fn refused_outside_the_zones_and_for_other_classes() {
    for q in [query("example.org", rtype::A, None), query("test", rtype::A, None), query("", rtype::NS, None)] {
        let r = ask(&q);
        assert_eq!((rcode(&r), aa(&r), header(&r).counts), (5, false, [1, 0, 0, 0]));
    }
    let mut ch = query("example.test", rtype::A, None);
    let n = ch.len();
    ch[n - 1] = 3; // CH
    assert_eq!(rcode(&ask(&ch)), 5);
    ch[n - 1] = 255; // ANY: answered as IN
    assert_eq!(rcode(&ask(&ch)), 0);
    // Over UDP there are no zone transfers.
    assert_eq!(rcode(&ask(&query("example.test", rtype::AXFR, None))), 4);
    assert_eq!(rcode(&ask(&query("example.test", rtype::IXFR, None))), 4);
    assert_eq!(rcode(&ask(&query("example.test", 0, None))), 4);
}

#[test]
fn malformed_queries_get_formerr_and_responses_nothing() {
    let q = query("example.test", rtype::A, None);
    let formerr_header_only = |m: &[u8], what: &str| {
        let r = ask(m);
        assert_eq!(r.len(), 12, "{what}: header only");
        assert_eq!((rcode(&r), header(&r).counts), (1, [0, 0, 0, 0]), "{what}");
        assert_eq!(header(&r).id, 0x1234, "{what}");
        assert_eq!(header(&r).flags & 0x8100, 0x8100, "{what}: QR, RD copied");
    };
    let mut none = q[..12].to_vec();
    none[5] = 0;
    formerr_header_only(&none, "QDCOUNT 0");
    let mut two = q.clone();
    two[5] = 2;
    two.extend(&q[12..]);
    formerr_header_only(&two, "QDCOUNT 2");
    formerr_header_only(&q[..q.len() - 2], "question cut short");
    formerr_header_only(&q[..20], "name cut short");
    let mut compressed = q[..12].to_vec();
    compressed.extend([0xC0, 12, 0, 1, 0, 1]);
    formerr_header_only(&compressed, "compressed question name");
    let mut long_label = q[..12].to_vec();
    long_label.extend([64]);
    long_label.extend([b'a'; 64]);
    long_label.extend([0, 0, 1, 0, 1]);
    formerr_header_only(&long_label, "a 64-byte label");
    let mut long_name = q[..12].to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend([b'a'; 63]);
    }
    long_name.extend([0, 0, 1, 0, 1]);
    formerr_header_only(&long_name, "a 321-byte name");

    // QR set: no answer (never answer a response); shorter than a header: nothing to answer.
    let mut response = q.clone();
    response[2] |= 0x80;
    assert_eq!(ask_at(&mut server(), &response, CLIENT, 0), None);
    assert_eq!(ask_at(&mut server(), &q[..11], CLIENT, 0), None);
    assert_eq!(ask_at(&mut server(), &[], CLIENT, 0), None);
}

#[test]
fn other_opcodes_get_notimp_with_the_question() {
    for opcode in [1u8, 2, 4, 5, 15] {
        let mut q = query("example.test", rtype::A, None);
        q[2] = opcode << 3 | 1;
        let r = ask(&q);
        assert_eq!(rcode(&r), 4, "opcode {opcode}");
        assert_eq!((header(&r).flags >> 11) & 0xF, u16::from(opcode), "opcode echoed");
        assert_eq!(&r[12..], &q[12..]);
    }
}

#[test]
fn only_rd_is_copied_and_the_question_keeps_its_case() {
    let mut q = query("WwW.ExAmPlE.TeSt", rtype::A, None);
    q[2] = 0x07; // AA TC RD
    q[3] = 0xF0; // RA Z AD CD
    let r = ask(&q);
    assert_eq!(header(&r).flags, 0x8500, "QR AA RD, NOERROR");
    assert_eq!(&r[12..12 + 18], &q[12..12 + 18], "the question as asked");
    assert_eq!(answer_of(&r).len(), 4);
    // The answer's first owner is a pointer to the question.
    assert_eq!(&r[q.len()..q.len() + 2], [0xC0, 12]);
    let mut q = query("example.test", rtype::A, None);
    q[2] = 0;
    assert_eq!(header(&ask(&q)).flags, 0x8400);
}

#[test]
fn names_are_compressed() {
    let r = ask(&query("example.test", rtype::NS, None));
    // Uncompressed the NS answer and its glue would take 30 (question) + 2 × 44 + 3 × (4 + 18 + 10) ...;
    // compressed every owner and target is a pointer or a label and a pointer.
    assert!(r.len() < 160, "{} bytes", r.len());
    assert!(r.windows(2).filter(|w| w == &[0xC0, 12]).count() >= 2, "owners point at the question");
    // SRV targets are not compressed (RFC 2782): "sip" + "example" + "test" in full.
    let r = ask(&query("_sip._udp.example.test", rtype::SRV, None));
    let full: &[u8] = b"\x03sip\x07example\x04test\x00";
    assert!(r.windows(full.len()).any(|w| w == full), "the SRV target in full");
}

#[test]
fn rate_limited_responses_are_dropped_or_slipped_per_prefix() {
    let mut s = Server::new(zones(), 1232, Rrl::new(3, 2));
    let q = query("big.example.test", rtype::TXT, Some(Edns(1232, 0, false)));
    let t = 5_000_000_000;
    let replies: Vec<Option<Vec<u8>>> = (0..7).map(|_| ask_at(&mut s, &q, "198.18.0.2", t)).collect();
    for r in &replies[..3] {
        let r = r.as_ref().unwrap();
        assert!(!tc(r) && answer_of(r).len() == 5);
    }
    assert_eq!(replies[3], None);
    let slipped = replies[4].as_ref().expect("every 2nd limited one slips");
    assert!(tc(slipped) && !aa(slipped));
    assert_eq!(header(slipped).counts, [1, 0, 0, 1], "question and OPT");
    assert!(slipped.len() <= q.len(), "no amplification: {} > {}", slipped.len(), q.len());
    assert_eq!(replies[5], None);
    assert!(replies[6].is_some());
    // Another /24 is not limited; the same /24 is.
    assert!(!tc(&ask_at(&mut s, &q, "198.18.1.2", t).unwrap()));
    assert_eq!(ask_at(&mut s, &q, "198.18.0.77", t), None);
    // A second later the prefix has its rate again.
    assert!(!tc(&ask_at(&mut s, &q, "198.18.0.2", t + 1_000_000_000).unwrap()));
    assert_eq!((s.counters.rate_limited, s.counters.slipped), (3, 2));
}

#[test]
fn the_handler_adapter_declares_its_bound_and_port_53() {
    let h =
        Dns { server: Server::new(zones(), 1232, Rrl::new(0, 0)), worker: WorkerInfo { index: 0, queue: 0, core: 0 } };
    assert_eq!(h.budget(40), shunt::Budget { packets: 1, bytes: 1232 });
    assert_eq!(h.client_source_ports(), [53]);
    let mut h = h;
    let q = query("www.example.test", rtype::A, None);
    let req = Request::new("198.18.0.2:4000".parse().unwrap(), "198.18.0.1:53".parse().unwrap(), Time::default());
    let mut harness = shunt::handler::testing::Harness::new();
    let answered = harness.request(&mut h, &req, &q);
    let Some(reply) = answered.reply else { panic!("no reply: {:?}", answered.outcome) };
    assert_eq!(answer_of(&reply).len(), 4);
    assert!(answered.sent.is_empty(), "a DNS answer is the in-place reply, nothing else");
    let mut response = q.clone();
    response[2] |= 0x80;
    assert_eq!(harness.request(&mut h, &req, &response).reply, None, "no answer to a response (QR set)");
}

/// Every query the other tests send, in one list.
fn corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let names = [
        "example.test",
        "www.example.test",
        "dangling.example.test",
        "loop1.example.test",
        "foo.sub.example.test",
        "x.wild.example.test",
        "zz.cw.example.test",
        "big.example.test",
        "huge.example.test",
        "nothere.example.test",
        "y.w2.example.test",
        "example.org",
        "_sip._udp.example.test",
        "5.10.18.198.in-addr.arpa",
    ];
    let edns = [None, Some(Edns(512, 0, false)), Some(Edns(1232, 0, true)), Some(Edns(4096, 1, false))];
    for name in names {
        for t in [rtype::A, rtype::AAAA, rtype::NS, rtype::MX, rtype::TXT, rtype::SRV, rtype::ANY, rtype::SOA] {
            for e in edns {
                v.push(query(name, t, e));
            }
        }
    }
    v
}

#[test]
fn answering_allocates_nothing() {
    let mut s = Server::new(zones(), 1232, Rrl::new(5, 2));
    let queries = corpus();
    let mut buf = [0u8; 4096];
    let (answered, allocations) = crate::alloc::count_allocations(|| {
        let mut answered = 0;
        for (i, q) in queries.iter().enumerate() {
            buf[..q.len()].copy_from_slice(q);
            let src = IpAddr::from([198, 18, (i % 7) as u8, 2]);
            answered += usize::from(s.answer(&mut buf, q.len(), src, i as u64 * 1_000_000).is_some());
        }
        answered
    });
    assert!(answered > queries.len() / 2, "{answered} of {}", queries.len());
    assert_eq!(allocations, 0, "the hot path allocated");
}

/// Any input, in any frame size: never a panic, and a reply never longer than the frame or the bound.
#[test]
fn no_input_panics() {
    let mut s = Server::new(zones(), 1232, Rrl::new(0, 0));
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let corpus = corpus();
    for round in 0..200_000 {
        let mut m = corpus[(next() % corpus.len() as u64) as usize].clone();
        match round % 4 {
            0 => {
                for _ in 0..1 + next() % 4 {
                    let i = (next() % m.len() as u64) as usize;
                    m[i] = next() as u8;
                }
            }
            1 => m.truncate((next() % (m.len() as u64 + 1)) as usize),
            2 => m = (0..next() % 600).map(|_| next() as u8).collect(),
            _ => {
                let i = (next() % m.len() as u64) as usize;
                m.insert(i, next() as u8);
            }
        }
        let frame = (m.len() + (next() % 1500) as usize).min(4096);
        let mut buf = vec![0u8; frame.max(m.len())];
        buf[..m.len()].copy_from_slice(&m);
        if let Some(n) = s.answer(&mut buf, m.len(), "198.18.0.2".parse().unwrap(), 0) {
            assert!(n <= buf.len() && n <= 1232, "{n}");
            assert!(n >= 12);
        }
    }
}

#[test]
fn zone_files_that_cannot_be_served_are_refused_at_start_up() {
    let dir = std::env::temp_dir().join(format!("shunt-dns-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let head = "$ORIGIN z.test.\n$TTL 60\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\n";
    let ok = write("ok.zone", &format!("{head}ns A 198.18.0.1\n"));
    assert!(Zones::load(std::slice::from_ref(&ok)).is_ok());
    assert!(Zones::load(&[format!("other.test={ok}")]).is_err(), "records outside the origin given");
    let cases = [
        ("nosoa.zone", "$ORIGIN z.test.\n@ 60 NS ns\n", "SOA"),
        ("outside.zone", &format!("{head}www.example.org. A 198.18.0.1\n"), "outside"),
        ("cname.zone", &format!("{head}a CNAME b\na A 198.18.0.1\n"), "CNAME"),
        ("dname.zone", &format!("{head}a DNAME b\n"), "DNAME"),
        ("syntax.zone", &format!("{head}a A not-an-address\n"), ""),
    ];
    for (file, body, why) in cases {
        let e = Zones::load(&[write(file, body)]).expect_err(file);
        assert!(e.contains(why), "{file}: {e}");
    }
    assert!(Zones::load(&[ok.clone(), ok]).unwrap_err().contains("twice"));
    assert!(Zones::load(&["/nonexistent/zone".to_string()]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_master_file_reader_follows_rfc_1035_and_2308() {
    let text = r#"; a comment
$ORIGIN m.test.
$TTL 1h
@   IN  SOA ns hm ( 7 ; serial
                    2 3 4 5 )
    NS  ns.m.test.
ns  300 IN A 198.18.0.1   ; explicit TTL, class after it
    IN 600 AAAA 2001:2::1 ; class before the TTL, owner carried over
txt TXT "a \"quoted\" string; not a comment" plain \065BC
Mixed.Case A 198.18.0.2
mixed.case A 198.18.0.2
$ORIGIN sub.m.test.
deep A 198.18.0.3
"#;
    let (origin, sets) = zone::master::parse(text, None).unwrap();
    assert_eq!(origin.to_string(), "m.test.");
    let find = |name: &str, t: &str| {
        sets.iter().find(|s| s.owner.to_string().eq_ignore_ascii_case(name) && s.rtype.to_string() == t).unwrap()
    };
    assert_eq!(find("m.test.", "SOA").ttl, 3600, "the SOA's TTL is $TTL (not its EXPIRE or MINIMUM)");
    assert_eq!(find("m.test.", "SOA").rdata[0].to_string(), "ns.m.test. hm.m.test. 7 2 3 4 5");
    assert_eq!(find("m.test.", "NS").ttl, 3600, "owner carried over from the SOA line");
    assert_eq!(find("ns.m.test.", "A").ttl, 300);
    assert_eq!(find("ns.m.test.", "AAAA").ttl, 600);
    let txt = find("txt.m.test.", "TXT");
    assert_eq!(txt.ttl, 3600, "an explicit TTL does not change the $TTL default (RFC 2308)");
    let hickory_proto::rr::RData::TXT(strings) = &txt.rdata[0] else { panic!("{:?}", txt.rdata) };
    let strings: Vec<&[u8]> = strings.txt_data().iter().map(|s| &s[..]).collect();
    assert_eq!(strings, [&b"a \"quoted\" string; not a comment"[..], b"plain", b"ABC"]);
    assert_eq!(
        find("mixed.case.m.test.", "A").rdata.len(),
        1,
        "one RRset, the duplicate dropped, names compared without case"
    );
    assert_eq!(find("deep.sub.m.test.", "A").ttl, 3600);
    // The loader turns them into a zone with an empty non-terminal (sub) and the negative TTL min(3600, 5).
    let zone = zone::Zone::build(&origin, sets).unwrap();
    assert_eq!(zone.negative_ttl, 5);
    assert!(zone.nodes.get(&b"\x03sub\x01m\x04test\x00"[..]).is_some_and(|n| n.rrsets.is_empty()));
    for bad in [
        "$ORIGIN x.\n@ SOA ns hm (1 2 3 4 5\n",
        "$ORIGIN x.\n$INCLUDE other.zone\n",
        "a A 198.18.0.1\n",
        "$ORIGIN x.\na A 198.18.0.1\n",
        "$ORIGIN x.\n$TTL 60\na CH A 198.18.0.1\n",
    ] {
        assert!(zone::master::parse(bad, None).is_err(), "{bad:?}");
    }
}

#[test]
fn referral_glue_that_does_not_fit_sets_tc_and_keeps_what_fits() {
    // 8 NS under bigsub with A and AAAA glue each: not all 16 glue records fit 512 bytes.
    let r = ask(&query("x.bigsub.example.test", rtype::A, None));
    assert_eq!((rcode(&r), aa(&r), tc(&r)), (0, false, true));
    assert_eq!(header(&r).counts[..3], [1, 0, 8]);
    assert!((1..16).contains(&header(&r).counts[3]), "some glue, not all: {}", header(&r).counts[3]);
    assert!(r.len() <= 512 && r.len() > 400, "{}", r.len());
    // With room, all of it and no TC.
    let r = ask(&query("x.bigsub.example.test", rtype::A, Some(Edns(1232, 0, false))));
    assert!(!tc(&r));
    assert_eq!(header(&r).counts, [1, 0, 8, 17]);
}

#[test]
fn additional_addresses_come_from_wildcards_and_glue_too() {
    let r = ask(&query("wmx.example.test", rtype::MX, None));
    assert_eq!(additional_of(&r), ["foo.wild.example.test. 3600 A 198.18.10.20"]);
    let r = ask(&query("nsx.example.test", rtype::MX, None));
    assert_eq!(
        additional_of(&r),
        ["ns.sub.example.test. 3600 A 198.18.10.9", "ns.sub.example.test. 3600 AAAA 2001:2::10:9"]
    );
    // A CNAME into a delegation: the CNAME, then the referral, authoritative for the CNAME (as Knot).
    let r = ask(&query("tosub.example.test", rtype::A, None));
    assert_eq!((rcode(&r), aa(&r), answer_of(&r).len(), authority_of(&r).len()), (0, true, 1, 2));
    // A CNAME into the other zone served: not followed (as Knot).
    assert_eq!(answer_of(&ask(&query("torev.example.test", rtype::PTR, None))).len(), 1);
}
