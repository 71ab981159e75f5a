//! Where every header field sits, relative to the start of its header: the one place that knows the byte
//! offsets of Ethernet, 802.1Q, IPv4, IPv6 and UDP (parse, reply, build, the fuzz seeds and the tests all use
//! these, as smoltcp's `wire::field` does).

/// A byte range within a header.
pub type Field = core::ops::Range<usize>;

/// Ethernet II.
pub mod eth {
    use super::Field;
    /// Destination MAC.
    pub const DST: Field = 0..6;
    /// Source MAC.
    pub const SRC: Field = 6..12;
    /// EtherType (or the TPID of a VLAN tag).
    pub const ETHERTYPE: Field = 12..14;
    /// Header length without tags.
    pub const HEADER_LEN: usize = 14;
}

/// One 802.1Q / 802.1ad tag, after the TPID (which sits in [`eth::ETHERTYPE`]).
pub mod vlan {
    use super::Field;
    /// Tag control information (PCP, DEI, VLAN id).
    pub const TCI: Field = 0..2;
    /// The EtherType of what follows the tag.
    pub const ETHERTYPE: Field = 2..4;
    /// Bytes a tag adds to the Ethernet header.
    pub const TAG_LEN: usize = 4;
}

/// IPv4 (RFC 791).
pub mod ipv4 {
    use super::Field;
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    /// Type of service / DSCP + ECN.
    pub const TOS: usize = 1;
    /// Total length, header included.
    pub const TOTAL_LEN: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLAGS_FRAG: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC: Field = 12..16;
    /// Destination address.
    pub const DST: Field = 16..20;
    /// Header length without options.
    pub const MIN_HEADER_LEN: usize = 20;
    /// Header length with the most options IHL can express (15 words).
    pub const MAX_HEADER_LEN: usize = 60;
    /// More-fragments flag and fragment offset, within [`FLAGS_FRAG`]: set on any fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
    /// Don't-fragment flag, within [`FLAGS_FRAG`].
    pub const DONT_FRAGMENT: u16 = 0x4000;
}

/// IPv6 (RFC 8200).
pub mod ipv6 {
    use super::Field;
    /// Version (4 bits), traffic class (8) and flow label (20).
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length (everything after this header).
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC: Field = 8..24;
    /// Destination address.
    pub const DST: Field = 24..40;
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;
}

/// UDP (RFC 768).
pub mod udp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length, header included.
    pub const LENGTH: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
    /// Header length.
    pub const HEADER_LEN: usize = 8;
}
