//! Loopback ports for the servers a test or the load harness starts.
//!
//! Not the kernel's `bind(0)`: the port it hands out is free again once that listener closes,
//! and two tests running side by side were given the same one (one test's Sluice then answered
//! another's requests on its admin listener). Ports come from this process's own counter
//! instead, below the kernel's ephemeral range (32768 up, so no client socket takes one
//! meanwhile), each checked free. The start is spread by process id, for a server of an earlier
//! process still on its way out. Self-contained, so it can be included by path.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free 127.0.0.1 port in `first .. first + span`; `None` when every one is taken.
pub fn free_port_in(first: u16, span: u16) -> Option<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u32::from(first) + start.wrapping_add(n) % u32::from(span);
        let port = u16::try_from(port).ok()?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Some(port);
        }
    }
    None
}
