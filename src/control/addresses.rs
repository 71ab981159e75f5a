//! Which destination addresses the XDP programs serve (`xdp.addresses`).
//!
//! A served port alone does not make a datagram ours: on a router, a Kubernetes node or a VM host, traffic
//! the host forwards to a pod or a guest on the same port crosses the same interface. The programs therefore
//! serve only the addresses in their served-address map and leave the rest to the kernel (counted as
//! `other_address`). The map holds either the configured list (fixed for the run) or, by default, the
//! interface's own addresses: read at start-up and followed as they change, by a control thread subscribed to
//! the kernel's rtnetlink address notifications ([`crate::sys::netlink::AddressEvents`]).

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{steer::ServedAddresses, sys};

/// How often the follower thread looks at its stop flag while no notification comes.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Why the served addresses could not be set up (`xdp.addresses`).
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// The interface's addresses could not be listed, or their notifications not subscribed to.
    #[error("config key `xdp.addresses` (absent: the addresses of {interface}): {what}: {source}")]
    Interface {
        /// The interface.
        interface: String,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The interface has no address, and none is configured: nothing would be served.
    #[error(
        "config key `xdp.addresses` (absent: the addresses of {0}): {0} has no IPv4 or IPv6 address, so nothing \
         would be served; list the addresses to serve (those of the VLAN, bond or bridge device above it, or a \
         service address on lo)"
    )]
    NoAddresses(String),
    /// The served-address map refused an update.
    #[error("config key `xdp.addresses`: {0}")]
    Map(#[from] crate::steer::XdpError),
}

/// The thread that keeps the served-address map in step with the interface's addresses. Dropping it stops
/// and joins the thread (within about 200 ms: it looks at its stop flag that often); the map keeps its last
/// contents.
#[derive(Debug)]
pub struct AddressFollower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AddressFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Fills `served` for a server on `interface` (index `ifindex`): with `configured` when given (fixed for the
/// run; `None` is returned), else with the interface's own addresses, IPv6 link-local ones included, and then
/// follows them on a control thread kept off `avoid_cores` (the workers'), which is returned. Logs what is
/// served and whether it is followed.
pub fn serve(
    mut served: ServedAddresses,
    configured: Option<&[IpAddr]>,
    interface: &str,
    ifindex: u32,
    avoid_cores: &[usize],
) -> Result<Option<AddressFollower>, AddressError> {
    if let Some(list) = configured {
        served.replace(list)?;
        tracing::info!(
            addresses = ?list,
            "serving only these destination addresses (xdp.addresses), fixed for the run; datagrams to the served \
             ports at any other address go to the kernel (xdp.other_address)"
        );
        return Ok(None);
    }
    let failed = |what, source| AddressError::Interface { interface: interface.to_string(), what, source };
    // Subscribed before listing: a change in between arrives as a notification.
    let events = sys::netlink::AddressEvents::subscribe(ifindex)
        .map_err(|e| failed("subscribing to rtnetlink address notifications", e))?;
    let now = sys::interface_addresses(interface).map_err(|e| failed("listing its addresses", e))?;
    if now.is_empty() {
        // A NIC under a VLAN, bond or bridge device has none of its own: serving nothing, silently, would be
        // worse than saying so.
        return Err(AddressError::NoAddresses(interface.to_string()));
    }
    served.replace(&now)?;
    tracing::info!(
        interface,
        addresses = ?now,
        "serving the interface's own destination addresses, followed as they change (rtnetlink); datagrams to \
         the served ports at any other address go to the kernel (xdp.other_address)"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let interface = interface.to_string();
    let avoid = avoid_cores.to_vec();
    let thread = std::thread::Builder::new()
        .name("shunt-addrs".to_string())
        .spawn(move || {
            if let Err(e) = sys::avoid_cores(&avoid) {
                tracing::debug!("address follower: could not keep off the worker cores: {e}");
            }
            follow(events, served, &interface, &flag);
        })
        .map_err(|e| failed("starting the address follower thread", e))?;
    Ok(Some(AddressFollower { stop, thread: Some(thread) }))
}

/// The follower's loop: on every notification about the interface, list its addresses again and make the
/// map match. Errors are logged and the loop goes on: the next notification (or overrun) lists again.
fn follow(events: sys::netlink::AddressEvents, mut served: ServedAddresses, interface: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match events.wait(STOP_CHECK) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(interface, "address notifications: {e}; listing the addresses again");
                std::thread::sleep(STOP_CHECK);
            }
        }
        let now = match sys::interface_addresses(interface) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(interface, "listing the interface's addresses: {e}; the served set is unchanged");
                continue;
            }
        };
        match served.replace(&now) {
            Ok((added, removed)) if !added.is_empty() || !removed.is_empty() => {
                tracing::info!(interface, ?added, ?removed, serving = ?now, "served destination addresses changed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(interface, "updating the served destination addresses: {e}"),
        }
    }
}
