//! Resets, shutdowns, device reset: nothing is left behind.

use super::*;

#[test]
fn host_client_refused_by_guest_sees_eof() {
    let mut g = Guest::new("host-refused");
    g.give_rx(8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 99\n").unwrap();
    g.pump();
    let req = g.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    g.send(ghdr(op::RST, 99, req.src_port), &[]);
    client.set_nonblocking(true).unwrap();
    assert_eq!(read_now(&mut client), None, "client sees EOF");
    assert_eq!(g.connections(), 0);
    let c = g.counters();
    assert_eq!((c.connections_opened, c.connections_closed), (1, 1));
    assert_eq!(c.rst_sent, 0, "no reset answers a reset");
}

#[test]
fn guest_rst_removes_connection_and_closes_stream() {
    let mut g = Guest::new("guest-rst");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(ghdr(op::RST, 5000, 1025), &[]);
    assert_eq!(g.connections(), 0);
    assert_eq!(read_now(&mut host), None);
    assert!(g.recv().is_empty(), "no reset answers a reset");
    let c = g.counters();
    assert_eq!((c.connections_opened, c.connections_closed), (1, 1));
}

#[test]
fn host_eof_sends_shutdown_then_guest_close_ends_connection() {
    let mut g = Guest::new("shutdown");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.give_rx(4);
    host.write_all(b"last words").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    g.pump();
    let got = g.recv();
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN]);
    assert_eq!(got[0].1, b"last words");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(g.connections(), 1, "the guest may still send");

    // Half-closed: the guest's data still reaches the host.
    g.send(
        Header {
            len: 3,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"bye",
    );
    assert_eq!(read_now(&mut host).unwrap(), b"bye");

    // The guest closes: both directions are done, the device resets and forgets it.
    g.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..ghdr(op::SHUTDOWN, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(g.connections(), 0);
    assert_eq!(read_now(&mut host), None);
}

#[test]
fn guest_shutdown_send_half_closes_host_stream() {
    let mut g = Guest::new("half-close");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..ghdr(op::SHUTDOWN, 5000, 1025)
        },
        &[],
    );
    assert_eq!(read_now(&mut host), None, "host sees EOF");
    // The host can still answer.
    g.give_rx(2);
    host.write_all(b"reply").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got[0].1, b"reply");
    // Data after SHUTDOWN(SEND) breaks the protocol.
    g.send(
        Header {
            len: 1,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"x",
    );
    assert_eq!(g.recv()[0].0.op, op::RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn many_connections_and_reset() {
    let mut g = Guest::new("many");
    let listener = g.port_listener(1025);
    g.give_rx(40);
    for p in 0..32 {
        g.send(ghdr(op::REQUEST, 7000 + p, 1025), &[]);
    }
    let mut hosts: Vec<UnixStream> = (0..32).map(|_| listener.accept().unwrap().0).collect();
    assert_eq!(g.connections(), 32);
    let responses: HashMap<u32, u16> = g.recv().iter().map(|p| (p.0.dst_port, p.0.op)).collect();
    assert_eq!(responses.len(), 32);
    assert!(responses.values().all(|&o| o == op::RESPONSE));

    assert!(g.dev.lock().unwrap().reset());
    g.pump();
    assert_eq!(g.connections(), 0);
    for h in &mut hosts {
        h.set_nonblocking(true).unwrap();
        assert_eq!(read_now(h), None);
    }
    // The driver sets the device up again and it works.
    g.activate();
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(
        Header {
            len: 2,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"hi",
    );
    assert_eq!(read_now(&mut host).unwrap(), b"hi");
}

#[test]
fn unanswered_connects_and_slow_handshakes_expire() {
    let mut g = Guest::new("expire");
    g.give_rx(4);
    let mut waiting = UnixStream::connect(&g.uds).unwrap();
    waiting.write_all(b"CONNECT 80\n").unwrap();
    let mut slow = UnixStream::connect(&g.uds).unwrap();
    slow.write_all(b"CONN").unwrap();
    g.pump();
    let req = g.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(g.connections(), 1);
    assert!(g.dev.lock().unwrap().timer_armed);

    // The guest never answers; the slow client never finishes its line.
    let later = std::time::Instant::now() + super::super::unix::HANDSHAKE_TIMEOUT;
    g.dev.lock().unwrap().muxer.expire(later);
    // What the timer event does next: run the queues and sync epoll.
    g.kicks[0].write(1).unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (req.src_port, 80));
    for client in [&mut waiting, &mut slow] {
        client.set_nonblocking(true).unwrap();
        assert_eq!(read_now(client), None);
    }
    assert_eq!(g.connections(), 0);
    assert_eq!(g.counters().handshake_failures, 2);
    assert!(
        !g.dev.lock().unwrap().timer_armed,
        "timer stops when nothing waits"
    );
}
