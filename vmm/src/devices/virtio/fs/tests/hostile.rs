//! A hostile driver: chains outside guest memory, loops, short and lying headers, opcodes the
//! server does not know, sizes meant to make the host allocate, missing reply buffers, and a
//! stream of random requests. None may panic; each is answered or dropped, and counted.

use fuse_backend_rs::abi::fuse_abi::{GetxattrIn, InHeader, ReadIn};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;

/// Asserts that the device still serves a well-formed request.
fn still_serves(g: &mut Guest) {
    std::fs::write(g.share().join("alive"), "").unwrap();
    assert!(g.lookup(ROOT, "alive").is_ok(), "the device still works");
}

/// Queues one raw chain and returns the used length the device gave it.
fn used_len(g: &mut Guest, descs: &[(u64, u32, u16)]) -> u32 {
    g.push_chain(descs);
    let used = g.run();
    assert_eq!(used.len(), 1, "the chain is returned: {used:?}");
    used[0].1
}

#[test]
fn chains_outside_guest_memory_are_dropped() {
    let mut g = Guest::new("bad-addr");
    let end = MEM_SIZE as u64;
    let bad: [&[(u64, u32, u16)]; 4] = [
        &[(0xffff_0000_0000, 64, 0)],
        &[(0x10_0000, 0xffff_ffff, 0)],
        &[(0x10_0000, 64, 0), (end - 8, 64, F_WRITE)],
        &[(u64::MAX - 4, 64, 0)],
    ];
    for descs in bad {
        assert_eq!(used_len(&mut g, descs), 0, "{descs:?}");
    }
    assert_eq!(g.counters().malformed, 4);
    still_serves(&mut g);
}

#[test]
fn descriptor_loops_and_reversed_chains_end() {
    let mut g = Guest::new("loops");
    let descs = g.stage(op::LOOKUP, ROOT, &cstr("x"), 4096);
    // A reply buffer before the request (the spec wants readable descriptors first): served
    // or dropped, but returned.
    let reversed = [descs[1], descs[0]];
    assert!(used_len(&mut g, &reversed) <= 4096);
    // A descriptor whose `next` is itself.
    let head = 200u16;
    g.write_desc(g.desc_table(), head, (descs[0].0, descs[0].1, F_NEXT, head));
    g.push_head(head);
    assert_eq!(g.run().len(), 1, "the looping chain is returned");
    // An empty indirect table.
    g.push_indirect(0x30_0000, 0);
    assert_eq!(g.run(), vec![(u32::from(g.last_head()), 0)]);
    still_serves(&mut g);
}

#[test]
fn indirect_descriptors_work_and_bad_tables_are_dropped() {
    let mut g = Guest::new("indirect");
    std::fs::write(g.share().join("f"), "").unwrap();
    let descs = g.stage(op::LOOKUP, ROOT, &cstr("f"), 4096);
    let table = 0x30_0000;
    g.write_desc(table, 0, (descs[0].0, descs[0].1, F_NEXT, 1));
    g.write_desc(table, 1, (descs[1].0, descs[1].1, F_WRITE, 0));
    g.push_indirect(table, 2);
    let used = g.run();
    assert_eq!(used.len(), 1);
    assert!(used[0].1 > 16, "a LOOKUP reply through an indirect table");
    // A table length that is not a whole number of descriptors.
    let head = g.stage(op::LOOKUP, ROOT, &cstr("f"), 4096);
    g.write_desc(table, 0, (head[0].0, head[0].1, 0, 0));
    g.push_chain(&[(table, 17, F_INDIRECT)]);
    let used = g.run();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0);
    still_serves(&mut g);
}

#[test]
fn short_and_lying_headers() {
    let mut g = Guest::new("headers");
    // Shorter than a header.
    g.mem
        .write_slice(&[1u8; 10], GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(
        used_len(&mut g, &[(0x10_0000, 10, 0), (0x80_0000, 4096, F_WRITE)]),
        0
    );
    // A length past the end of the chain: EINVAL.
    let mut descs = g.stage(op::LOOKUP, ROOT, &cstr("x"), 4096);
    let header = InHeader {
        len: 1 << 20,
        opcode: op::LOOKUP,
        unique: 77,
        nodeid: ROOT,
        ..Default::default()
    };
    g.mem
        .write_slice(header.as_slice(), GuestAddress(descs[0].0))
        .unwrap();
    g.push_chain(&descs);
    let used = g.run();
    assert_eq!(used[0].1, 16, "an error reply");
    let out: fuse_backend_rs::abi::fuse_abi::OutHeader =
        g.mem.read_obj(GuestAddress(0x80_0000)).unwrap();
    assert_eq!((out.error, out.unique), (-libc::EINVAL, 77));
    // A length shorter than the header: the server cannot decode the name.
    descs = g.stage(op::LOOKUP, ROOT, &cstr("x"), 4096);
    let short = InHeader {
        len: 8,
        opcode: op::LOOKUP,
        nodeid: ROOT,
        ..Default::default()
    };
    g.mem
        .write_slice(short.as_slice(), GuestAddress(descs[0].0))
        .unwrap();
    g.push_chain(&descs);
    let _ = g.run();
    // A name without its NUL.
    let reply = g.call(op::LOOKUP, ROOT, b"abc");
    assert_ne!(reply.errno(), 0);
    assert!(g.counters().malformed >= 3, "{:?}", g.counters());
    still_serves(&mut g);
}

#[test]
fn unknown_and_unsupported_opcodes_get_enosys() {
    let mut g = Guest::new("opcodes");
    for opcode in [0, 7, 19, 47, 48, 49, 50, 51, 4096, 0x1a00_0000, u32::MAX] {
        let reply = g.call(opcode, ROOT, &[0u8; 64]);
        assert_eq!(reply.errno(), libc::ENOSYS, "opcode {opcode}");
    }
    // Known to the server, not done by husk: locks (31-33), bmap (37), poll (40).
    for opcode in [31, 32, 33, 37, 40] {
        assert_eq!(
            g.call(opcode, ROOT, &[0u8; 64]).errno(),
            libc::ENOSYS,
            "opcode {opcode}"
        );
    }
    assert_eq!(g.counters().unsupported, 16);
    still_serves(&mut g);
}

#[test]
fn sizes_meant_to_make_the_host_allocate_are_capped() {
    let mut g = Guest::new("sizes");
    std::fs::write(g.share().join("f"), "").unwrap();
    let f = g.lookup(ROOT, "f").unwrap();
    assert_eq!(g.setxattr(f.nodeid, "user.a", b"v"), 0);
    let args = GetxattrIn {
        size: u32::MAX,
        padding: 0,
    };
    let reply = g.call(
        op::GETXATTR,
        f.nodeid,
        &body(&[args.as_slice(), &cstr("user.a")]),
    );
    assert_eq!((reply.errno(), reply.body.as_slice()), (0, &b"v"[..]));
    assert_eq!(g.call(op::LISTXATTR, f.nodeid, args.as_slice()).errno(), 0);
    // READDIR asking for 4 GiB with a 4 KiB buffer.
    let open = fuse_backend_rs::abi::fuse_abi::OpenIn {
        flags: libc::O_DIRECTORY as u32,
        fuse_flags: 0,
    };
    let dir: fuse_backend_rs::abi::fuse_abi::OpenOut =
        g.call(op::OPENDIR, ROOT, open.as_slice()).ok().unwrap();
    let read = ReadIn {
        fh: dir.fh,
        size: u32::MAX,
        ..Default::default()
    };
    let reply = g.call_with(op::READDIRPLUS, ROOT, read.as_slice(), 4096);
    assert_eq!(reply.errno(), libc::ENOMEM);
    // READ and WRITE claiming more than the chain holds.
    let (file, fh) = g.create(ROOT, "g", libc::O_RDWR).unwrap();
    let read = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    assert_ne!(
        g.call_with(op::READ, file.nodeid, read.as_slice(), 4096)
            .errno(),
        0
    );
    let write = fuse_backend_rs::abi::fuse_abi::WriteIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let _ = g.call(op::WRITE, file.nodeid, &body(&[write.as_slice(), b"abc"]));
    assert!(std::fs::metadata(g.share().join("g")).unwrap().len() <= 3);
    still_serves(&mut g);
}

#[test]
fn requests_without_a_reply_buffer_are_bounded() {
    let mut g = Guest::with_budget("no-reply", 16);
    for i in 0..40 {
        std::fs::write(g.share().join(format!("f{i}")), "").unwrap();
        let descs = g.stage(op::LOOKUP, ROOT, &cstr(&format!("f{i}")), 0);
        assert_eq!(used_len(&mut g, &descs), 0);
    }
    // The lookups the guest never saw still hold descriptors, within the budget.
    assert!(g.fs.fds_in_use() <= 16);
    assert!(g.counters().fd_budget_hits > 0);
}

/// xorshift64*, enough to make noise reproducibly.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_requests_neither_panic_nor_escape() {
    let mut g = Guest::with_budget("noise", 256);
    std::fs::create_dir(g.share().join("d")).unwrap();
    std::fs::write(g.share().join("d/f"), "data").unwrap();
    std::os::unix::fs::symlink(&g.dirs.outside, g.share().join("out")).unwrap();
    let names = ["d", "f", "out", "..", ".", "x", "a/b", "secret", ""];
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let rounds = 4000;
    for _ in 0..rounds {
        let opcode = noise.below(52) as u32;
        let nodeid = noise.below(12);
        let mut payload = vec![0u8; noise.below(160) as usize];
        for b in payload.iter_mut() {
            *b = noise.next() as u8;
        }
        if noise.below(2) == 0 {
            // Give half of them a plausible name at the end.
            payload.extend_from_slice(&cstr(names[noise.below(names.len() as u64) as usize]));
        }
        let cap = [0, 16, 100, 4096][noise.below(4) as usize];
        let descs = g.stage(opcode, nodeid, &payload, cap);
        g.push_chain(&descs);
        assert_eq!(g.run().len(), 1);
    }
    assert_eq!(g.counters().requests, rounds + 1);
    assert!(g.fs.fds_in_use() <= 256);
    assert_eq!(
        std::fs::read_to_string(g.dirs.outside.join("secret")).unwrap(),
        "host secret\n",
        "nothing outside the share changed"
    );
    let outside: Vec<_> = std::fs::read_dir(&g.dirs.outside).unwrap().collect();
    assert_eq!(outside.len(), 1, "nothing was created outside the share");
    let base: Vec<_> = std::fs::read_dir(&g.dirs.base).unwrap().collect();
    assert_eq!(base.len(), 2, "nothing next to the share");
}
