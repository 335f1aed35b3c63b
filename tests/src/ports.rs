//! Free loopback ports for test members.
//!
//! Invariant: a port this returns is, until the test process exits, handed
//! to no other test process on the machine and to no outgoing connection.
//! A port that was merely free a moment ago (bind to port 0, then release)
//! is not enough: test processes run side by side, and the kernel hands a
//! released port to the next `bind(0)` or outgoing `connect` (seen in CI as
//! a member exiting at start-up because its port was taken). So ports are
//! drawn below the kernel's ephemeral range, where `connect` never draws,
//! and each is claimed by an exclusive lock on a file named after it, held
//! for the life of the process, before it is probed with a bind.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where test ports are drawn from: below Linux's default ephemeral range
/// (32768-60999) and above the well-known and registered ports keel and
/// etcd use (2379, 2380).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The lock files of the ports this process has claimed; never released
/// before the process exits (the kernel drops the locks then).
static CLAIMED_PORTS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A port on 127.0.0.1 that is free and claimed for this process.
pub fn free_port() -> std::io::Result<u16> {
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let mut candidate = starting_offset() % span;
    for _ in 0..span {
        candidate = (candidate + 1) % span;
        let port = TEST_PORTS.start + candidate as u16;
        if claim_ports(&[port])? {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free test port in {TEST_PORTS:?}"),
    ))
}

/// Claims every port of `ports` for this process, all or none: true when
/// each was free and is now locked against the other test processes (as
/// `free_port`'s are); false, with none of them kept, when one is taken.
/// For callers whose ports follow a fixed layout (a local cluster's); such
/// ports should stay below the ephemeral range too.
pub fn claim_ports(ports: &[u16]) -> std::io::Result<bool> {
    let lock_dir = std::env::temp_dir().join("keel-test-ports");
    std::fs::create_dir_all(&lock_dir)?;
    let mut locks = Vec::with_capacity(ports.len());
    for port in ports {
        match claim(lock_dir.join(format!("{port}.lock")))? {
            Some(lock) if TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).is_ok() => locks.push(lock),
            // Dropping the locks taken so far releases them.
            _ => return Ok(false),
        }
    }
    CLAIMED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .extend(locks);
    Ok(true)
}

/// The lock file, locked exclusively, or `None` if another process holds it.
fn claim(path: PathBuf) -> std::io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Where this process starts looking: spread by process id and clock so
/// that processes started together do not contend for the same ports.
fn starting_offset() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(7919).wrapping_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_bindable() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().expect("port")).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(TEST_PORTS.contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("claimed port binds");
        }
    }

    #[test]
    fn claimed_ports_are_all_or_none_and_never_claimed_twice() {
        let claimed = free_port().expect("port");
        assert!(
            !claim_ports(&[claimed]).expect("claim"),
            "{claimed} claimed twice"
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let listening = listener.local_addr().expect("address").port();
        assert!(
            !claim_ports(&[listening]).expect("claim"),
            "{listening} is listened on"
        );
        // A layout refused for its second port keeps none: its first port
        // (unless another process holds it) can be claimed right after.
        let first_port_released = (32_001..32_700).any(|port| {
            !claim_ports(&[port, claimed]).expect("claim") && claim_ports(&[port]).expect("claim")
        });
        assert!(first_port_released, "a refused claim kept its first port");
    }
}
