//! Connections in both directions, data and credit.

use super::*;

#[test]
fn device_shape_and_config() {
    let g = Guest::new("shape");
    let dev = g.dev.lock().unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), 1 << features::VIRTIO_F_VERSION_1);
    assert_eq!(dev.config_space_len(), 8);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut hi = [0u8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert!(g.uds.exists());
    assert!(matches!(
        Vsock::new(2, g.dir.join("x")),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::new(u64::from(u32::MAX), g.dir.join("x")),
        Err(VsockError::InvalidCid(_))
    ));
}

#[test]
fn wires_into_transport_and_removes_socket_on_drop() {
    let dir = std::env::temp_dir().join(format!("husk-vsock-{}-wire", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Vsock::new(5, uds.clone()).unwrap()));
    let shared: SharedVirtioDevice = dev.clone();
    let transport = MmioTransport::new(mem, shared).unwrap();
    let mut em: Loop = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    assert!(uds.exists());
    drop(transport);
    drop(em);
    drop(dev);
    assert!(!uds.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_connects_to_host_listener_and_data_flows() {
    let mut g = Guest::new("guest-connect");
    let listener = g.port_listener(1025);
    g.give_rx(8);
    g.send(ghdr(op::REQUEST, 5000, 1025), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    let resp = got[0].0;
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_cid, resp.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
    assert_eq!((resp.src_port, resp.dst_port), (1025, 5000));
    assert_eq!(resp.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(resp.fwd_cnt, 0);
    assert_eq!(g.connections(), 1);

    let up = b"hello from the guest";
    g.send(
        Header {
            len: up.len() as u32,
            ..ghdr(op::RW, 5000, 1025)
        },
        up,
    );
    assert_eq!(read_now(&mut host).unwrap(), up);

    let down = b"hello from the host";
    host.write_all(down).unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].0.len as usize, down.len());
    assert_eq!(got[0].1, down);
    // The device forwarded the guest's bytes, and says so.
    assert_eq!(got[0].0.fwd_cnt, up.len() as u32);
    assert!(g.irq.status() & 1 != 0, "used-buffer interrupt raised");

    let c = g.counters();
    assert_eq!(c.connections_opened, 1);
    assert_eq!(c.tx_packets, 2);
    assert_eq!(c.rx_packets, 2);
    assert_eq!(c.malformed_packets, 0);
    assert_eq!(g.tx_used(), 2);
}

#[test]
fn no_host_listener_means_rst() {
    let mut g = Guest::new("no-listener");
    g.give_rx(2);
    g.send(ghdr(op::REQUEST, 5000, 4444), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4444, 5000));
    assert_eq!(g.connections(), 0);
    assert_eq!(g.counters().rst_sent, 1);
    // Another CID than the host's: reset, not a connection.
    g.send(
        Header {
            dst_cid: 9,
            ..ghdr(op::REQUEST, 5001, 4444)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(got[0].0.src_cid, 9);
}

#[test]
fn interrupts_follow_the_drivers_wish() {
    let mut g = Guest::new("no-interrupt");
    let no_interrupt = |g: &Guest, on: bool| {
        for ring in [&g.rx, &g.tx] {
            let flags = GuestAddress(ring.avail);
            g.mem.write_obj(u16::from(on).to_le(), flags).unwrap();
        }
    };
    let _ = g.irq.eventfd().read();
    no_interrupt(&g, true);
    g.give_rx(2);
    g.send(ghdr(op::REQUEST, 5000, 4444), &[]);
    assert_eq!(g.recv()[0].0.op, op::RST, "the buffers were used");
    assert!(
        g.irq.eventfd().read().is_err(),
        "VRING_AVAIL_F_NO_INTERRUPT honoured"
    );
    no_interrupt(&g, false);
    g.send(ghdr(op::REQUEST, 5001, 4444), &[]);
    assert_eq!(g.recv()[0].0.op, op::RST);
    assert!(
        g.irq.eventfd().read().is_ok(),
        "an interrupt once asked for"
    );
}

#[test]
fn host_data_never_exceeds_guest_credit() {
    let mut g = Guest::new("credit");
    let mut host = g.guest_connect(5000, 1025, 10);
    host.write_all(&[b'x'; 25]).unwrap();
    g.give_rx(8);
    let got = g.recv();
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::CREDIT_REQUEST]);
    assert_eq!(got[0].1.len(), 10);
    assert_eq!(g.counters().credit_stalls, 1);
    // Nothing more until the guest consumes.
    g.pump();
    assert!(g.recv().is_empty());

    // The guest read 10 bytes and says so.
    g.send(
        Header {
            buf_alloc: 10,
            fwd_cnt: 10,
            ..ghdr(op::CREDIT_UPDATE, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1.len(), 10);
    g.send(
        Header {
            buf_alloc: 10,
            fwd_cnt: 20,
            ..ghdr(op::CREDIT_UPDATE, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    let data: usize = got
        .iter()
        .filter(|p| p.0.op == op::RW)
        .map(|p| p.1.len())
        .sum();
    assert_eq!(data, 5);
    assert_eq!(g.counters().credit_stalls, 2);
}

#[test]
fn device_tells_guest_about_freed_buffer() {
    let mut g = Guest::new("credit-update");
    let mut host = g.guest_connect(5000, 1025, 64 * 1024);
    g.give_rx(4);
    // 240 KiB from the guest without any packet back: its view of our buffer drops to 16 KiB.
    let chunk = vec![0x5au8; 48 * 1024];
    let mut sent = 0usize;
    let mut host_got = 0usize;
    for _ in 0..5 {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..ghdr(op::RW, 5000, 1025)
            },
            &chunk,
        );
        sent += chunk.len();
        host_got += read_now(&mut host).unwrap().len();
    }
    g.pump();
    host_got += read_now(&mut host).unwrap().len();
    assert_eq!(host_got, sent);
    let updates: Vec<Header> = g
        .recv()
        .into_iter()
        .map(|p| p.0)
        .filter(|h| h.op == op::CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty(), "a CREDIT_UPDATE was sent");
    let last = updates[updates.len() - 1];
    assert!(last.fwd_cnt > 0 && last.fwd_cnt as usize <= sent);
    assert_eq!(last.buf_alloc, CONN_BUF_ALLOC);
    // Asked explicitly, the device answers with its current count.
    g.send(ghdr(op::CREDIT_REQUEST, 5000, 1025), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(got[0].0.fwd_cnt as usize, sent);
}

#[test]
fn host_client_connects_to_guest() {
    let mut g = Guest::new("host-connect");
    g.give_rx(8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    let req = got[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, 1234);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let local = req.src_port;

    g.send(
        Header {
            buf_alloc: 64 * 1024,
            ..ghdr(op::RESPONSE, 1234, local)
        },
        &[],
    );
    client.set_nonblocking(true).unwrap();
    assert_eq!(
        read_now(&mut client).unwrap(),
        format!("OK {local}\n").into_bytes()
    );

    client.write_all(b"ping").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"ping");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (local, 1234));
    g.send(
        Header {
            len: 4,
            ..ghdr(op::RW, 1234, local)
        },
        b"pong",
    );
    assert_eq!(read_now(&mut client).unwrap(), b"pong");
    assert_eq!(g.connections(), 1);
}
