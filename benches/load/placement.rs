//! Where the harness and the proxies run (`SLUICE_LOAD_PIN=1`): the harness (its clients and
//! its upstream) on the first CPU this process may use, every proxy (and Redis) on the others.
//!
//! By default every process may run on every CPU, and on a small machine the proxy shares its
//! cores with the load it is measured under: where the scheduler happens to put the threads of
//! one request (client, proxy, upstream) then decides more of a fresh stream's first byte than
//! the proxy's own work does, and it changes from second to second. Pinned, each proxy has
//! cores of its own, as it would in production, and the harness's noise stays off them.

use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct Placement {
    pub harness: Vec<usize>,
    pub proxies: Vec<usize>,
}

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Pins the calling thread (and so every thread it starts later) to the first allowed CPU and
/// records the rest for the proxies. Call it before any other thread is started.
pub fn pin() -> Result<Placement, String> {
    let allowed = allowed_cpus()?;
    if allowed.len() < 2 {
        return Err(format!(
            "SLUICE_LOAD_PIN needs two CPUs or more; this process may use {}",
            allowed.len()
        ));
    }
    let placement = Placement {
        harness: allowed[..1].to_vec(),
        proxies: allowed[1..].to_vec(),
    };
    set_affinity(&cpu_set(&placement.harness)).map_err(|e| format!("sched_setaffinity: {e}"))?;
    let _ = PLACEMENT.set(placement.clone());
    Ok(placement)
}

/// The placement of this run, when it is pinned.
pub fn current() -> Option<&'static Placement> {
    PLACEMENT.get()
}

/// The CPUs proxies are pinned to, when the run is pinned.
pub fn proxy_cpus() -> Option<libc::cpu_set_t> {
    current().map(|p| cpu_set(&p.proxies))
}

/// Pins the calling thread; also safe between `fork` and `exec` (one system call).
pub fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the indices come from sched_getaffinity, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// "0" or "1-3" or "1,3": for tables and the results file.
pub fn describe(cpus: &[usize]) -> String {
    match (cpus.first(), cpus.last()) {
        (Some(first), Some(last)) if last - first + 1 == cpus.len() && first != last => {
            format!("{first}-{last}")
        }
        _ => cpus
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}
