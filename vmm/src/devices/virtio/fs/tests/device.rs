//! The device as the transport drives it: configuration space, features, activation, the
//! worker thread serving a request and interrupting the guest, reset, and errors at creation.

use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{InitIn, InitOut, OutHeader};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::{Fs, FsError, TAG_LEN};
use super::*;
use crate::devices::virtio::{
    device_type, features, ActivateError, ActivatedQueue, IrqTrigger, VirtioDevice,
};

fn config(fs: &Fs) -> Vec<u8> {
    let mut data = vec![0u8; fs.config_space_len() as usize];
    fs.read_config(0, &mut data);
    data
}

#[test]
fn identity_features_and_configuration_space() {
    let dirs = Dirs::new("identity");
    let fs = Fs::new(&dirs.share, "husk", 64).unwrap();
    assert_eq!(fs.device_type(), device_type::FS);
    assert_eq!(fs.queue_max_sizes(), &[128, 1024]);
    assert_eq!(
        fs.avail_features(),
        (1 << features::VIRTIO_F_VERSION_1) | (1 << features::VIRTIO_F_INDIRECT_DESC)
    );
    let cfg = config(&fs);
    assert_eq!(cfg.len(), TAG_LEN + 4);
    assert_eq!(&cfg[..4], b"husk");
    assert!(cfg[4..TAG_LEN].iter().all(|&b| b == 0), "NUL padded");
    assert_eq!(&cfg[TAG_LEN..], &1u32.to_le_bytes(), "one request queue");
    // Byte reads, as Linux's driver does them, and reads past the end.
    let mut byte = [0u8; 1];
    fs.read_config(1, &mut byte);
    assert_eq!(byte, [b'u']);
    let mut beyond = [0xffu8; 4];
    fs.read_config(TAG_LEN as u64 + 2, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_eq!(fs.share(), std::fs::canonicalize(&dirs.share).unwrap());
    let full = "t".repeat(TAG_LEN);
    let fs = Fs::new(&dirs.share, &full, 64).unwrap();
    assert_eq!(&config(&fs)[..TAG_LEN], full.as_bytes());
}

#[test]
fn creation_fails_clearly() {
    let dirs = Dirs::new("create-errors");
    let missing = dirs.base.join("missing");
    assert!(matches!(
        Fs::new(&missing, "husk", 64),
        Err(FsError::Share { .. })
    ));
    let file = dirs.base.join("file");
    std::fs::write(&file, "").unwrap();
    assert!(matches!(
        Fs::new(&file, "husk", 64),
        Err(FsError::Share { .. })
    ));
    for tag in ["", "with space", &"t".repeat(TAG_LEN + 1)] {
        assert!(matches!(
            Fs::new(&dirs.share, tag, 64),
            Err(FsError::InvalidTag(_))
        ));
    }
    // A symlink to the share is resolved once, at creation.
    let link = dirs.base.join("link");
    std::os::unix::fs::symlink(&dirs.share, &link).unwrap();
    let fs = Fs::new(&link, "husk", 64).unwrap();
    assert_eq!(fs.share(), std::fs::canonicalize(&dirs.share).unwrap());
}

/// A driver for the real device: both queues in guest memory, the worker thread serving them.
struct Driver {
    mem: GuestMemoryMmap,
    fs: Fs,
    irq: Arc<IrqTrigger>,
    kick: EventFd,
    desc: u64,
    avail: u64,
    used: u64,
    requests: u16,
    _dirs: Dirs,
}

const QUEUES: [u64; 2] = [0x1_0000, 0x2_0000];

impl Driver {
    fn new(name: &str) -> Self {
        let dirs = Dirs::new(name);
        let mut fs = Fs::new(&dirs.share, "husk", 64).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let (queues, kick, rings) = Self::queues(&mem);
        fs.activate(mem.clone(), queues, irq.clone()).unwrap();
        Self {
            mem,
            fs,
            irq,
            kick,
            desc: rings.0,
            avail: rings.1,
            used: rings.2,
            requests: 0,
            _dirs: dirs,
        }
    }

    /// Fresh queues; returns them, the request queue's kick and its ring addresses.
    fn queues(mem: &GuestMemoryMmap) -> (Vec<ActivatedQueue>, EventFd, (u64, u64, u64)) {
        let mut queues = Vec::new();
        let mut kick = None;
        let mut rings = (0, 0, 0);
        for (index, &addr) in QUEUES.iter().enumerate() {
            let mock = MockSplitQueue::create(mem, GuestAddress(addr), 128);
            let queue: Queue = mock.create_queue().unwrap();
            let notify = EventFd::new(EFD_NONBLOCK).unwrap();
            if index == 1 {
                kick = Some(notify.try_clone().unwrap());
                rings = (
                    mock.desc_table_addr().0,
                    mock.avail_addr().0,
                    mock.used_addr().0,
                );
            }
            queues.push(ActivatedQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        (queues, kick.unwrap(), rings)
    }

    /// Sends FUSE_INIT on the request queue and waits for the reply and the interrupt.
    fn init(&mut self) -> InitOut {
        self.send_init();
        self.wait_for_irq();
        self.reply()
    }

    /// Puts FUSE_INIT on the request queue and kicks the worker.
    fn send_init(&mut self) {
        let init = InitIn {
            major: 7,
            minor: 36,
            max_readahead: 0,
            flags: 0,
        };
        let header = fuse_backend_rs::abi::fuse_abi::InHeader {
            len: 40 + 16,
            opcode: op::INIT,
            unique: 9,
            ..Default::default()
        };
        let request = [header.as_slice(), init.as_slice()].concat();
        self.mem
            .write_slice(&request, GuestAddress(0x10_0000))
            .unwrap();
        let head = (self.requests * 2) % 128;
        for (i, (addr, len, flags)) in [(0x10_0000u64, 56u32, 1u16), (0x20_0000, 4096, 2)]
            .into_iter()
            .enumerate()
        {
            let at = GuestAddress(self.desc + 16 * u64::from(head + i as u16));
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
            self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            self.mem.write_obj(head + 1, at.unchecked_add(14)).unwrap();
        }
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.requests % 128));
        self.mem.write_obj(head, slot).unwrap();
        self.requests += 1;
        self.mem
            .write_obj(self.requests, GuestAddress(self.avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();
    }

    /// Checks that the last request was used and answered; returns the INIT reply.
    fn reply(&self) -> InitOut {
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        assert_eq!(used_idx, self.requests, "the request was used");
        let out: OutHeader = self.mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!((out.error, out.unique), (0, 9));
        self.mem.read_obj(GuestAddress(0x20_0010)).unwrap()
    }

    fn wait_for_irq(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.irq.eventfd().read().is_err() {
            assert!(Instant::now() < deadline, "no interrupt from the worker");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_ne!(self.irq.status() & 1, 0, "a used-buffer interrupt");
    }
}

#[test]
fn interrupts_follow_the_drivers_wish() {
    let mut d = Driver::new("no-interrupt");
    let flags = GuestAddress(d.avail);
    d.mem.write_obj(1u16.to_le(), flags).unwrap();
    d.send_init();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.mem.read_obj::<u16>(GuestAddress(d.used + 2)).unwrap() != d.requests {
        assert!(Instant::now() < deadline, "the request was never used");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(d.reply().major, 7);
    // The worker interrupts, if at all, right after it fills the used ring.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        d.irq.eventfd().read().is_err(),
        "VRING_AVAIL_F_NO_INTERRUPT honoured"
    );
    d.mem.write_obj(0u16.to_le(), flags).unwrap();
    assert_eq!(d.init().major, 7, "and an interrupt once asked for");
}

#[test]
fn the_worker_serves_requests_and_survives_a_reset() {
    let mut d = Driver::new("worker");
    let out = d.init();
    assert_eq!(out.major, 7);
    assert_eq!(d.fs.counters().snapshot().requests, 1);
    std::fs::write(d._dirs.share.join("f"), "").unwrap();

    // Reset: the worker drops the queues and the file system's state, and acknowledges.
    assert!(d.fs.reset());
    assert_eq!(d.fs.fds_in_use(), 0);
    // A new driver: fresh queues, and FUSE_INIT again.
    let (queues, kick, rings) = Driver::queues(&d.mem);
    d.fs.activate(d.mem.clone(), queues, d.irq.clone()).unwrap();
    d.kick = kick;
    (d.desc, d.avail, d.used) = rings;
    d.requests = 0;
    assert_eq!(d.init().major, 7);
    assert_eq!(d.fs.counters().snapshot().requests, 2);
}

#[test]
fn activation_needs_both_queues() {
    let dirs = Dirs::new("activate");
    let mut fs = Fs::new(&dirs.share, "husk", 64).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut queues, _, _) = Driver::queues(&mem);
    queues.truncate(1);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    assert!(matches!(
        fs.activate(mem, queues, irq),
        Err(ActivateError::MissingQueue(1))
    ));
}
