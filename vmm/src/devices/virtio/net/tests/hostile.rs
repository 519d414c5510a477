//! What a hostile guest may put in the rings.

use super::*;

const F_INDIRECT: u16 = 4;

/// A chain as `(addr, len, flags)` per descriptor.
type Chain = Vec<(u64, u32, u16)>;

#[test]
fn malformed_transmit_chains_are_returned_and_counted() {
    let mut g = Guest::new();
    let base = TX_BUF_BASE;
    let mem_end = MEM_SIZE as u64;
    let cases: Vec<(&str, Chain)> = vec![
        ("header only", vec![(base, HDR as u32, 0)]),
        ("header and 13 bytes", vec![(base, HDR as u32 + 13, 0)]),
        ("zero-length descriptors", vec![(base, 0, 0), (base, 0, 0)]),
        ("outside guest memory", vec![(mem_end + 0x1000, 100, 0)]),
        ("straddling the end of memory", vec![(mem_end - 50, 100, 0)]),
        ("address wrapping around", vec![(u64::MAX - 10, 100, 0)]),
        ("device-writable descriptor", vec![(base, 100, F_WRITE)]),
        (
            "writable after readable",
            vec![(base, 60, 0), (base + 0x100, 60, F_WRITE)],
        ),
        (
            "longer than any frame",
            vec![(base, 0x1_0000, 0), (base, 0x1_0000, 0)],
        ),
        ("4 GiB descriptor", vec![(base, u32::MAX, 0)]),
        (
            "indirect table outside memory",
            vec![(mem_end, 64, F_INDIRECT)],
        ),
    ];
    for (i, (name, descs)) in cases.iter().enumerate() {
        g.send_raw(descs);
        assert_eq!(g.used(false).len(), 1, "{name}: the chain is returned");
        assert_eq!(g.counters().malformed, i as u64 + 1, "{name}: counted");
    }
    assert!(g.host_recv().is_empty(), "nothing reached the host");
    // A chain whose `next` points past the table ends there: too short.
    let head = g.tx.next_desc;
    write_desc(&g.mem, g.tx.desc, head, base, HDR as u32, F_NEXT, 300);
    g.tx.next_desc += 1;
    g.publish(false, head);
    g.kick(false);
    assert_eq!(g.used(false).len(), 1);
    assert_eq!(g.counters().malformed, cases.len() as u64 + 1);
    // The device still works.
    g.send(&frame(60, 1));
    assert_eq!(g.host_recv().len(), 1);
    assert_eq!(g.counters().tx_packets, 1);
}

#[test]
fn a_descriptor_loop_ends() {
    let mut g = Guest::new();
    let head = g.tx.next_desc;
    // One descriptor linked to itself: the chain ends after a table's worth of links.
    write_desc(&g.mem, g.tx.desc, head, TX_BUF_BASE, 1000, F_NEXT, head);
    g.tx.next_desc += 1;
    g.publish(false, head);
    g.kick(false);
    assert_eq!(g.used(false).len(), 1);
    assert_eq!(
        g.counters().malformed,
        1,
        "256 x 1000 bytes is longer than any frame"
    );
    // A loop of short descriptors stays under the limit and is just a (garbage) frame.
    let head = g.tx.next_desc;
    write_desc(&g.mem, g.tx.desc, head, TX_BUF_BASE, 20, F_NEXT, head);
    g.tx.next_desc += 1;
    g.publish(false, head);
    g.kick(false);
    assert_eq!(g.used(false).len(), 1);
    let got = g.host_recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 20 * usize::from(QSIZE));
}

#[test]
fn malformed_receive_chains_do_not_lose_the_frame() {
    let mut g = Guest::new();
    let f = frame(300, 7);
    g.host_send(&f);
    assert!(!g.backend_watched(), "waiting for buffers");
    let base = RX_BUF_BASE;
    let mem_end = MEM_SIZE as u64;
    let bad: Vec<Chain> = vec![
        vec![(base, SMALL_BUF, 0)],
        vec![(base, HDR as u32, F_WRITE), (base + 0x100, 500, 0)],
        vec![(mem_end, SMALL_BUF, F_WRITE)],
        vec![(mem_end - 100, SMALL_BUF, F_WRITE)],
        vec![(u64::MAX - 10, SMALL_BUF, F_WRITE)],
        vec![(base, 0, F_WRITE)],
        vec![(base, HDR as u32 + 13, F_WRITE)],
        vec![(base, u32::MAX, F_WRITE)],
    ];
    for descs in &bad {
        g.push_chain(true, descs);
    }
    let good = RX_BUF_BASE + u64::from(g.rx.next_desc) * RX_STRIDE;
    let head = g.push_chain(true, &[(good, SMALL_BUF, F_WRITE)]);
    g.kick(true);
    let used = g.used(true);
    assert_eq!(used.len(), bad.len() + 1);
    assert!(used[..bad.len()].iter().all(|&(_, len)| len == 0));
    assert_eq!(used[bad.len()], (u32::from(head), (HDR + 300) as u32));
    let mut got = vec![0u8; 300];
    g.mem
        .read_slice(&mut got, GuestAddress(good + HDR as u64))
        .unwrap();
    assert_eq!(got, f);
    let c = g.counters();
    assert_eq!(c.malformed, bad.len() as u64);
    assert_eq!((c.rx_packets, c.rx_dropped), (1, 0));
}

#[test]
fn a_runaway_avail_index_moves_nothing() {
    let mut g = Guest::new();
    for (rx, ring) in [(true, g.rx.avail), (false, g.tx.avail)] {
        g.mem
            .write_obj(1000u16.to_le(), GuestAddress(ring + 2))
            .unwrap();
        g.kick(rx);
    }
    g.host_send(&frame(60, 1));
    assert!(g.used(true).is_empty());
    assert!(g.used(false).is_empty());
    assert!(g.host_recv().is_empty());
}

#[test]
fn a_head_index_past_the_table_moves_nothing() {
    let mut g = Guest::new();
    g.publish(false, 300);
    g.kick(false);
    g.publish(true, 999);
    g.kick(true);
    g.host_send(&frame(60, 1));
    assert!(g.host_recv().is_empty());
    assert_eq!(g.counters().rx_packets, 0);
}
