//! The XDP metadata the steering program writes in front of each packet (`struct shunt_meta` in
//! bpf/shunt.bpf.c). AF_XDP copies it into the UMEM immediately before the packet data.

use crate::handler::{RxClock, RxTimestamp, Time};

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

/// Reads and clears the XDP-hook timestamp in front of the packet whose data starts at `data`, byte
/// `offset_in_frame` of its UMEM frame. Returns `None` if the packet carries no fresh stamp.
///
/// Clearing the magic matters: a frame is reused, and a later packet that could not be stamped must not be
/// credited with this one's time.
///
/// # Safety
///
/// `data` must point at the packet data of a UMEM frame that the caller owns exclusively (it came off the RX
/// ring and is on no ring now), and `offset_in_frame` must be that data's offset from the frame's start, so
/// that the [`META_LEN`] bytes before `data` lie in the same frame whenever `offset_in_frame >= META_LEN`.
///
/// Provenance: the metadata lies outside the packet slice `data` was derived from, so it is reached through
/// an address, not through `data`'s provenance. The UMEM mapping that holds the frame must therefore have had
/// its provenance exposed (as handing its address to the kernel through libxdp does, or
/// `pointer::expose_provenance` on a pointer to the whole allocation), and stay mapped for the call.
#[inline]
pub unsafe fn take_stamp(data: *mut u8, offset_in_frame: usize) -> Option<Stamp> {
    if offset_in_frame < META_LEN {
        return None;
    }
    // A pointer derived from the packet slice may only touch that slice, so the metadata is addressed through
    // the UMEM mapping's exposed provenance (its address was handed to the kernel through libxdp) instead.
    let meta = std::ptr::with_exposed_provenance_mut::<[u8; META_LEN]>((data as usize) - META_LEN);
    // SAFETY: by the caller's contract the META_LEN bytes before `data` are in the same frame, which the
    // caller owns exclusively; the read is unaligned-safe.
    let bytes = unsafe { meta.read_unaligned() };
    let stamp = decode(&bytes)?;
    // SAFETY: as above; writes zeros over the magic only.
    unsafe { meta.cast::<u32>().write_unaligned(0) };
    Some(stamp)
}

/// Decodes a `struct shunt_meta`; `None` unless it carries the magic.
pub fn decode(bytes: &[u8; META_LEN]) -> Option<Stamp> {
    let word = |at: usize| -> u64 {
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(ns)
    };
    let magic = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != MAGIC {
        return None;
    }
    let flags = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let nic_to_hook_ns = if flags & FLAG_HW != 0 { word(24).checked_sub(word(16)) } else { None };
    Some(Stamp { hook_ns: word(8), nic_to_hook_ns })
}

impl Stamp {
    /// When the packet arrived, for the handler: the NIC's hardware stamp where the program read one
    /// ([`RxClock::Nic`], on the monotonic clock as `hook_ns − nic_to_hook_ns`), else the XDP hook's
    /// ([`RxClock::XdpHook`]); the realtime reading from the batch's clock pair `now`. `None` if a conversion
    /// does not fit.
    #[inline]
    pub fn arrival(&self, now: Time) -> Option<RxTimestamp> {
        match self.nic_to_hook_ns.and_then(|d| self.hook_ns.checked_sub(d)) {
            Some(nic_ns) => RxTimestamp::from_monotonic(nic_ns, now, RxClock::Nic),
            None => RxTimestamp::from_monotonic(self.hook_ns, now, RxClock::XdpHook),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arrival_is_the_nics_stamp_where_there_is_one() {
        let now = Time { unix_ns: 10_000, monotonic_ns: 1_000 };
        let hook = Stamp { hook_ns: 900, nic_to_hook_ns: None }.arrival(now).unwrap();
        assert_eq!((hook.monotonic_ns, hook.unix_ns, hook.source), (900, 9_900, RxClock::XdpHook));
        let nic = Stamp { hook_ns: 900, nic_to_hook_ns: Some(30) }.arrival(now).unwrap();
        assert_eq!((nic.monotonic_ns, nic.unix_ns, nic.source), (870, 9_870, RxClock::Nic));
        // A delay longer than the monotonic clock's age is not a time: the hook's stamp stands.
        let odd = Stamp { hook_ns: 20, nic_to_hook_ns: Some(30) }.arrival(now).unwrap();
        assert_eq!(odd.source, RxClock::XdpHook);
    }

    fn meta(magic: u32, flags: u32, xdp: u64, hw: u64, tai: u64) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..4].copy_from_slice(&magic.to_ne_bytes());
        b[4..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..16].copy_from_slice(&xdp.to_ne_bytes());
        b[16..24].copy_from_slice(&hw.to_ne_bytes());
        b[24..32].copy_from_slice(&tai.to_ne_bytes());
        b
    }

    #[test]
    fn decodes_hook_time_and_hardware_delta() {
        assert_eq!(decode(&meta(MAGIC, 0, 77, 0, 0)), Some(Stamp { hook_ns: 77, nic_to_hook_ns: None }));
        assert_eq!(decode(&meta(MAGIC, FLAG_HW, 77, 100, 130)), Some(Stamp { hook_ns: 77, nic_to_hook_ns: Some(30) }));
        // A hardware clock ahead of the hook's TAI clock is not a latency.
        assert_eq!(decode(&meta(MAGIC, FLAG_HW, 77, 200, 130)), Some(Stamp { hook_ns: 77, nic_to_hook_ns: None }));
        assert_eq!(decode(&meta(0, 0, 77, 0, 0)), None);
    }

    #[test]
    fn take_stamp_clears_the_magic_and_refuses_short_offsets() {
        let mut frame = [0u8; 64];
        frame[..META_LEN].copy_from_slice(&meta(MAGIC, 0, 5, 0, 0));
        let data = frame[META_LEN..].as_mut_ptr();
        let _ = frame.as_mut_ptr().expose_provenance();
        // SAFETY: `data` is META_LEN bytes into `frame`, which this test owns.
        assert_eq!(unsafe { take_stamp(data, META_LEN - 1) }, None);
        // SAFETY: as above.
        assert_eq!(unsafe { take_stamp(data, META_LEN) }, Some(Stamp { hook_ns: 5, nic_to_hook_ns: None }));
        // SAFETY: as above.
        assert_eq!(unsafe { take_stamp(data, META_LEN) }, None, "a stamp is taken once");
    }
}
