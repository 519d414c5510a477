//! What a hostile guest or host client may send.

use super::*;

#[test]
fn guest_sending_beyond_credit_is_reset() {
    let mut g = Guest::new("overrun");
    let host = g.guest_connect(5000, 1025, 64 * 1024);
    g.give_rx(4);
    // The host never reads; the guest keeps sending regardless of credit.
    let chunk = vec![1u8; 60 * 1024];
    let mut resets = Vec::new();
    for _ in 0..64 {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..ghdr(op::RW, 5000, 1025)
            },
            &chunk,
        );
        resets = g.recv().into_iter().filter(|p| p.0.op == op::RST).collect();
        if !resets.is_empty() {
            break;
        }
    }
    assert_eq!(resets.len(), 1, "overrun ends in a reset");
    assert_eq!(g.connections(), 0);
    assert_eq!(g.counters().malformed_packets, 1);
    drop(host);
}

#[test]
fn handshake_garbage_closes_client() {
    let mut g = Guest::new("garbage");
    g.give_rx(8);
    let long = [b'C'; 40];
    let cases: [&[u8]; 5] = [
        b"HELLO\n",
        &long,
        b"CONNECT abc\n",
        b"CONNECT 99999999999\n",
        b"CONNECT\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client.write_all(case).unwrap();
        g.pump();
        client.set_nonblocking(true).unwrap();
        assert_eq!(read_now(&mut client), None, "case {i} closed");
        assert!(g.recv().is_empty(), "case {i}: nothing for the guest");
    }
    assert_eq!(g.counters().handshake_failures, cases.len() as u64);
    assert_eq!(g.connections(), 0);
    assert!(g.dev.lock().unwrap().muxer.handshakes.is_empty());
}

#[test]
fn host_client_before_driver_is_refused() {
    let mut g = Guest::new("no-driver");
    assert!(g.dev.lock().unwrap().reset());
    g.pump();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 5\n").unwrap();
    g.pump();
    client.set_nonblocking(true).unwrap();
    assert_eq!(read_now(&mut client), None);
    assert_eq!(g.counters().handshake_failures, 1);
}

#[test]
fn malformed_packets_are_dropped_counted_and_reset() {
    let mut g = Guest::new("malformed");
    g.give_rx(32);
    let mut expected_malformed = 0;

    // Unparseable chains without a usable header: dropped, counted, nothing else.
    let base = TX_BUF_BASE;
    g.send_raw(&[(base, 20, 0)]); // header too short
    g.send_raw(&[(MEM_SIZE as u64 + 0x1000, HDR, 0)]); // outside guest memory
    g.send_raw(&[(u64::MAX - 10, HDR, 0)]); // wraps around
    g.send_raw(&[(base, HDR, F_WRITE)]); // wrong direction
    expected_malformed += 4;
    assert_eq!(g.counters().malformed_packets, expected_malformed);
    assert_eq!(g.tx_used(), 4, "every chain goes back to the guest");

    // Malformed packets naming a live connection: dropped and the connection reset.
    type Desc = (u64, u32, u16);
    type MakeBad = Box<dyn Fn(u32) -> (Header, Vec<Desc>)>;
    let bad: Vec<(&str, MakeBad)> = vec![
        (
            "len beyond the data descriptor",
            Box::new(|p| {
                let h = Header {
                    len: 100,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, 10, 0)])
            }),
        ),
        (
            "data outside memory",
            Box::new(|p| {
                let h = Header {
                    len: 100,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (MEM_SIZE as u64, 100, 0)])
            }),
        ),
        (
            "unknown op",
            Box::new(|p| {
                (
                    Header {
                        op: 42,
                        ..ghdr(0, 6000 + p, 2000 + p)
                    },
                    vec![(0, HDR, 0)],
                )
            }),
        ),
        (
            "wrong type",
            Box::new(|p| {
                let h = Header {
                    type_: 2,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0)])
            }),
        ),
        (
            "wrong src_cid",
            Box::new(|p| {
                let h = Header {
                    src_cid: 77,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0)])
            }),
        ),
        (
            "payload on a control op",
            Box::new(|p| {
                let h = Header {
                    len: 4,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, 4, 0)])
            }),
        ),
        (
            "payload over 64 KiB",
            Box::new(|p| {
                let h = Header {
                    len: MAX_PKT_DATA + 1,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, MAX_PKT_DATA + 1, 0)])
            }),
        ),
    ];
    for (i, (what, make)) in bad.iter().enumerate() {
        let port = i as u32;
        let mut host = g.guest_connect(6000 + port, 2000 + port, 64 * 1024);
        let (hdr, descs) = make(port);
        let slot = TX_BUF_BASE + 0x20_0000;
        g.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(slot))
            .unwrap();
        let descs: Vec<_> = descs
            .into_iter()
            .map(|(a, l, f)| {
                let addr = if a < MEM_SIZE as u64 { slot + a } else { a };
                (addr, l, f)
            })
            .collect();
        g.send_raw(&descs);
        expected_malformed += 1;
        assert_eq!(g.counters().malformed_packets, expected_malformed, "{what}");
        let got = g.recv();
        assert_eq!(got.len(), 1, "{what}");
        assert_eq!(got[0].0.op, op::RST, "{what}");
        assert_eq!(
            (got[0].0.src_port, got[0].0.dst_port),
            (2000 + port, 6000 + port),
            "{what}"
        );
        assert_eq!(g.connections(), 0, "{what}");
        assert_eq!(read_now(&mut host), None, "{what}: host stream closed");
    }
    // Garbage for a connection that does not exist gets no answer.
    g.send(
        Header {
            op: 42,
            ..ghdr(0, 1, 1)
        },
        &[],
    );
    assert!(g.recv().is_empty());
}

#[test]
fn garbage_rx_buffers_are_skipped() {
    let mut g = Guest::new("bad-rx");
    // Read-only rx buffer, then a header that does not fit, then a good one.
    g.push_chain(true, &[(RX_BUF_BASE, HDR + 10, 0)]);
    g.push_chain(
        true,
        &[
            (RX_BUF_BASE, 8, F_WRITE),
            (RX_BUF_BASE + 0x100, 64, F_WRITE),
        ],
    );
    g.send(ghdr(op::REQUEST, 5000, 4444), &[]); // no listener: a RST to deliver
    assert_eq!(g.counters().malformed_packets, 2);
    g.give_rx(1);
    let got = g.recv();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].0.op, op::RST);
}
