use super::{Handler, Outbox, Request, Verdict};

/// Length of sockperf's message header: u64 sequence, u16 flags, u32 length, all big-endian.
pub const SOCKPERF_HEADER_LEN: usize = 14;
const FLAGS_AT: usize = 8;
const CLIENT: u16 = 1;
const PONG_REQUEST: u16 = 2;

/// A drop-in for `sockperf server`, answering `sockperf ping-pong` and `under-load` clients.
///
/// sockperf's client ignores replies that still carry its CLIENT flag, and in under-load mode asks for a reply
/// only on messages flagged PONG_REQUEST; a plain echo therefore never satisfies it. This handler clears CLIENT
/// and replies, with the same length, only when asked. Messages shorter than the header, or without the CLIENT
/// flag (another server's reply looping back), are dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sockperf;

impl Handler for Sockperf {
    #[inline]
    fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        if len < SOCKPERF_HEADER_LEN || payload.len() < len {
            return Verdict::Drop;
        }
        let Some(field) = payload.get_mut(FLAGS_AT..).and_then(|p| p.first_chunk_mut::<2>()) else {
            return Verdict::Drop;
        };
        let flags = u16::from_be_bytes(*field);
        if flags & CLIENT == 0 || flags & PONG_REQUEST == 0 {
            return Verdict::Drop;
        }
        *field = (flags & !CLIENT).to_be_bytes();
        Verdict::Reply { len }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn req() -> Request {
        let a = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), 4000));
        Request::new(a, a, Default::default())
    }

    fn message(flags: u16, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len.max(SOCKPERF_HEADER_LEN)];
        m[..8].copy_from_slice(&7u64.to_be_bytes());
        m[8..10].copy_from_slice(&flags.to_be_bytes());
        m[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        m.truncate(len);
        m
    }

    #[test]
    fn answers_pong_requests_with_client_flag_cleared() {
        let mut m = message(CLIENT | PONG_REQUEST, 64);
        assert_eq!(
            Sockperf.handle(&req(), &mut m, 64, &mut Outbox::new(&mut crate::handler::NoTransmit, None)),
            Verdict::Reply { len: 64 }
        );
        assert_eq!(u16::from_be_bytes([m[8], m[9]]), PONG_REQUEST);
        assert_eq!(&m[..8], &7u64.to_be_bytes(), "sequence number untouched");
    }

    #[test]
    fn keeps_other_flags() {
        let mut m = message(CLIENT | PONG_REQUEST | 4, 20);
        assert_eq!(
            Sockperf.handle(&req(), &mut m, 20, &mut Outbox::new(&mut crate::handler::NoTransmit, None)),
            Verdict::Reply { len: 20 }
        );
        assert_eq!(u16::from_be_bytes([m[8], m[9]]), PONG_REQUEST | 4);
    }

    #[test]
    fn silent_without_pong_request() {
        let mut m = message(CLIENT, 64);
        assert_eq!(
            Sockperf.handle(&req(), &mut m, 64, &mut Outbox::new(&mut crate::handler::NoTransmit, None)),
            Verdict::Drop
        );
    }

    #[test]
    fn ignores_replies_and_short_messages() {
        let mut m = message(PONG_REQUEST, 64);
        assert_eq!(
            Sockperf.handle(&req(), &mut m, 64, &mut Outbox::new(&mut crate::handler::NoTransmit, None)),
            Verdict::Drop
        );
        for len in 0..SOCKPERF_HEADER_LEN {
            let mut m = message(CLIENT | PONG_REQUEST, len);
            assert_eq!(
                Sockperf.handle(&req(), &mut m, len, &mut Outbox::new(&mut crate::handler::NoTransmit, None)),
                Verdict::Drop
            );
        }
    }
}
