//! The XDP metadata the steering program writes in front of each packet (`struct shunt_meta` in
//! bpf/shunt.bpf.c). AF_XDP copies it into the UMEM immediately before the packet data.

/// `SHUNT_META_MAGIC`: marks a stamp written for this packet.
const MAGIC: u32 = 0x7368_7574;
/// `sizeof(struct shunt_meta)`.
pub const META_LEN: usize = 32;
/// `SHUNT_META_HW`: the NIC's timestamp fields are valid.
const FLAG_HW: u32 = 1;

/// What the XDP program recorded about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// CLOCK_MONOTONIC at the XDP hook, in ns.
    pub hook_ns: u64,
    /// NIC RX hardware timestamp → XDP hook, in ns, when the driver gave one (compares the NIC's clock with
    /// CLOCK_TAI, so it is meaningful when the NIC clock is synchronised to TAI, e.g. by phc2sys).
    pub nic_to_hook_ns: Option<u64>,
}

/// Reads and clears the XDP-hook timestamp in front of the packet whose data starts at `data`, a pointer
/// into the UMEM at byte `offset_in_frame` of its frame. Returns `None` if the packet carries no fresh stamp.
///
/// Clearing the magic matters: a frame is reused, and a later packet that could not be stamped must not be
/// credited with this one's time.
#[inline]
pub fn take_stamp(data: *mut u8, offset_in_frame: usize) -> Option<Stamp> {
    if offset_in_frame < META_LEN {
        return None;
    }
    let at = (data as usize) - META_LEN;
    let meta = std::ptr::with_exposed_provenance_mut::<[u8; META_LEN]>(at);
    // SAFETY: the META_LEN bytes before the packet lie inside the same UMEM frame (offset_in_frame >= META_LEN),
    // and the frame is ours: the kernel handed it over through the RX ring and no ring holds it now, so
    // nothing else reads or writes these bytes. The UMEM is one mmap'd region whose address was handed to the
    // kernel through libxdp, which exposes its provenance; the access is unaligned-safe.
    let bytes = unsafe { meta.read_unaligned() };
    let magic = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != MAGIC {
        return None;
    }
    // SAFETY: as above; writes zeros over the magic only.
    unsafe { meta.cast::<u32>().write_unaligned(0) };
    let word = |at: usize| {
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(ns)
    };
    let flags = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let nic_to_hook_ns = if flags & FLAG_HW != 0 { word(24).checked_sub(word(16)) } else { None };
    Some(Stamp { hook_ns: word(8), nic_to_hook_ns })
}
