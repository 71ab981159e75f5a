//! DNS wire format (RFC 1035 §4): reading a query, and [`Message`], the reply writer with name compression
//! (§4.1.4) that writes straight into the request's buffer, within a size limit, without allocating.

/// Resource record types the server treats specially (and the others the tests name).
#[cfg_attr(not(test), allow(dead_code))]
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const DNAME: u16 = 39;
    pub const OPT: u16 = 41;
    pub const DS: u16 = 43;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;
}

/// Classes: IN, and ANY (answered like IN).
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// Response codes (the low four bits in the header; BADVERS is extended: 16 = 1 in the OPT's high byte).
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// Extended rcode 16: OPT TTL high byte 1, header rcode 0.
    pub const BADVERS_HIGH: u8 = 1;
}

/// Header flag bits (the 16-bit word at offset 2).
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const OPCODE_MASK: u16 = 0x7800;
}

pub const HEADER_LEN: usize = 12;
/// The longest name in wire format (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Size of an OPT RR without options: root owner, type, class, TTL, RDLENGTH.
pub const OPT_LEN: usize = 11;
/// The DO bit in the OPT TTL (RFC 3225).
pub const DO_BIT: u32 = 0x8000;

#[inline]
pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..)?.first_chunk::<2>().map(|c| u16::from_be_bytes(*c))
}

#[inline]
pub fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..)?.first_chunk::<4>().map(|c| u32::from_be_bytes(*c))
}

/// Reads an uncompressed name at `at` (a question's: RFC 1035 allows no pointer there in a query we answer),
/// lower-cased into `out`. Returns (its wire length, where it ends in `b`).
pub fn read_question_name(b: &[u8], at: usize, out: &mut [u8; MAX_NAME]) -> Option<(usize, usize)> {
    let mut pos = at;
    let mut n = 0;
    loop {
        let len = usize::from(*b.get(pos)?);
        if len > 63 {
            return None; // a pointer or a reserved label type
        }
        if n + 1 + len > MAX_NAME {
            return None;
        }
        *out.get_mut(n)? = len as u8;
        let label = b.get(pos + 1..pos + 1 + len)?;
        for (o, c) in out.get_mut(n + 1..n + 1 + len)?.iter_mut().zip(label) {
            *o = c.to_ascii_lowercase();
        }
        n += 1 + len;
        pos += 1 + len;
        if len == 0 {
            return Some((n, pos));
        }
    }
}

/// Skips a (possibly compressed) name in a record at `at`; returns where it ends and whether it is the root.
pub fn skip_name(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut pos = at;
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => return Some((pos + 1, pos == at)),
            1..=63 => pos += 1 + usize::from(len),
            0xC0..=0xFF => {
                b.get(pos + 1)?;
                return Some((pos + 2, false));
            }
            _ => return None,
        }
    }
}

/// The labels of a wire-format name after its first one (its parent; the root's parent is the root).
#[inline]
pub fn parent(name: &[u8]) -> &[u8] {
    match name.first() {
        Some(&len) if len > 0 => name.get(1 + usize::from(len)..).unwrap_or(&[0]),
        _ => name,
    }
}

/// Whether `name` is `zone` or below it (both lower-case wire format).
pub fn is_within(name: &[u8], zone: &[u8]) -> bool {
    let mut n = name;
    loop {
        if n == zone {
            return true;
        }
        if n.first().is_none_or(|&l| l == 0) {
            return false;
        }
        n = parent(n);
    }
}

/// Number of labels (the root not counted).
pub fn label_count(name: &[u8]) -> usize {
    let mut n = name;
    let mut count = 0;
    while n.first().is_some_and(|&l| l > 0) {
        count += 1;
        n = parent(n);
    }
    count
}

/// The answer did not fit the reply's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// How many label positions the compression table remembers (later names are written uncompressed).
const NAMES: usize = 64;

/// A reply being written into the request's buffer: everything up to `len` is the reply so far (header and
/// question first). Records go through [`Message::put_record`], which keeps the total within `limit` and
/// compresses names against the labels written before.
pub struct Message<'a> {
    buf: &'a mut [u8],
    len: usize,
    limit: usize,
    names: [u16; NAMES],
    name_count: usize,
    /// The ANCOUNT, NSCOUNT, ARCOUNT written so far.
    pub counts: [u16; 3],
}

/// Where a message stood, to roll a half-written RRset back.
#[derive(Clone, Copy)]
pub struct Mark {
    len: usize,
    name_count: usize,
    counts: [u16; 3],
}

/// A reply section.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    Answer = 0,
    Authority = 1,
    Additional = 2,
}

impl<'a> Message<'a> {
    /// A reply whose header and question are `buf[..question_end]` (the request's, left in place), limited to
    /// `limit` bytes (and to the buffer). `question_name` is where the question's name starts (12), or None.
    pub fn new(buf: &'a mut [u8], question_end: usize, limit: usize, question_name: Option<usize>) -> Message<'a> {
        let limit = limit.min(buf.len());
        let mut m = Message { buf, len: question_end, limit, names: [0; NAMES], name_count: 0, counts: [0; 3] };
        if let Some(mut pos) = question_name {
            while let Some(&l) = m.buf.get(pos) {
                if l == 0 || l > 63 {
                    break;
                }
                m.remember(pos);
                pos += 1 + usize::from(l);
            }
        }
        m
    }

    /// Reserves `bytes` at the end (the OPT record written last).
    pub fn reserve(&mut self, bytes: usize) {
        self.limit = self.limit.saturating_sub(bytes);
    }

    /// Gives back what [`Message::reserve`] took.
    pub fn unreserve(&mut self, bytes: usize) {
        self.limit = (self.limit + bytes).min(self.buf.len());
    }

    pub fn mark(&self) -> Mark {
        Mark { len: self.len, name_count: self.name_count, counts: self.counts }
    }

    pub fn reset(&mut self, mark: Mark) {
        self.len = mark.len;
        self.name_count = mark.name_count;
        self.counts = mark.counts;
    }

    fn remember(&mut self, pos: usize) {
        if pos < 0x3FFF {
            if let Some(slot) = self.names.get_mut(self.name_count) {
                *slot = pos as u16;
                self.name_count += 1;
            }
        }
    }

    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.len + bytes.len();
        if end > self.limit {
            return Err(Full);
        }
        self.buf.get_mut(self.len..end).ok_or(Full)?.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    pub fn put_u16(&mut self, v: u16) -> Result<(), Full> {
        self.put_bytes(&v.to_be_bytes())
    }

    pub fn put_u32(&mut self, v: u32) -> Result<(), Full> {
        self.put_bytes(&v.to_be_bytes())
    }

    /// Writes the wire-format `name`, its longest suffix already in the message replaced by a pointer when
    /// `compress` (RFC 1035 §4.1.4; RFC 3597 §4 allows it in the RDATA of the well-known types only).
    pub fn put_name(&mut self, name: &[u8], compress: bool) -> Result<(), Full> {
        let mut at = 0;
        let mut pointer = None;
        if compress {
            'suffixes: while let Some(&l) = name.get(at) {
                if l == 0 {
                    break;
                }
                let suffix = name.get(at..).unwrap_or(&[0]);
                for &known in self.names.get(..self.name_count).unwrap_or(&[]) {
                    if name_at_equals(self.buf, usize::from(known), suffix) {
                        pointer = Some(known);
                        break 'suffixes;
                    }
                }
                at += 1 + usize::from(l);
            }
        } else {
            at = name.len().saturating_sub(1);
        }
        let mut pos = 0;
        while pos < at {
            let l = usize::from(*name.get(pos).ok_or(Full)?);
            let here = self.len;
            self.put_bytes(name.get(pos..pos + 1 + l).ok_or(Full)?)?;
            self.remember(here);
            pos += 1 + l;
        }
        match pointer {
            Some(p) => self.put_u16(0xC000 | p),
            None => self.put_bytes(&[0]),
        }
    }

    /// Writes the RR header of a record of `rtype` owned by `owner` (class IN) with its RDATA from `rdata`,
    /// which writes through the message; counts it in `section`.
    pub fn put_record(
        &mut self,
        section: Section,
        owner: &[u8],
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Message<'a>) -> Result<(), Full>,
    ) -> Result<(), Full> {
        self.put_name(owner, true)?;
        self.put_u16(rtype)?;
        self.put_u16(CLASS_IN)?;
        self.put_u32(ttl)?;
        let rdlen_at = self.len;
        self.put_u16(0)?;
        rdata(self)?;
        let rdlen = u16::try_from(self.len - rdlen_at - 2).map_err(|_| Full)?;
        self.buf.get_mut(rdlen_at..rdlen_at + 2).ok_or(Full)?.copy_from_slice(&rdlen.to_be_bytes());
        let count = self.counts.get_mut(section as usize).ok_or(Full)?;
        *count = count.saturating_add(1);
        Ok(())
    }

    /// Writes the OPT record (RFC 6891 §6.1.2): our UDP payload size, the extended rcode's high bits, version 0,
    /// the DO bit echoed. Not subject to the limit (its room was reserved).
    pub fn put_opt(&mut self, udp_size: u16, rcode_high: u8, do_bit: bool) -> Result<(), Full> {
        self.put_bytes(&[0])?;
        self.put_u16(rtype::OPT)?;
        self.put_u16(udp_size)?;
        self.put_u32(u32::from(rcode_high) << 24 | if do_bit { DO_BIT } else { 0 })?;
        self.put_u16(0)?;
        if let Some(c) = self.counts.get_mut(Section::Additional as usize) {
            *c = c.saturating_add(1);
        }
        Ok(())
    }

    /// Writes the header's flags word and the three section counts; returns the reply's length.
    pub fn finish(self, flags: u16) -> usize {
        if let Some(f) = self.buf.get_mut(2..4) {
            f.copy_from_slice(&flags.to_be_bytes());
        }
        for (i, count) in self.counts.iter().enumerate() {
            if let Some(c) = self.buf.get_mut(6 + 2 * i..8 + 2 * i) {
                c.copy_from_slice(&count.to_be_bytes());
            }
        }
        self.len
    }
}

/// Whether the name written at `pos` in `buf` (following pointers) equals `name`, ignoring ASCII case.
fn name_at_equals(buf: &[u8], mut pos: usize, name: &[u8]) -> bool {
    let mut i = 0;
    let mut hops = 0;
    loop {
        let Some(&l) = buf.get(pos) else { return false };
        if l & 0xC0 == 0xC0 {
            let Some(&low) = buf.get(pos + 1) else { return false };
            pos = usize::from(l & 0x3F) << 8 | usize::from(low);
            hops += 1;
            if hops > 64 {
                return false;
            }
            continue;
        }
        if name.get(i) != Some(&l) {
            return false;
        }
        if l == 0 {
            return true;
        }
        let l = usize::from(l);
        match (buf.get(pos + 1..pos + 1 + l), name.get(i + 1..i + 1 + l)) {
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
            _ => return false,
        }
        pos += 1 + l;
        i += 1 + l;
    }
}
