//! Frames both ways, waiting for buffers, interrupts, reset, and a backend that goes away.

use super::*;
use crate::devices::virtio::device_type;
use crate::devices::virtio::net::net_features::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use crate::devices::virtio::net::queues::{process_rx, process_tx, RxBuffer, RxStop};

fn config(g: &Guest) -> [u8; 12] {
    let mut c = [0u8; 12];
    let dev = g.dev.lock().unwrap();
    assert_eq!(dev.config_space_len(), 12);
    dev.read_config(0, &mut c);
    c
}

#[test]
fn type_features_and_config_space() {
    let g = Guest::with_mtu(Some(1400));
    {
        let dev = g.dev.lock().unwrap();
        assert_eq!(dev.device_type(), device_type::NET);
        assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
        let want = (1 << crate::devices::virtio::features::VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MTU);
        assert_eq!(dev.avail_features(), want);
        assert_eq!(dev.mtu(), Some(1400));
        assert_eq!(dev.mac(), MAC);
    }
    let c = config(&g);
    assert_eq!(&c[..6], &MAC.0, "mac");
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        VIRTIO_NET_S_LINK_UP,
        "status"
    );
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "max_virtqueue_pairs");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400, "mtu");
    // Byte-wise reads, as Linux reads the MAC; out-of-range reads give zeros.
    let dev = g.dev.lock().unwrap();
    let mut b = [0u8; 1];
    dev.read_config(5, &mut b);
    assert_eq!(b[0], MAC.0[5]);
    let mut w = [0xffu8; 4];
    dev.read_config(10, &mut w);
    assert_eq!(w, [0; 4]);
    drop(dev);

    let g = Guest::with_mtu(None);
    let dev = g.dev.lock().unwrap();
    assert_eq!(dev.avail_features() & (1 << VIRTIO_NET_F_MTU), 0);
    assert_eq!(dev.mtu(), None);
}

#[test]
fn bad_mac_or_mtu_is_refused() {
    let backend = || Box::new(FakeTap(seqpacket_pair().0));
    let multicast = MacAddr([0x01, 0, 0x5e, 0, 0, 1]);
    assert!(matches!(
        Net::new(backend(), "x", multicast, None),
        Err(NetError::Mac(_))
    ));
    for mtu in [0, 67, 65536, u32::MAX] {
        assert!(
            matches!(Net::new(backend(), "x", MAC, Some(mtu)), Err(NetError::Mtu(m)) if m == mtu),
            "{mtu}"
        );
    }
    for mtu in [68, 1500, 9000, 65535] {
        assert!(Net::new(backend(), "x", MAC, Some(mtu)).is_ok(), "{mtu}");
    }
}

#[test]
fn transmitted_frames_reach_the_host_with_a_clean_header() {
    let mut g = Guest::new();
    let frames = [frame(60, 1), frame(1514, 2), frame(MAX_FRAME_LEN, 3)];
    for f in &frames {
        g.send(f);
    }
    let got = g.host_recv();
    assert_eq!(got.len(), frames.len());
    for (got, want) in got.iter().zip(&frames) {
        assert_eq!(
            &got[..HDR],
            &[0; HDR],
            "the guest's header is not passed on"
        );
        assert_eq!(&got[HDR..], &want[..]);
    }
    let used = g.used(false);
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|&(_, len)| len == 0));
    let c = g.counters();
    assert_eq!(c.tx_packets, 3);
    assert_eq!(c.tx_bytes, (60 + 1514 + MAX_FRAME_LEN) as u64);
    assert_eq!((c.malformed, c.tx_dropped), (0, 0));
    assert_eq!(g.take_irq(), VIRTIO_MMIO_INT_VRING);
}

#[test]
fn received_frames_reach_the_guest() {
    let mut g = Guest::new();
    g.give_rx(4, SMALL_BUF);
    let frames = [frame(42, 1), frame(1514, 2), frame(600, 3)];
    for f in &frames {
        g.host_send(f);
    }
    let got = g.recv();
    assert_eq!(got.len(), 3);
    for (got, want) in got.iter().zip(&frames) {
        assert_eq!(got.as_ref(), Some(want));
    }
    let c = g.counters();
    assert_eq!(c.rx_packets, 3);
    assert_eq!(c.rx_bytes, 42 + 1514 + 600);
    assert_eq!((c.rx_dropped, c.malformed, c.rx_no_buffer), (0, 0, 0));
    assert_eq!(g.take_irq(), VIRTIO_MMIO_INT_VRING);
    assert!(g.backend_watched());
}

#[test]
fn a_frame_spreads_over_several_descriptors() {
    let mut g = Guest::new();
    let base = RX_BUF_BASE;
    // Header alone, then 3 x 500 bytes, one of them empty in between.
    let descs = [
        (base, HDR as u32, F_WRITE),
        (base + 0x1000, 500, F_WRITE),
        (base + 0x2000, 0, F_WRITE),
        (base + 0x3000, 500, F_WRITE),
        (base + 0x4000, 500, F_WRITE),
    ];
    g.push_chain(true, &descs);
    g.kick(true);
    let f = frame(1400, 9);
    g.host_send(&f);
    let used = g.used(true);
    assert_eq!(used, vec![(0, (HDR + 1400) as u32)]);
    let mut got = vec![0u8; 1400];
    g.mem
        .read_slice(&mut got[..500], GuestAddress(base + 0x1000))
        .unwrap();
    g.mem
        .read_slice(&mut got[500..1000], GuestAddress(base + 0x3000))
        .unwrap();
    g.mem
        .read_slice(&mut got[1000..], GuestAddress(base + 0x4000))
        .unwrap();
    assert_eq!(got, f);
}

#[test]
fn frames_wait_while_the_guest_has_no_buffers() {
    let mut g = Guest::new();
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        g.host_send(f);
    }
    assert!(g.recv().is_empty());
    assert!(
        !g.backend_watched(),
        "the tap is not watched while a frame waits for a buffer"
    );
    let c = g.counters();
    assert_eq!((c.rx_no_buffer, c.rx_packets, c.rx_dropped), (1, 0, 0));
    // One buffer: one frame, then waiting again.
    g.give_rx(1, SMALL_BUF);
    assert_eq!(g.recv(), vec![Some(frames[0].clone())]);
    assert!(!g.backend_watched());
    g.give_rx(8, SMALL_BUF);
    assert_eq!(
        g.recv(),
        vec![Some(frames[1].clone()), Some(frames[2].clone())]
    );
    assert!(g.backend_watched());
    let c = g.counters();
    assert_eq!((c.rx_no_buffer, c.rx_packets, c.rx_dropped), (2, 3, 0));
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut g = Guest::new();
    let base = RX_BUF_BASE;
    let len = HDR as u32 + 100;
    // A canary right behind the buffer: the device must never write past the chain.
    g.mem
        .write_slice(&[0xee; 256], GuestAddress(base + u64::from(len)))
        .unwrap();
    g.give_rx(1, len);
    g.host_send(&frame(101, 1));
    assert!(g.recv().is_empty(), "no buffer used for the big frame");
    let small = frame(100, 2);
    g.host_send(&small);
    assert_eq!(
        g.recv(),
        vec![Some(small)],
        "the same buffer takes the next frame"
    );
    let mut canary = [0u8; 256];
    g.mem
        .read_slice(&mut canary, GuestAddress(base + u64::from(len)))
        .unwrap();
    assert_eq!(canary, [0xee; 256]);
    let c = g.counters();
    assert_eq!((c.rx_dropped, c.rx_packets, c.malformed), (1, 1, 0));
}

#[test]
fn host_frames_too_short_or_too_long_are_dropped() {
    let mut g = Guest::new();
    g.give_rx(4, SMALL_BUF);
    // Shorter than an Ethernet header.
    g.host_send(&[1, 2, 3]);
    // Longer than any frame: the device's buffer cuts it, so it is dropped whole.
    let mut huge = vec![0u8; MAX_FRAME_LEN + 100];
    huge[..6].fill(0xff);
    let _ = g.host.as_mut().unwrap().write(&huge);
    g.pump();
    let ok = frame(60, 4);
    g.host_send(&ok);
    assert_eq!(g.recv(), vec![Some(ok)]);
    assert_eq!(g.counters().rx_dropped, 2);
}

#[test]
fn interrupts_follow_the_drivers_wish() {
    let mut g = Guest::new();
    let flags = GuestAddress(g.tx.avail);
    g.mem.write_obj(1u16.to_le(), flags).unwrap();
    g.send(&frame(60, 1));
    assert_eq!(g.used(false).len(), 1);
    assert_eq!(g.take_irq(), 0, "VRING_AVAIL_F_NO_INTERRUPT honoured");
    g.mem.write_obj(0u16.to_le(), flags).unwrap();
    g.send(&frame(60, 2));
    assert_eq!(g.take_irq(), VIRTIO_MMIO_INT_VRING);
    assert_eq!(g.counters().interrupts, 1);
}

#[test]
fn reset_stops_reading_and_a_new_driver_gets_the_frames() {
    let mut g = Guest::new();
    g.give_rx(2, SMALL_BUF);
    assert!(g.dev.lock().unwrap().reset());
    g.pump();
    assert!(!g.backend_watched());
    let f = frame(80, 5);
    g.host_send(&f);
    assert_eq!(g.counters().rx_packets, 0);
    g.activate();
    // The new driver has posted no buffer yet: the frame is read and waits.
    assert!(!g.backend_watched());
    assert_eq!(g.counters().rx_no_buffer, 1);
    g.give_rx(2, SMALL_BUF);
    assert_eq!(g.recv(), vec![Some(f)]);
    assert!(g.backend_watched());
    g.send(&frame(60, 6));
    assert_eq!(g.host_recv().len(), 1);
}

#[test]
fn a_backend_that_goes_away_takes_the_link_down() {
    let mut g = Guest::new();
    g.give_rx(2, SMALL_BUF);
    g.take_irq();
    g.host = None;
    g.pump();
    let c = config(&g);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 0, "link down");
    assert_eq!(g.take_irq(), VIRTIO_MMIO_INT_CONFIG);
    assert!(!g.backend_watched());
    assert!(!g.dev.lock().unwrap().link_up());
    // Transmitted frames are still returned, and counted as dropped.
    g.send(&frame(60, 1));
    g.send(&frame(60, 2));
    assert_eq!(g.used(false).len(), 2);
    let c = g.counters();
    assert_eq!((c.tx_dropped, c.tx_packets), (2, 0));
    // Receive notifications do not wake a dead backend.
    g.give_rx(2, SMALL_BUF);
    assert!(g.recv().is_empty());
}

#[test]
fn a_backend_that_would_block_drops_frames_and_returns_buffers() {
    let mut g = Guest::new();
    // The host never reads: the socket fills up.
    let mut sent = 0;
    while g.counters().tx_dropped == 0 {
        g.send(&frame(1514, sent as u8));
        sent += 1;
        assert!(sent < 10_000, "the socket never filled");
    }
    assert_eq!(g.used(false).len(), sent);
    let c = g.counters();
    assert_eq!(c.tx_packets + c.tx_dropped, sent as u64);
    // Room again: frames flow.
    let drained = g.host_recv().len() as u64;
    assert_eq!(drained, c.tx_packets);
    g.send(&frame(60, 1));
    assert_eq!(g.host_recv().len(), 1);
}

#[test]
fn budgets_bound_a_pass() {
    let g = Guest::new();
    let mem = &g.mem;
    let (mut rx_queue, mut rx_ring) = standalone_queue(mem, 0x3_0000);
    let (mut tx_queue, mut tx_ring) = standalone_queue(mem, 0x4_0000);
    for i in 0..5 {
        push(
            mem,
            &mut rx_ring,
            &[(RX_BUF_BASE + i * RX_STRIDE, SMALL_BUF, F_WRITE)],
        );
        let at = TX_BUF_BASE + i * TX_STRIDE;
        mem.write_slice(&frame(60, i as u8), GuestAddress(at + 0x100))
            .unwrap();
        push(
            mem,
            &mut tx_ring,
            &[(at, HDR as u32, 0), (at + 0x100, 60, 0)],
        );
    }
    let (dev_end, mut host) = seqpacket_pair();
    for i in 0..4 {
        let mut f = vec![0u8; HDR];
        f.extend(frame(60, i));
        host.write_all(&f).unwrap();
    }
    let mut tap = FakeTap(dev_end);
    let counters = NetCounters::default();
    let mut rx = RxBuffer::new();
    let mut segs = Vec::new();
    let mut rx_pass = |budget| {
        process_rx(
            mem,
            &mut rx_queue,
            &mut tap,
            &mut rx,
            &mut segs,
            &counters,
            budget,
        )
    };
    assert_eq!(rx_pass(2), (2, RxStop::Budget));
    assert_eq!(rx_pass(8), (2, RxStop::Empty));
    assert_eq!(counters.snapshot().rx_packets, 4);

    let (dev_end, _host) = seqpacket_pair();
    let mut tap = FakeTap(dev_end);
    let mut scratch = vec![0u8; queues::MAX_CHAIN_LEN];
    let mut tx_pass = |budget| {
        process_tx(
            mem,
            &mut tx_queue,
            &mut tap,
            &mut scratch,
            &mut segs,
            &counters,
            budget,
        )
    };
    let first = tx_pass(2);
    assert_eq!((first.used, first.more, first.gone), (2, true, false));
    let second = tx_pass(8);
    assert_eq!((second.used, second.more, second.gone), (3, false, false));
    assert_eq!(counters.snapshot().tx_packets, 5);
}

#[test]
fn notifications_are_asked_for_only_when_needed() {
    let mut g = Guest::new();
    let used_flags = |g: &Guest, rx: bool| -> u16 {
        let ring = if rx { &g.rx } else { &g.tx };
        g.mem.read_obj(GuestAddress(ring.used)).unwrap()
    };
    g.send(&frame(60, 1));
    assert_eq!(
        used_flags(&g, false),
        0,
        "transmit notifications on when idle"
    );
    g.give_rx(2, SMALL_BUF);
    g.host_send(&frame(60, 2));
    assert_eq!(
        used_flags(&g, true),
        1,
        "no receive notifications while the guest has buffers"
    );
    g.host_send(&frame(60, 3));
    g.host_send(&frame(60, 4));
    assert_eq!(
        used_flags(&g, true),
        0,
        "receive notifications on while a frame waits for a buffer"
    );
    g.give_rx(1, SMALL_BUF);
    assert_eq!(g.recv().len(), 3);
}
