//! The datapath: per-queue UMEM and AF_XDP socket ([`QueueSocket`]), the worker loop that serves it
//! ([`Worker`]), and a port for clients that send and receive whole frames ([`XskPort`]). All of shunt's `unsafe` code lives in this module; each block says why it is sound.

pub mod meta;
mod port;
mod socket;
pub mod sys;
mod worker;

pub use port::XskPort;
pub use socket::{DatapathError, QueueSocket, SocketOptions};
pub use worker::{Worker, WorkerExit};
