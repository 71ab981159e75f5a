//! Zones: RFC 1035 master files parsed at start-up ([`master`]: entries, `$ORIGIN`, `$TTL`; hickory-proto's
//! parser for each record's data), turned into the lookup structure
//! the hot path reads: per zone a hash map from lower-case wire-format owner name to its node (RRsets sorted by
//! type), with every empty non-terminal present as a node without RRsets. RDATA is kept in wire format, split
//! where it holds a domain name so the reply writer can compress the names RFC 3597 lets it compress.
//!
//! Everything here allocates freely; it runs once, before the workers start.

use std::collections::HashMap;
use std::path::Path;

use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, EncodeMode};

use crate::wire::{self, rtype};

/// A piece of RDATA: bytes as they go on the wire, or a domain name (lower-case wire format) that the writer
/// may compress (`compress`: NS, CNAME, PTR, MX, SOA; RFC 3597 §4) or must write in full (SRV, RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Bytes(Box<[u8]>),
    Name { name: Box<[u8]>, compress: bool },
}

/// One record's RDATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdata(pub Vec<Part>);

impl Rdata {
    /// The domain name this record points at (NS, CNAME, PTR: the only one; MX, SRV: the target), for CNAME
    /// chasing and additional-section processing.
    pub fn target(&self) -> Option<&[u8]> {
        self.0.iter().find_map(|p| match p {
            Part::Name { name, .. } => Some(&**name),
            Part::Bytes(_) => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrset {
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Vec<Rdata>,
}

/// The RRsets at one name, sorted by type (an empty non-terminal has none).
#[derive(Debug, Default, Clone)]
pub struct Node {
    pub rrsets: Vec<Rrset>,
}

impl Node {
    pub fn get(&self, rtype: u16) -> Option<&Rrset> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }
}

#[derive(Debug)]
pub struct Zone {
    /// Lower-case wire format.
    pub origin: Box<[u8]>,
    pub nodes: HashMap<Box<[u8]>, Node>,
    /// The apex SOA (one record).
    pub soa: Rrset,
    /// The TTL of the SOA in negative answers: min(SOA TTL, SOA MINIMUM) (RFC 2308 §3).
    pub negative_ttl: u32,
}

/// All zones served.
#[derive(Debug, Default)]
pub struct Zones {
    pub zones: Vec<Zone>,
}

impl Zones {
    /// The zone `name` (lower-case wire format) is in: the one with the longest origin it is within.
    pub fn find(&self, name: &[u8]) -> Option<&Zone> {
        self.zones.iter().filter(|z| wire::is_within(name, &z.origin)).max_by_key(|z| z.origin.len())
    }

    /// Loads `--zone` arguments: `FILE` (origin from the file's `$ORIGIN`) or `ORIGIN=FILE`.
    pub fn load(args: &[String]) -> Result<Zones, String> {
        let mut zones = Zones::default();
        for arg in args {
            let (origin, file) = match arg.split_once('=') {
                Some((origin, file)) if !origin.contains('/') => (Some(origin), file),
                _ => (None, arg.as_str()),
            };
            let zone = Zone::load(origin, Path::new(file)).map_err(|e| format!("--zone {arg}: {e}"))?;
            if zones.zones.iter().any(|z| z.origin == zone.origin) {
                return Err(format!("--zone {arg}: zone {} given twice", display(&zone.origin)));
            }
            zones.zones.push(zone);
        }
        Ok(zones)
    }
}

/// `name` (presentation format) made absolute with `origin`.
fn absolute(name: &str, origin: Option<&Name>) -> Result<Name, String> {
    if name == "@" {
        return origin.cloned().ok_or_else(|| "@ without an origin".to_string());
    }
    let mut n = Name::parse(name, origin).map_err(|e| format!("bad name {name:?}: {e}"))?;
    if !n.is_fqdn() {
        if origin.is_some() {
            return Err(format!("bad name {name:?}"));
        }
        n.set_fqdn(true);
    }
    Ok(n)
}

/// A lower-case wire-format name.
fn to_wire(name: &Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(usize::from(name.len() as u16) + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into_boxed_slice()
}

/// A wire-format name in presentation format (for messages).
pub fn display(name: &[u8]) -> String {
    let mut out = String::new();
    let mut n = name;
    while let Some((&l, rest)) = n.split_first() {
        if l == 0 {
            break;
        }
        let label = rest.get(..usize::from(l)).unwrap_or(rest);
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        n = rest.get(usize::from(l)..).unwrap_or(&[]);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

fn name_part(name: &Name, compress: bool) -> Part {
    Part::Name { name: to_wire(name), compress }
}

/// RDATA in wire format, names split out (the types whose names matter to lookups or may be compressed).
fn rdata_of(data: &RData) -> Result<Rdata, String> {
    let bytes = |b: Vec<u8>| Part::Bytes(b.into_boxed_slice());
    Ok(Rdata(match data {
        RData::NS(ns) => vec![name_part(&ns.0, true)],
        RData::CNAME(c) => vec![name_part(&c.0, true)],
        RData::PTR(p) => vec![name_part(&p.0, true)],
        RData::MX(mx) => vec![bytes(mx.preference().to_be_bytes().to_vec()), name_part(mx.exchange(), true)],
        RData::SRV(srv) => {
            let mut fixed = Vec::with_capacity(6);
            fixed.extend(srv.priority().to_be_bytes());
            fixed.extend(srv.weight().to_be_bytes());
            fixed.extend(srv.port().to_be_bytes());
            vec![bytes(fixed), name_part(srv.target(), false)]
        }
        RData::SOA(soa) => {
            let mut fixed = Vec::with_capacity(20);
            fixed.extend(soa.serial().to_be_bytes());
            fixed.extend(soa.refresh().to_be_bytes());
            fixed.extend(soa.retry().to_be_bytes());
            fixed.extend(soa.expire().to_be_bytes());
            fixed.extend(soa.minimum().to_be_bytes());
            vec![name_part(soa.mname(), true), name_part(soa.rname(), true), bytes(fixed)]
        }
        other => {
            // Everything else as hickory writes it, names (if any) in full and uncompressed.
            let mut out = Vec::new();
            let mut encoder = BinEncoder::with_mode(&mut out, EncodeMode::Signing);
            other.emit(&mut encoder).map_err(|e| format!("cannot encode {}: {e}", other.record_type()))?;
            vec![bytes(out)]
        }
    }))
}

impl Zone {
    /// Parses the master file at `path`; `origin` (presentation format) is the zone's name, else the file's
    /// `$ORIGIN`.
    pub fn load(origin: Option<&str>, path: &Path) -> Result<Zone, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let origin = match origin {
            Some(o) => Some(absolute(o, None)?),
            None => None,
        };
        let (origin, rrsets) = master::parse(&text, origin).map_err(|e| format!("{}: {e}", path.display()))?;
        Zone::build(&origin, rrsets)
    }

    /// The zone `origin` made of `rrsets`.
    pub fn build(origin: &Name, rrsets: Vec<master::Rrset>) -> Result<Zone, String> {
        let origin = to_wire(origin);
        let mut nodes: HashMap<Box<[u8]>, Node> = HashMap::new();
        nodes.insert(origin.clone(), Node::default());
        for set in rrsets {
            let owner = to_wire(&set.owner);
            let shown = display(&owner);
            if !wire::is_within(&owner, &origin) {
                return Err(format!("{shown} is outside the zone {}", display(&origin)));
            }
            let code = u16::from(set.rtype);
            if code == rtype::DNAME {
                return Err(format!("{shown}: DNAME is not supported"));
            }
            if set.rtype == RecordType::OPT || code == rtype::ANY || code == 0 {
                return Err(format!("{shown}: type {} cannot be in a zone", set.rtype));
            }
            let rdata = set.rdata.iter().map(rdata_of).collect::<Result<Vec<_>, _>>()?;
            if code == rtype::CNAME && rdata.len() > 1 {
                return Err(format!("{shown}: more than one CNAME"));
            }
            // Every name between the owner and the origin exists (empty non-terminals, RFC 4592 §2.2.2).
            let mut up: &[u8] = &owner;
            while up != &*origin {
                nodes.entry(up.into()).or_default();
                up = wire::parent(up);
            }
            let node = nodes.entry(owner.clone()).or_default();
            node.rrsets.push(Rrset { rtype: code, ttl: set.ttl, rdata });
        }
        for (name, node) in &mut nodes {
            node.rrsets.sort_by_key(|r| r.rtype);
            if node.get(rtype::CNAME).is_some() && node.rrsets.len() > 1 {
                return Err(format!("{}: CNAME and other data", display(name)));
            }
        }
        let apex = nodes.get(&origin).ok_or("no apex")?;
        let soa = apex.get(rtype::SOA).ok_or_else(|| format!("no SOA at the apex {}", display(&origin)))?.clone();
        if soa.rdata.len() != 1 {
            return Err(format!("{} SOA records at the apex", soa.rdata.len()));
        }
        let minimum = match soa.rdata.first().and_then(|r| r.0.last()) {
            Some(Part::Bytes(fixed)) => wire::be32(fixed, 16).unwrap_or(0),
            _ => 0,
        };
        if apex.get(rtype::NS).is_none() {
            return Err(format!("no NS at the apex {}", display(&origin)));
        }
        let negative_ttl = soa.ttl.min(minimum);
        Ok(Zone { origin, nodes, soa, negative_ttl })
    }
}

/// The master-file reader (RFC 1035 §5.1, with RFC 2308's `$TTL`): comments, parentheses, quoted strings,
/// owners carried over from the previous entry, `@`, relative names, TTL and class in either order. The
/// record data are handed to hickory-proto's parser. (hickory-proto's own zone parser gives the SOA its
/// EXPIRE value as TTL and lets an explicit TTL change the default for the records after it: Knot, BIND and
/// RFC 2308 do neither.) `$INCLUDE` is refused; a `\DDD` escape above 127 in a string is taken as that Unicode
/// code point (two bytes in UTF-8, where a master file means one byte).
pub mod master {
    use std::str::FromStr;

    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    use hickory_proto::serialize::txt::{ParseError, RDataParser};

    use std::collections::HashMap;

    use super::{absolute, to_wire};

    /// One RRset as the file gives it: the first record's TTL, the data without duplicates.
    #[derive(Debug)]
    pub struct Rrset {
        pub owner: Name,
        pub rtype: RecordType,
        pub ttl: u32,
        pub rdata: Vec<RData>,
    }

    /// A token: its text (quotes removed; escapes decoded in quoted strings, kept otherwise for the name
    /// parser), whether it started its line (an owner), whether it was quoted.
    struct Token {
        text: String,
        line_start: bool,
        quoted: bool,
    }

    /// The file's entries, each a list of tokens (the first `line_start` when the entry names its owner).
    fn entries(text: &str) -> Result<Vec<(usize, Vec<Token>)>, String> {
        let mut out = Vec::new();
        let mut entry: Vec<Token> = Vec::new();
        let mut depth = 0usize;
        let mut line = 1usize;
        let mut entry_line = 1usize;
        let mut chars = text.chars().peekable();
        let mut at_line_start = true;
        while let Some(c) = chars.next() {
            match c {
                '\n' => {
                    line += 1;
                    if depth == 0 {
                        if !entry.is_empty() {
                            out.push((entry_line, std::mem::take(&mut entry)));
                        }
                        at_line_start = true;
                    }
                    continue;
                }
                ';' => {
                    while chars.peek().is_some_and(|&c| c != '\n') {
                        chars.next();
                    }
                    continue;
                }
                '(' => depth += 1,
                ')' => depth = depth.checked_sub(1).ok_or_else(|| format!("line {line}: unbalanced ')'"))?,
                c if c.is_whitespace() => {}
                '"' => {
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(format!("line {line}: unterminated string")),
                            Some('"') => break,
                            Some('\\') => s.push(unescape(&mut chars).ok_or(format!("line {line}: bad escape"))?),
                            Some('\n') => return Err(format!("line {line}: newline in a string")),
                            Some(c) => s.push(c),
                        }
                    }
                    if entry.is_empty() {
                        entry_line = line;
                    }
                    entry.push(Token { text: s, line_start: false, quoted: true });
                }
                c => {
                    let mut s = String::from(c);
                    while let Some(&n) = chars.peek() {
                        if n.is_whitespace() || matches!(n, ';' | '(' | ')' | '"') {
                            break;
                        }
                        s.push(n);
                        chars.next();
                        if n == '\\' {
                            if let Some(e) = chars.next() {
                                s.push(e);
                            }
                        }
                    }
                    if entry.is_empty() {
                        entry_line = line;
                    }
                    entry.push(Token { text: s, line_start: at_line_start, quoted: false });
                }
            }
            at_line_start = false;
        }
        if depth != 0 {
            return Err("unbalanced '('".to_string());
        }
        if !entry.is_empty() {
            out.push((entry_line, entry));
        }
        Ok(out)
    }

    /// An unquoted token with its escapes decoded.
    fn decode(text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.push(unescape(&mut chars).ok_or_else(|| format!("bad escape in {text:?}"))?);
            } else {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The character after a backslash in a quoted string: `\DDD` (a byte, decimal) or `\X`.
    fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
        let c = chars.next()?;
        if let Some(d1) = c.to_digit(10) {
            let d2 = chars.next()?.to_digit(10)?;
            let d3 = chars.next()?.to_digit(10)?;
            return char::from_u32(d1 * 100 + d2 * 10 + d3);
        }
        Some(c)
    }

    fn ttl(s: &str) -> Option<u32> {
        hickory_proto::serialize::txt::Parser::parse_time(s).ok()
    }

    /// Parses a master file; `origin` is the zone's name if given, else the file's `$ORIGIN` (which must come
    /// before the first relative name).
    pub fn parse(text: &str, origin: Option<Name>) -> Result<(Name, Vec<Rrset>), String> {
        let mut zone_origin = origin.clone();
        let mut current_origin = origin;
        let mut default_ttl: Option<u32> = None;
        let mut last_ttl: Option<u32> = None;
        let mut owner: Option<Name> = None;
        let mut sets: Vec<Rrset> = Vec::new();
        let mut index: HashMap<(Box<[u8]>, u16), usize> = HashMap::new();
        for (line, tokens) in entries(text)? {
            let err = |e: String| format!("line {line}: {e}");
            let mut it = tokens.iter().peekable();
            let Some(first) = it.peek() else { continue };
            match first.text.as_str() {
                "$ORIGIN" if first.line_start => {
                    it.next();
                    let o = it.next().ok_or_else(|| err("$ORIGIN without a name".into()))?;
                    let o = absolute(&o.text, current_origin.as_ref()).map_err(err)?;
                    if zone_origin.is_none() {
                        zone_origin = Some(o.clone());
                    }
                    current_origin = Some(o);
                    continue;
                }
                "$TTL" if first.line_start => {
                    it.next();
                    let t = it.next().and_then(|t| ttl(&t.text)).ok_or_else(|| err("bad $TTL".into()))?;
                    default_ttl = Some(t);
                    continue;
                }
                "$INCLUDE" if first.line_start => return Err(err("$INCLUDE is not supported".into())),
                _ => {}
            }
            if first.line_start {
                let name = it.next().map(|t| t.text.as_str()).unwrap_or("@");
                owner = Some(absolute(name, current_origin.as_ref()).map_err(err)?);
            }
            let owner = owner.clone().ok_or_else(|| err("no owner name".into()))?;
            let mut record_ttl = None;
            let mut class = None;
            let rtype = loop {
                let t = it.next().ok_or_else(|| err("no type".into()))?;
                if record_ttl.is_none() {
                    if let Some(v) = ttl(&t.text) {
                        record_ttl = Some(v);
                        continue;
                    }
                }
                let upper = t.text.to_ascii_uppercase();
                if class.is_none()
                    && (matches!(upper.as_str(), "IN" | "CH" | "HS" | "CS") || upper.starts_with("CLASS"))
                {
                    class = Some(DNSClass::from_str(&upper).map_err(|e| err(format!("bad class {:?}: {e}", t.text)))?);
                    continue;
                }
                break RecordType::from_str(&t.text.to_ascii_uppercase())
                    .map_err(|e| err(format!("bad type {:?}: {e}", t.text)))?;
            };
            if class.is_some_and(|c| c != DNSClass::IN) {
                return Err(err(format!("class {} (only IN is served)", class.unwrap_or(DNSClass::IN))));
            }
            let ttl = match record_ttl {
                Some(t) => {
                    last_ttl = Some(t);
                    t
                }
                None => default_ttl.or(last_ttl).ok_or_else(|| err("no TTL and no $TTL".into()))?,
            };
            // Unquoted character-strings have their escapes decoded too (names keep theirs for the name parser).
            let strings = matches!(rtype, RecordType::TXT | RecordType::CAA | RecordType::HINFO);
            let decoded: Vec<String> = it
                .map(|t| if strings && !t.quoted { decode(&t.text) } else { Ok(t.text.clone()) })
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let data: Vec<&str> = decoded.iter().map(String::as_str).collect();
            let rdata = RData::parse(rtype, data.iter().copied(), current_origin.as_ref())
                .map_err(|e: ParseError| err(format!("{rtype} {}: {e}", data.join(" "))))?;
            let key = (to_wire(&owner), u16::from(rtype));
            match index.get(&key).and_then(|&i| sets.get_mut(i)) {
                Some(set) => {
                    if !set.rdata.contains(&rdata) {
                        set.rdata.push(rdata);
                    }
                }
                None => {
                    index.insert(key, sets.len());
                    sets.push(Rrset { owner, rtype, ttl, rdata: vec![rdata] });
                }
            }
        }
        let origin = zone_origin.ok_or("no $ORIGIN in the file and none given")?;
        Ok((origin, sets))
    }
}
