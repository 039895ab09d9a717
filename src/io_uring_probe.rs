//! Asks the kernel for an io_uring the way glommio will, before glommio does: glommio panics
//! when it cannot make one (in a lazily made static that every later shard finds poisoned),
//! where the server must fail with the reason and its fix. A container runtime's default
//! seccomp profile and `kernel.io_uring_disabled` refuse one of the three calls below; a
//! kernel older than 5.6 lacks one of them, and 5.6 and 5.7 have them all but not every
//! operation glommio needs, so the kernel's release is checked first.

use std::io;

/// Entries of the probe's ring: the smallest the kernel accepts.
const PROBE_RING_ENTRIES: u32 = 1;
/// `struct io_uring_params` (include/uapi/linux/io_uring.h): 10 words, then the submission
/// and completion queue offsets (10 words each).
const IO_URING_PARAMS_WORDS: usize = 30;
/// `IORING_REGISTER_PROBE`: what glommio registers first, to learn the supported operations.
const IORING_REGISTER_PROBE: libc::c_long = 8;
/// The oldest kernel glommio runs on (major, minor).
const KERNEL_RELEASE_MIN: (u32, u32) = (5, 8);
/// Where the running kernel's release is ("6.1.0-18-amd64").
const OSRELEASE_PATH: &str = "/proc/sys/kernel/osrelease";
/// Operations a probe asks about (the kernel fills in at most this many).
const PROBE_OPS: usize = 256;
/// `struct io_uring_probe` in 8-byte words: a 16-byte header, then 8 bytes per operation.
const PROBE_WORDS: usize = 2 + PROBE_OPS;

/// Makes an io_uring, registers a probe with it, enters it once and closes it: Ok when the
/// kernel and any seccomp filter allow all that glommio needs, else the first refusal
/// (`io_uring_setup: Operation not permitted (os error 1)`).
///
/// On a thread of its own: the kernel tears a ring down after its close, and may interrupt
/// the thread that made it meanwhile, which a blocking socket call with a timeout reports as
/// EINTR (the caller, a test, saw exactly that).
pub fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("io-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the io_uring probe's thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

/// The major and minor numbers of a kernel release ("6.1.0-18-amd64" is (6, 1)).
fn kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.trim().split(['.', '-']);
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

fn probe_here() -> Result<(), String> {
    // Unreadable or unparsable: left to the calls below.
    let release = std::fs::read_to_string(OSRELEASE_PATH).unwrap_or_default();
    if let Some(found) = kernel_release(&release).filter(|r| *r < KERNEL_RELEASE_MIN) {
        let (major, minor) = KERNEL_RELEASE_MIN;
        return Err(format!(
            "kernel {}.{} is older than {major}.{minor}, the oldest glommio runs on",
            found.0, found.1
        ));
    }
    let refused = |call: &str| format!("{call}: {}", io::Error::last_os_error());
    let mut params = [0u32; IO_URING_PARAMS_WORDS];
    // SAFETY: io_uring_setup writes at most a `struct io_uring_params` into `params`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            PROBE_RING_ENTRIES,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(refused("io_uring_setup"));
    }
    let fd = fd as libc::c_int;
    let mut ops = [0u64; PROBE_WORDS];
    // SAFETY: the kernel writes at most PROBE_OPS operations into `ops`, which has room for
    // them after the header; `fd` is the ring just made.
    let registered = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_PROBE,
            ops.as_mut_ptr(),
            PROBE_OPS as libc::c_uint,
        )
    };
    let result = if registered < 0 {
        Err(refused("io_uring_register"))
    } else {
        // Nothing to submit or wait for: the call only has to be allowed.
        // SAFETY: no arguments point anywhere; `fd` is the ring just made.
        let entered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                0u32,
                0u32,
                0u32,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if entered < 0 {
            Err(refused("io_uring_enter"))
        } else {
            Ok(())
        }
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_read_as_major_and_minor() {
        assert_eq!(kernel_release("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(kernel_release("5.8"), Some((5, 8)));
        assert_eq!(kernel_release("5.15.0-1051-azure"), Some((5, 15)));
        assert!(kernel_release("5.7.19").unwrap() < KERNEL_RELEASE_MIN);
        assert!(kernel_release("5.15.0").unwrap() >= KERNEL_RELEASE_MIN);
        assert_eq!(kernel_release("six"), None);
        assert_eq!(kernel_release(""), None);
    }

    #[test]
    fn this_host_gives_the_server_an_io_uring() {
        // The machines the tests run on serve io_uring (the server's own tests need it): a
        // probe that fails here is a wrong probe.
        assert_eq!(super::probe(), Ok(()));
    }
}
