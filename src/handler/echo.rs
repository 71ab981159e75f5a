use super::{Handler, Outbox, Request, Verdict};

/// Replies with the request's payload, byte for byte.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Handler for Echo {
    #[inline]
    fn handle(&mut self, _request: &Request, _payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        Verdict::Reply { len }
    }
}
