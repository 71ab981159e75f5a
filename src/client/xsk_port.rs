//! [`XskPort`]: an AF_XDP socket driven from outside, for clients and load generators. Frames to send are
//! written by a closure; received frames are shown to a closure and recycled. Like the worker, it allocates
//! only when created.

use xsk_rs::FrameDesc;

use crate::datapath::afxdp::QueueSocket;

/// A [`QueueSocket`] with its frame pool, for sending and receiving whole frames.
pub struct XskPort {
    socket: QueueSocket,
    free: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    rx_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    /// TX wake-up system calls made so far.
    pub tx_kicks: u64,
    /// Fill-ring wake-up system calls made so far.
    pub fill_kicks: u64,
}

impl XskPort {
    /// Wraps `socket`; `batch` bounds the frames sent or received per call.
    pub fn new(mut socket: QueueSocket, batch: usize) -> XskPort {
        let batch = batch.max(1);
        let mut free = Vec::with_capacity(socket.frame_count());
        socket.take_frames(&mut free);
        XskPort {
            completed: vec![FrameDesc::default(); socket.tx_ring_size() as usize],
            rx_batch: vec![FrameDesc::default(); batch],
            tx_batch: Vec::with_capacity(batch),
            free,
            socket,
            tx_kicks: 0,
            fill_kicks: 0,
        }
    }

    /// Frames available for sending right now.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Takes back frames whose transmission completed, restocks the fill ring and kicks whatever is still
    /// waiting on the TX ring. Call it between sends and receives.
    pub fn service(&mut self) {
        self.socket.reclaim(&mut self.completed, &mut self.free);
        self.socket.refill(&mut self.free);
        if self.socket.tx_pending() > 0 {
            self.tx_kicks += self.socket.kick_tx();
        }
        self.fill_kicks += self.socket.wake_fill();
    }

    /// Builds and transmits up to `n` frames (at most one batch, and no more than there are free frames).
    /// `build(i, buffer)` writes frame `i` into the whole frame buffer and returns its length, or `None` to
    /// stop early. Returns the number of frames put on the TX ring.
    pub fn send(&mut self, n: usize, mut build: impl FnMut(usize, &mut [u8]) -> Option<usize>) -> usize {
        self.socket.reclaim(&mut self.completed, &mut self.free);
        let n = n.min(self.tx_batch.capacity()).min(self.free.len());
        for i in 0..n {
            let Some(mut desc) = self.free.pop() else { break };
            // `desc` comes from the free pool: a frame of this UMEM on no ring, as write_frame requires.
            if self.socket.write_frame(&mut desc, |buffer| build(i, buffer)).is_some() {
                self.tx_batch.push(desc);
            } else {
                self.free.push(desc);
                break;
            }
        }
        let sent = self.socket.transmit(&self.tx_batch);
        self.free.extend_from_slice(&self.tx_batch[sent..]);
        self.tx_batch.clear();
        self.tx_kicks += self.socket.kick_tx();
        sent
    }

    /// Takes up to one batch of received frames, shows each to `seen` and recycles them. Returns how many.
    pub fn receive(&mut self, seen: impl FnMut(&[u8])) -> usize {
        let received = self.socket.receive_frames(&mut self.rx_batch, seen);
        self.free.extend_from_slice(&self.rx_batch[..received]);
        self.socket.refill(&mut self.free);
        received
    }

    /// The socket's file descriptor (for an XSKMAP).
    pub fn raw_fd(&self) -> i32 {
        self.socket.raw_fd()
    }
}
