//! The tap backend: attaching to a tap by name or adopting an inherited tap descriptor, and
//! setting it up the way the device needs it (12-byte vnet header, no offloads, non-blocking).
//!
//! Facts from the kernel's `include/uapi/linux/if_tun.h` and `drivers/net/tun.c`: TUNSETIFF
//! creates the interface if it does not exist (the tap then lives as long as the descriptor,
//! unless it was made persistent) and attaches the descriptor; IFF_VNET_HDR puts a virtio-net
//! header in front of every frame, whose size TUNSETVNETHDRSZ sets; TUNSETOFFLOAD with no
//! flags makes the kernel finish checksums and segmentation before a frame reaches the
//! descriptor; a descriptor whose interface was deleted answers EBADFD and polls as EPOLLERR.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetBackend, NetError, VNET_HDR_LEN};

/// Longest interface name, without the NUL (`IFNAMSIZ - 1`).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The flags the device needs on its tap.
const REQUIRED_FLAGS: i32 = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name and `ifr_flags`, padded to the
/// union's 24 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: i32) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            // The TUN flags all fit in 16 bits.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_NAME_LEN);
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

/// Checks that `name` can be a Linux interface name (the kernel's `dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn validate_tap_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidTapName(name.to_string()))
    }
}

/// A tap the device reads and writes frames through.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap `name` in the VMM's network namespace, creating it if there is none
    /// (a tap created here goes away with the VMM).
    pub fn open(name: &str) -> Result<Self, NetError> {
        validate_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        let mut req = IfReq::new(name, REQUIRED_FLAGS);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live, writable
        // value of that layout and size for the whole call, and `file` is an open descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(NetError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: req.name(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Adopts the inherited descriptor `fd`, which must be attached to a tap opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, and sets it up. The descriptor is closed when the
    /// `Tap` is dropped, or on error.
    ///
    /// # Safety
    ///
    /// `fd` must be an open descriptor that nothing else in the process owns or will close:
    /// one inherited from the parent for this purpose.
    pub unsafe fn from_inherited_fd(fd: RawFd) -> Result<Self, NetError> {
        // SAFETY: the caller guarantees that `fd` is open and ours alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes one `struct ifreq`; `req` is a live, writable value of that
        // layout and size for the whole call. On a descriptor that is not a tun file the ioctl
        // fails without touching memory.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if rc < 0 {
            return Err(NetError::NotATap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let flags = i32::from(req.flags) & 0xffff;
        let name = req.name();
        if flags & REQUIRED_FLAGS != REQUIRED_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(NetError::TapFlags { fd, name, flags });
        }
        let tap = Self { file, name };
        tap.set_fd_flag(
            libc::F_GETFD,
            libc::F_SETFD,
            libc::FD_CLOEXEC,
            "close-on-exec",
        )?;
        tap.configure()?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the vnet header size, turns every offload off and makes the descriptor
    /// non-blocking.
    fn configure(&self) -> Result<(), NetError> {
        let fd = self.file.as_raw_fd();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live
        // local for the whole call.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) };
        self.check(rc, "TUNSETVNETHDRSZ")?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory of ours.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        self.check(rc, "TUNSETOFFLOAD")?;
        self.set_fd_flag(libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK, "O_NONBLOCK")
    }

    /// Adds `flag` to the descriptor's flags read with `get` and written with `set`.
    fn set_fd_flag(
        &self,
        get: libc::c_int,
        set: libc::c_int,
        flag: libc::c_int,
        what: &'static str,
    ) -> Result<(), NetError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: F_GETFD and F_GETFL take no argument and touch no memory of ours.
        let current = unsafe { libc::fcntl(fd, get) };
        self.check(current, what)?;
        // SAFETY: F_SETFD and F_SETFL take an int by value and touch no memory of ours.
        let rc = unsafe { libc::fcntl(fd, set, current | flag) };
        self.check(rc, what)
    }

    fn check(&self, rc: libc::c_int, what: &'static str) -> Result<(), NetError> {
        if rc < 0 {
            Err(NetError::Configure {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        for ok in ["tap0", "a", "husk-tap_1.x", "123456789012345"] {
            assert!(validate_tap_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "has space",
            "tab\t",
            "1234567890123456",
            "\u{e9}t\u{e9}",
        ] {
            assert!(
                matches!(validate_tap_name(bad), Err(NetError::InvalidTapName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ifreq_layout() {
        assert_eq!(
            std::mem::size_of::<IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
        let req = IfReq::new("tap0", REQUIRED_FLAGS);
        assert_eq!(req.name(), "tap0");
        assert_eq!(i32::from(req.flags), REQUIRED_FLAGS);
    }

    #[test]
    fn inherited_descriptor_that_is_not_a_tap() {
        let file = File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: `fd` was just opened here and is handed over; nothing else closes it.
        let err = unsafe { Tap::from_inherited_fd(fd) }.unwrap_err();
        assert!(matches!(err, NetError::NotATap { .. }), "{err:?}");
    }

    #[test]
    fn unattached_tun_descriptor_is_not_a_tap() {
        // Opening /dev/net/tun needs no privilege; attaching does.
        let Ok(file) = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
        else {
            eprintln!("SKIPPED: unattached_tun_descriptor_is_not_a_tap: no /dev/net/tun");
            return;
        };
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: `fd` was just opened here and is handed over; nothing else closes it.
        let err = unsafe { Tap::from_inherited_fd(fd) }.unwrap_err();
        assert!(matches!(err, NetError::NotATap { .. }), "{err:?}");
    }

    /// Runs `f` on a thread of its own in a fresh network namespace, if this process may make
    /// one (root); the taps it creates vanish with the namespace.
    fn in_private_netns(test: &str, f: impl FnOnce() + Send + 'static) {
        let ran = std::thread::spawn(move || {
            // SAFETY: unshare(2) changes only this thread's namespaces and touches no memory.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f();
            Ok(())
        })
        .join()
        .expect("the test thread panicked");
        if let Err(e) = ran {
            eprintln!("SKIPPED: {test}: cannot make a network namespace: {e}");
        }
    }

    #[test]
    fn real_taps_by_name_and_by_descriptor() {
        in_private_netns("real_taps_by_name_and_by_descriptor", || {
            if !std::path::Path::new("/dev/net/tun").exists() {
                eprintln!("SKIPPED: real_taps_by_name_and_by_descriptor: no /dev/net/tun");
                return;
            }
            let tap = Tap::open("husk-t0").expect("tap by name");
            assert_eq!(tap.name(), "husk-t0");
            // SAFETY: F_GETFL on an open descriptor touches no memory.
            let fl = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
            let mut hdr: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one int into a live local.
            let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut hdr) };
            assert_eq!((rc, hdr), (0, VNET_HDR_LEN as libc::c_int));

            // The same tap, adopted by descriptor (a duplicate stands for the inherited one).
            // SAFETY: dup(2) of an open descriptor touches no memory.
            let dup = unsafe { libc::dup(tap.as_raw_fd()) };
            assert!(dup >= 0);
            // SAFETY: `dup` was just made here and is handed over.
            let adopted = unsafe { Tap::from_inherited_fd(dup) }.expect("tap by descriptor");
            assert_eq!(adopted.name(), "husk-t0");

            // A tap without IFF_VNET_HDR is refused, by name and flags.
            let raw = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            let mut req = IfReq::new("husk-t1", libc::IFF_TAP | libc::IFF_NO_PI);
            // SAFETY: TUNSETIFF reads and writes one ifreq-sized live local.
            let rc = unsafe { libc::ioctl(raw.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            let fd = std::os::fd::IntoRawFd::into_raw_fd(raw);
            // SAFETY: `fd` was just opened here and is handed over.
            match unsafe { Tap::from_inherited_fd(fd) } {
                Err(NetError::TapFlags { name, flags, .. }) => {
                    assert_eq!(name, "husk-t1");
                    assert_eq!(flags & libc::IFF_VNET_HDR, 0);
                }
                other => panic!("expected TapFlags, got {other:?}"),
            }
        });
    }

    #[test]
    fn bad_name_is_refused_before_opening() {
        assert!(matches!(
            Tap::open("no/slash"),
            Err(NetError::InvalidTapName(_))
        ));
    }
}
