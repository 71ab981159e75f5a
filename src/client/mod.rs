//! The client side: what drives shunt's datapath from outside rather than serving with it, shared by the
//! load generator (`shunt-bench`) and the tests. [`XskPort`] sends and receives whole frames through an
//! AF_XDP socket ([`crate::datapath::afxdp::QueueSocket`]) on the client's interface.
//!
//! No server layer uses this module (tests/layers.rs); it has no `unsafe` of its own: what touches the
//! UMEM's frames is the socket's, in the datapath.
#![forbid(unsafe_code)]

mod xsk_port;

pub use xsk_port::XskPort;
