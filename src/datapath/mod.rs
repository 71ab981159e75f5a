//! The datapath: per-queue UMEM and AF_XDP socket ([`QueueSocket`]) and the worker loop that serves it
//! ([`Worker`]). All of shunt's `unsafe` code lives in this module; each block says why it is sound.

mod meta;
mod socket;
pub mod sys;
mod worker;

pub use socket::{DatapathError, QueueSocket, SocketOptions};
pub use worker::{Worker, WorkerExit};
