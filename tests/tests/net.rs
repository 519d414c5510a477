//! virtio-net end to end: the test host makes a tap with an address (10.99.0.1/24), `husk
//! run-vm` boots a guest whose `husk-vmm` attaches to it (`--net-tap`, `--net-mac`,
//! `--net-mtu`), the guest configures eth0 with busybox `ip`, and then: the guest NIC has the
//! MAC and MTU given, ping works both ways (full-size frames too), 16 MiB cross over TCP each
//! way with matching SHA-256 on both sides, deleting the tap takes the guest's link down, and
//! the device's counters at exit are not zero. All cases share one test-host run.
//!
//! `husk run-vm` has no network options: it is given a two-line `--vmm` wrapper that adds them
//! (and keeps the VMM's log, with its counters line, where the test can read it).

mod common;

use std::time::Duration;

use common::{line_value, run_once, section, SharedRun};
use husk_tests::testhost::Job;

const MAC: &str = "02:48:55:53:4b:01";
const MTU: u32 = 1400;
const HOST_IP: &str = "10.99.0.1";
const GUEST_IP: &str = "10.99.0.2";

/// The guest's part (the argument of `sh -c`): configure eth0, ping the host, then serve one transfer each
/// way; the test host connects and times both.
const GUEST: &str = r#"
ip link set eth0 up && ip addr add @GUEST_IP@/24 dev eth0 || exit 1
echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"
echo "GUEST-MTU $(cat /sys/class/net/eth0/mtu)"
echo "GUEST-CARRIER-BEFORE $(cat /sys/class/net/eth0/carrier)"
ping -c 3 -W 10 @HOST_IP@ > /tmp/ping 2>&1; echo "GUEST-PING exit=$? $(grep -o '[0-9]* packets received' /tmp/ping)"
ping -c 2 -W 10 -s 1372 @HOST_IP@ > /tmp/ping 2>&1; echo "GUEST-PING-FULL exit=$? $(grep -o '[0-9]* packets received' /tmp/ping)"
head -c 16777216 /dev/urandom > /tmp/g2h
echo "SHA-G2H-SENT $(sha256sum < /tmp/g2h | cut -d' ' -f1)"
timeout 300 nc -l -p 5002 -e sh -c 'cat > /tmp/h2g' || echo "GUEST-H2G failed"
echo "SHA-H2G-RECEIVED $(sha256sum < /tmp/h2g | cut -d' ' -f1)"
timeout 300 nc -l -p 5003 < /tmp/g2h || echo "GUEST-G2H failed"
# The test host now deletes the tap: the link goes down.
i=0
while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-CARRIER-AFTER $(cat /sys/class/net/eth0/carrier)"
echo GUEST-DONE
"#;

/// The test host's part.
const SCRIPT: &str = r#"
F="$HUSK_FILES"
export HUSK_KERNEL="$F/vmlinux" HUSK_INITRAMFS="$F/initramfs.cpio"
TAP=husk-tap0; B=/tmp/husk-net; rm -rf $B; mkdir -p $B
cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }

tunctl -t $TAP >/dev/null && ip link set $TAP mtu @MTU@ && ip addr add @HOST_IP@/24 dev $TAP \
    && ip link set $TAP up || { echo "cannot set up $TAP"; exit 1; }
cat > $B/vmm <<EOF
#!/bin/sh
exec "$F/husk-vmm" --net-tap $TAP --net-mac @MAC@ --net-mtu @MTU@ "\$@" 2>>$B/vmm.log
EOF
chmod +x $B/vmm
cat > $B/guest.sh <<'GUEST_EOF'
@GUEST@
GUEST_EOF
head -c 16777216 /dev/urandom > $B/h2g
echo "SHA-H2G-SENT $(sha256sum < $B/h2g | cut -d' ' -f1)"

# Connects with `nc ARGS` until the guest listens; prints the centiseconds of the good try.
transfer() {
    i=0
    while [ $i -lt 300 ]; do
        t0=$(cs)
        if nc "$@" 2>/dev/null; then echo $(( $(cs) - t0 )); return 0; fi
        i=$((i+1)); sleep 0.5
    done
    echo never; return 1
}

host_side() {
    i=0
    until ping -c 1 -W 1 @GUEST_IP@ >/dev/null 2>&1; do
        i=$((i+1)); [ $i -ge 300 ] && { echo "HOST-PING never answered"; return 1; }
    done
    ping -c 3 -W 10 @GUEST_IP@ > $B/ping 2>&1
    echo "HOST-PING exit=$? $(grep -o '[0-9]* packets received' $B/ping)"
    echo "H2G-CS $(transfer @GUEST_IP@ 5002 < $B/h2g)"
    echo "G2H-CS $(transfer @GUEST_IP@ 5003 -e sh -c "cat > $B/g2h")"
    echo "SHA-G2H-RECEIVED $(sha256sum < $B/g2h | cut -d' ' -f1)"
    ip link delete dev $TAP; echo "HOST-TAP-DELETED exit=$?"
}
host_side > $B/host.out 2>&1 &
HOST_PID=$!

echo "BEGIN guest"
"$F/husk" run-vm --vmm $B/vmm --vmm-log-level info --memory 512 -- sh -c "$(cat $B/guest.sh)" 2>&1
echo "END guest exit=$?"
wait $HOST_PID
echo "BEGIN host"; cat $B/host.out; echo "END host exit=$?"
echo "BEGIN vmm"; cat $B/vmm.log; echo "END vmm exit=0"
rm -rf $B
"#;

fn fill(text: &str) -> String {
    text.replace("@MAC@", MAC)
        .replace("@MTU@", &MTU.to_string())
        .replace("@HOST_IP@", HOST_IP)
        .replace("@GUEST_IP@", GUEST_IP)
}

fn shared(test: &str) -> Option<&'static SharedRun> {
    static RUN: common::Shared<SharedRun> = common::Shared::new();
    run_once(&RUN, test, |a| {
        let bin = common::bin_dir();
        let script = fill(SCRIPT).replace("@GUEST@", fill(GUEST).trim());
        Job::new(script)
            .file(&a.vmm, "husk-vmm")
            .file(bin.join("husk"), "husk")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .module("tun")
            .memory_mib(1024)
            .timeout(Duration::from_secs(900))
    })
}

/// The guest's section, after checking that it ran to the end.
fn guest_text(out: &SharedRun) -> &str {
    let (text, code) = section(&out.1.stdout, "guest");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("GUEST-DONE"),
        "the guest script ended early:\n{text}\n--- host ---\n{}",
        host_text(out)
    );
    text
}

fn host_text(out: &SharedRun) -> &str {
    section(&out.1.stdout, "host").0
}

fn vmm_text(out: &SharedRun) -> &str {
    section(&out.1.stdout, "vmm").0
}

#[test]
fn the_guest_nic_has_the_mac_and_mtu_given() {
    let Some(out) = shared("the_guest_nic_has_the_mac_and_mtu_given") else {
        return;
    };
    let guest = guest_text(out);
    assert_eq!(line_value(guest, "GUEST-MAC "), MAC);
    assert_eq!(line_value(guest, "GUEST-MTU "), MTU.to_string());
}

#[test]
fn ping_works_both_ways() {
    let Some(out) = shared("ping_works_both_ways") else {
        return;
    };
    let guest = guest_text(out);
    assert_eq!(
        line_value(guest, "GUEST-PING "),
        "exit=0 3 packets received"
    );
    assert_eq!(
        line_value(guest, "GUEST-PING-FULL "),
        "exit=0 2 packets received",
        "1400-byte IP packets, the MTU"
    );
    assert_eq!(
        line_value(host_text(out), "HOST-PING "),
        "exit=0 3 packets received"
    );
}

#[test]
fn sixteen_mib_cross_tcp_intact_each_way() {
    let Some(out) = shared("sixteen_mib_cross_tcp_intact_each_way") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    let h2g = line_value(&out.1.stdout, "SHA-H2G-SENT ");
    assert_eq!(h2g.len(), 64);
    assert_eq!(line_value(guest, "SHA-H2G-RECEIVED "), h2g, "host → guest");
    let g2h = line_value(guest, "SHA-G2H-SENT ");
    assert_eq!(g2h.len(), 64);
    assert_eq!(line_value(host, "SHA-G2H-RECEIVED "), g2h, "guest → host");
    for (label, key) in [("host → guest", "H2G-CS "), ("guest → host", "G2H-CS ")] {
        let cs: u64 = line_value(host, key)
            .parse()
            .unwrap_or_else(|_| panic!("{label}: no time in:\n{host}"));
        let secs = cs as f64 / 100.0;
        eprintln!(
            "virtio-net {label}: 16 MiB in {secs:.2} s ({:.1} MiB/s) on {}",
            16.0 / secs.max(0.01),
            out.1.kind.describe()
        );
    }
}

#[test]
fn the_device_counted_the_traffic() {
    let Some(out) = shared("the_device_counted_the_traffic") else {
        return;
    };
    guest_text(out);
    let vmm = strip_ansi(vmm_text(out));
    let line = vmm
        .lines()
        .find(|l| l.contains("virtio-net device") && l.contains("counters"))
        .unwrap_or_else(|| panic!("no counters line in the VMM log:\n{vmm}"));
    eprintln!("virtio-net counters at exit: {line}");
    let counter = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        line[at + name.len() + 2..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad {name} in {line}"))
    };
    for name in ["rx_packets", "tx_packets", "interrupts"] {
        assert!(counter(name) > 0, "{name} is zero: {line}");
    }
    // Both transfers crossed the device, with headers.
    assert!(counter("rx_bytes") > 16 << 20, "{line}");
    assert!(counter("tx_bytes") > 16 << 20, "{line}");
    assert_eq!(counter("malformed"), 0, "{line}");
    assert!(
        line.contains("link_up=false"),
        "the tap was deleted: {line}"
    );
}

#[test]
fn deleting_the_tap_takes_the_guest_link_down() {
    let Some(out) = shared("deleting_the_tap_takes_the_guest_link_down") else {
        return;
    };
    let guest = guest_text(out);
    assert_eq!(line_value(guest, "GUEST-CARRIER-BEFORE "), "1");
    assert_eq!(line_value(host_text(out), "HOST-TAP-DELETED "), "exit=0");
    assert_eq!(
        line_value(guest, "GUEST-CARRIER-AFTER "),
        "0",
        "the device reported the link down"
    );
    let vmm = strip_ansi(vmm_text(out));
    assert!(
        vmm.lines()
            .any(|l| l.contains("WARN") && l.contains("the tap is gone; link down")),
        "one warning in the VMM log:\n{vmm}"
    );
    assert_eq!(vmm.matches("the tap is gone").count(), 1, "{vmm}");
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
