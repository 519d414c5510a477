//! containerd with husk's shim end to end: a private containerd on the test host runs
//! `ctr run --runtime io.containerd.husk.v2`, so every container boots a husk VM.
//! The cases share two test-host runs, one after the other: the features, and the leak
//! check's run/delete cycles. See `docs/containerd-tests.md` for the harness.

mod common;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::{section, step};
use husk_tests::containerd::image::DEFAULT_IMAGE;
use husk_tests::containerd::Containerd;
use husk_tests::testhost::{self, HostKind, Job, JobOutput};

/// The private containerd's directory in L2 (a tmpfs).
const L2_BASE: &str = "/tmp/husk-containerd";

/// Sequential `ctr run --rm` cycles in the leak check (`HUSK_CTR_CYCLES` overrides it:
/// `scripts/test.sh` runs fewer against the other containerd versions).
const CYCLES: u32 = 50;

fn cycles() -> u32 {
    std::env::var("HUSK_CTR_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES)
}

/// The job script: containerd started with the busybox image imported, `body`, then
/// containerd stopped and purged. `sec NAME CMD...` brackets a step's output with BEGIN
/// and END lines and prints how long it took.
fn script(ctrd: &Containerd, body: &str) -> String {
    format!(
        r#"set -u
{functions}
sec() {{ _name=$1; shift; echo "BEGIN $_name"; _sec_t0=$(husk_ms); "$@"; _rc=$?; echo "END $_name exit=$_rc"; echo "took $_name $(( $(husk_ms) - _sec_t0 )) ms"; }}
IMG={DEFAULT_IMAGE}
F="$HUSK_FILES"
chmod +x "$F"/*
mkdir -p /opt/husk-test/bin
cp "$F/containerd-shim-husk-v2" /opt/husk-test/bin/
export PATH="/opt/husk-test/bin:$PATH"
cat > /opt/husk-test/config.toml <<EOF
vmm = "$F/husk-vmm"
kernel = "$F/vmlinux"
initramfs = "$F/initramfs.cpio"
vcpus = 1
memory_mib = 256
log_level = "debug"
EOF
export HUSK_CONFIG=/opt/husk-test/config.toml
R="--runtime io.containerd.husk.v2"
sec start husk_containerd_start
sec image "$F/husk-image" "$HUSK_CTRD_BASE/busybox.tar"
sec import husk_ctr image import --index-name "$IMG" "$HUSK_CTRD_BASE/busybox.tar"
waitstop() {{ _i=0; while [ $_i -lt 100 ]; do husk_ctr task ls | grep "^$1 " | grep -q STOPPED && return 0; sleep 0.1; _i=$((_i+1)); done; husk_ctr task ls; return 1; }}
rmc() {{ husk_ctr task delete "$1" && husk_ctr container delete "$1"; }}
leftovers() {{ husk_ctr containers ls -q; husk_ctr tasks ls -q; ls /run/husk 2>/dev/null; grep -c " /run/husk" /proc/mounts; pgrep -f husk-vmm; true; }}
{body}
sec stop husk_containerd_stop
tail -n 30 "$HUSK_CTRD_BASE/containerd.log"
husk_containerd_purge
"#,
        functions = ctrd.shell_functions(),
    )
}

/// Every feature case, one after the other, and then what they left behind. `ctr events`
/// runs for all of them (started and synchronised on a namespace event first).
const FEATURES: &str = r#"evstart() {
    husk_ctr events > "$HUSK_CTRD_BASE/events.log" 2>&1 &
    EVPID=$!
    _n=0
    while [ $_n -lt 20 ]; do
        husk_ctr namespaces create husk-evsync > /dev/null && husk_ctr namespaces remove husk-evsync > /dev/null || return 1
        sleep 1
        grep -q husk-evsync "$HUSK_CTRD_BASE/events.log" && return 0
        _n=$((_n+1))
    done
    return 1
}
sec evstart evstart
sec uname husk_ctr run --rm $R "$IMG" t1 uname -r
sec exit3 husk_ctr run --rm $R "$IMG" t2 sh -c 'exit 3'
# ash has no pipefail: ctr's own status, then what arrived.
big() { husk_ctr run --rm $R "$IMG" t3 head -c 10485760 /dev/zero > "$HUSK_CTRD_BASE/big.out"; _big=$?; wc -c < "$HUSK_CTRD_BASE/big.out"; rm -f "$HUSK_CTRD_BASE/big.out"; return $_big; }
sec big big
# dd's 64 MiB buffer against a 32 MiB limit: the guest's OOM killer ends it.
sec oom husk_ctr run --rm $R --memory-limit 33554432 "$IMG" oom1 dd if=/dev/zero of=/dev/null bs=67108864 count=1
# A counter the host can read in the container's rootfs (shared over virtio-fs; renamed
# into place, so a read never sees it half written), and a sleep that stays, so that ps
# has two processes whenever it looks.
sec detached husk_ctr run -d $R "$IMG" long sh -c 'trap "exit 0" TERM; sleep 1000000 & i=0; while :; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.2; done'
CNT=/run/husk/long/shared/long/rootfs/count
sec exec husk_ctr task exec --exec-id e1 long sh -c 'echo exec-ok; exit 4'
sec ps husk_ctr task ps long
sec metrics husk_ctr task metrics long
pausecheck() {
    husk_ctr task pause long || return 1
    husk_ctr task ls | grep "^long "
    _a=$(cat $CNT); sleep 3; echo "paused_counter $_a $(cat $CNT)"
    husk_ctr task resume long || return 1
    sleep 3; echo "resumed_counter $(cat $CNT)"
    husk_ctr task ls | grep "^long "
}
sec pause pausecheck
ckpt() {
    husk_ctr task checkpoint long; echo "checkpoint_exit $?"
    husk_ctr task ls | grep "^long "
    _a=$(cat $CNT); sleep 3; echo "counter_after $_a $(cat $CNT)"
}
sec checkpoint ckpt
# ctr 1.6 has no `task update`: containerd's Tasks.Update over gRPC, with curl (h2c on
# containerd's socket). The request is protobuf by hand: fields under 128 bytes.
pbfield() { printf "\\$(printf %o "$1")\\$(printf %o "$(wc -c < "$2")")"; cat "$2"; }
ctr_update() {
    command -v curl > /dev/null || { echo "curl is needed for Tasks.Update"; return 1; }
    _d="$HUSK_CTRD_BASE/update"; mkdir -p "$_d"
    printf %s "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources" > "$_d/url"
    printf %s "$2" > "$_d/value"
    { pbfield 10 "$_d/url"; pbfield 18 "$_d/value"; } > "$_d/any"
    printf %s "$1" > "$_d/id"
    { pbfield 10 "$_d/id"; pbfield 18 "$_d/any"; } > "$_d/msg"
    { printf '\0\0\0\0'; printf "\\$(printf %o "$(wc -c < "$_d/msg")")"; cat "$_d/msg"; } > "$_d/req"
    curl -sS --http2-prior-knowledge --unix-socket "$HUSK_CTRD_BASE/containerd.sock" \
        -H 'content-type: application/grpc' -H 'te: trailers' -H 'containerd-namespace: husk' \
        --data-binary @"$_d/req" -D "$_d/headers" -o "$_d/reply" \
        http://localhost/containerd.services.tasks.v1.Tasks/Update || return 1
    tr -d '\r' < "$_d/headers" | grep '^grpc-'
    tr -d '\r' < "$_d/headers" | grep -q '^grpc-status: 0$'
}
# ctr's default spec mounts no cgroup file system in the container, so the limit is seen
# from the agent (metrics) and felt by a 96 MiB allocation (dd's buffer) in the container.
memhog() { husk_ctr task exec --exec-id "hog$1" long dd if=/dev/zero of=/dev/null bs=100663296 count=1 2> /dev/null; echo $?; }
updatecase() {
    echo "hog_before $(memhog 0)"
    ctr_update long '{"memory":{"limit":67108864}}' || return 1
    husk_ctr task metrics long | grep 'memory\.usage_limit'
    echo "hog_after $(memhog 1)"
}
sec update updatecase
sec term husk_ctr task kill -s TERM long
sec stopped waitstop long
sec rmlong rmc long
sec victim husk_ctr run -d $R "$IMG" victim sleep 1000
killvmm() { _t=$(husk_ms); pkill -9 -f "/run/husk/victim/" || return 1; waitstop victim || return 1; echo "exit_seen_ms $(( $(husk_ms) - _t ))"; }
sec killvmm killvmm
sec rmvictim rmc victim
# At once: the shim gets a moment to exit after containerd's Shutdown, nothing else.
victimleft() {
    _i=0
    while pgrep -f "containerd-shim-husk-v2 .*-id victim " > /dev/null && [ $_i -lt 20 ]; do sleep 0.1; _i=$((_i+1)); done
    echo "shim_waited_ms $((_i * 100))"
    echo "shims $(pgrep -c -f "containerd-shim-husk-v2 .*-id victim ")"
    echo "vmms $(pgrep -c -f "/run/husk/victim/")"
    echo "dirs $(ls -d /run/husk/victim 2>/dev/null | wc -l)"
    echo "mounts $(grep -c " /run/husk/victim" /proc/mounts)"
}
sec victimleft victimleft
vmmdeath() { grep -A 70 -F "sandbox /run/husk/victim: husk-vmm exited" "$HUSK_CTRD_BASE/containerd.log" | head -n 70; }
sec vmmdeath vmmdeath
sec shimvictim husk_ctr run -d $R "$IMG" shimkill sleep 1000
gone() { _i=0; while [ $_i -lt 100 ]; do husk_ctr task ls | grep -q "^$1 .*RUNNING" || return 0; sleep 0.1; _i=$((_i+1)); done; return 1; }
killshim() { pkill -9 -f "containerd-shim-husk-v2 .*-id shimkill" || return 1; gone shimkill || return 1; husk_ctr task delete shimkill 2>/dev/null; husk_ctr container delete shimkill; }
sec killshim killshim
shimleft() { ls /run/husk; grep -c " /run/husk/shimkill" /proc/mounts; pgrep -f "/run/husk/shimkill/"; true; }
sec shimleft shimleft
tty1() { script -qec "$(command -v ctr) --address $HUSK_CTRD_BASE/containerd.sock -n husk run -t --rm $R $IMG tty1 tty" /dev/null; }
sec tty tty1
stdin1() { echo through-stdin | husk_ctr run --rm $R "$IMG" in1 cat; }
sec stdin stdin1
sec execdetached husk_ctr run -d $R "$IMG" tl sleep 1000
exectty() { script -qec "$(command -v ctr) --address $HUSK_CTRD_BASE/containerd.sock -n husk task exec -t --exec-id et tl tty" /dev/null; }
sec exectty exectty
killtl() { husk_ctr task kill -s KILL tl && waitstop tl && rmc tl; }
sec killtl killtl
sec filelog husk_ctr run --rm $R --log-uri file:///tmp/husk-file.log "$IMG" fl echo into-a-file
sec filelogged cat /tmp/husk-file.log
cat > /opt/husk-test/logger.sh <<'EOF2'
#!/bin/sh
exec 5>&-
cat <&3 > /tmp/husk-binary.log
EOF2
chmod +x /opt/husk-test/logger.sh
sec binlog husk_ctr run --rm $R --log-uri binary:///opt/husk-test/logger.sh "$IMG" bl echo into-a-logger
sec binlogged cat /tmp/husk-binary.log
sed 's/^memory_mib = .*/memory_mib = 200/' /opt/husk-test/config.toml > /opt/husk-test/small.toml
meminfo() { husk_ctr run --rm $R --runtime-config-path /opt/husk-test/small.toml "$IMG" mi head -n 1 /proc/meminfo; }
sec options meminfo
echo 'vcpus = 0' > /opt/husk-test/bad.toml
sec badconfig husk_ctr run --rm $R --runtime-config-path /opt/husk-test/bad.toml "$IMG" bad true
netsetup() { ip netns add husk-t && ip link add husk-h type veth peer name eth0 netns husk-t && ip addr add 10.77.0.1/24 dev husk-h && ip link set husk-h up && ip -n husk-t addr add 10.77.0.2/24 dev eth0 && ip -n husk-t link set eth0 mtu 1400 up && ip -n husk-t route add 10.78.0.0/16 via 10.77.0.1; }
sec netsetup netsetup
sec netmac ip netns exec husk-t cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu
sec netrun husk_ctr run -d $R --with-ns network:/var/run/netns/husk-t "$IMG" n1 sh -c 'mkdir -p /www && echo served-from-the-guest > /www/index.html && exec httpd -f -p 8080 -h /www'
netguest() { husk_ctr task exec --exec-id p n1 sh -c 'cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; grep -c . /proc/net/route; ping -c 2 -W 10 10.77.0.1 > /tmp/ping.out 2>&1 && echo guest-to-host-ok || cat /tmp/ping.out'; }
sec netguest netguest
# Only the guest serves this page: the namespace's own stack (which has 10.77.0.2 too)
# would refuse the connection.
nethost() { timeout 30 bash -c 'exec 3<>/dev/tcp/10.77.0.2/8080 && printf "GET /index.html HTTP/1.0\r\n\r\n" >&3 && cat <&3' | tail -n 1; }
sec nethost nethost
nettc() { tc -n husk-t filter show dev eth0 ingress | grep -c mirred; ip -n husk-t link show tap0_husk >/dev/null && echo tap-present; }
netdiag() { tc -s -n husk-t filter show dev tap0_husk ingress; tc -s -n husk-t filter show dev eth0 ingress; ip -n husk-t -s link; ip -s link show husk-h; ip neigh; }
sec nettc nettc
sec netdiag netdiag
netrm() { husk_ctr task kill -s KILL n1 && waitstop n1 && rmc n1; }
sec netrm netrm
netleft() { sleep 1; tc -n husk-t qdisc show dev eth0 | grep -c ingress; ip -n husk-t link show tap0_husk 2>/dev/null | grep -c tap0_husk; ip netns del husk-t; ip link show husk-h 2>/dev/null | grep -c husk-h; true; }
sec netleft netleft
sec hostnet husk_ctr run --rm $R --net-host "$IMG" hn true
# The config's log_level = "debug": the guest's lines reach containerd's log.
shimlog() {
    _l="$HUSK_CTRD_BASE/containerd.log"
    echo "agent_lines $(grep -c 'msg="guest agent: ' "$_l")"
    echo "console_lines $(grep -c 'msg="guest console: ' "$_l")"
    grep -m 1 'msg="guest agent: ' "$_l"
    grep -m 1 'msg="guest console: ' "$_l"
}
sec shimlog shimlog
evstop() { kill $EVPID; wait $EVPID 2> /dev/null; cat "$HUSK_CTRD_BASE/events.log"; }
sec events evstop
sec leftovers leftovers
"#;

/// The leak check: containerd's fds and husk's shims, VMMs, mounts and run directories
/// before and after sequential `ctr run --rm` cycles (`{cycles}`).
const CYCLES_BODY: &str = r#"counts() { echo "fds $(ls /proc/$(pidof containerd)/fd | wc -l) shims $(pgrep -c -f containerd-shim-husk) vmms $(pgrep -c -f husk-vmm) mounts $(grep -c ' /run/husk' /proc/mounts) dirs $(ls /run/husk 2>/dev/null | wc -l)"; }
sec before counts
cycles() { _i=0; while [ $_i -lt {cycles} ]; do husk_ctr run --rm $R "$IMG" cy$_i true || return 1; _i=$((_i+1)); done; }
_t=$(husk_ms)
sec cycles cycles
echo "cycles_ms $(( $(husk_ms) - _t ))"
sleep 1
sec after counts
sec leftovers leftovers
"#;

/// The two test-host runs of this file.
#[derive(Clone, Copy)]
enum Part {
    /// [`FEATURES`]: every case but the leak check.
    Features,
    /// [`CYCLES_BODY`]: the leak check, a run of its own so that a retry of either (the
    /// emulated host's faults, see `docs/testing.md`) repeats only that part.
    Cycles,
}

fn run(test: &str, part: Part) -> Option<&'static JobOutput> {
    static FEATURES_RUN: common::Shared<JobOutput> = common::Shared::new();
    static CYCLES_RUN: common::Shared<JobOutput> = common::Shared::new();
    // One test host at a time: two emulated L2s on a 2-core machine starve each other.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let host = testhost::kvm_host_or_skip(test)?;
    if matches!(host, HostKind::Native { .. }) {
        // The job would start containerd as this user on the real machine.
        let why = "the husk containerd tests run on the emulated test host only for now";
        assert!(
            std::env::var_os("HUSK_REQUIRE_KVM").is_none() || host.is_emulated(),
            "{test}: {why}"
        );
        eprintln!("SKIPPED: {test}: {why}");
        return None;
    }
    let (cell, name, body) = match part {
        Part::Features => (&FEATURES_RUN, "features", FEATURES.to_owned()),
        Part::Cycles => (
            &CYCLES_RUN,
            "cycles",
            CYCLES_BODY.replace("{cycles}", &cycles().to_string()),
        ),
    };
    Some(common::once(cell, || {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let a = common::Artifacts::locate();
        let bin = common::bin_dir();
        let ctrd = Containerd::new(L2_BASE)
            .and_then(Containerd::bin_dir_from_env)
            .expect("containerd settings");
        let job = Job::new(script(&ctrd, &body))
            .file(bin.join("husk-image"), "husk-image")
            .file(
                bin.join("containerd-shim-husk-v2"),
                "containerd-shim-husk-v2",
            )
            .file(&a.vmm, "husk-vmm")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .host_root(true)
            .module("veth")
            .module("tun")
            .module("sch_ingress")
            .module("cls_u32")
            .module("act_mirred")
            // Each part took about 3.5 min per attempt in the 2026-12-02 rehearsals.
            .timeout(Duration::from_secs(900));
        let out = testhost::run(&job).expect("test host run");
        eprintln!(
            "ctr_husk {name}: {}; total {:?}",
            out.kind.describe(),
            out.total
        );
        eprintln!("{}", out.stdout);
        assert!(out.success(), "job failed:\n{}", out.stdout);
        out
    }))
}

#[test]
fn ctr_run_prints_the_guest_kernel_release() {
    let Some(out) = run("ctr_run_prints_the_guest_kernel_release", Part::Features) else {
        return;
    };
    let body = step(out, "uname", 0);
    let release = common::Artifacts::locate().kernel_release;
    assert_eq!(body.trim(), release, "not the guest's kernel: {body}");
}

#[test]
fn ctr_run_exits_with_the_container_status() {
    let Some(out) = run("ctr_run_exits_with_the_container_status", Part::Features) else {
        return;
    };
    step(out, "exit3", 3);
}

#[test]
fn ten_mib_of_output_all_arrive() {
    let Some(out) = run("ten_mib_of_output_all_arrive", Part::Features) else {
        return;
    };
    // Exit 0 is ctr's own status (the output went to a file, not through a pipe).
    let body = step(out, "big", 0);
    assert_eq!(body.trim(), "10485760", "{body}");
}

/// The numbers of a `NAME n m ...` line of `body`.
fn numbers(body: &str, name: &str) -> Vec<u64> {
    common::line_value(body, &format!("{name} "))
        .split_whitespace()
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{name}: {n:?} is no number:\n{body}"))
        })
        .collect()
}

/// The STATUS column of `ctr task ls` lines for `id` in `body`, in order.
fn task_states<'a>(body: &'a str, id: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| l.split_whitespace().next() == Some(id))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect()
}

#[test]
fn exec_ps_metrics_pause_resume_and_term_on_a_detached_container() {
    let Some(out) = run(
        "exec_ps_metrics_pause_resume_and_term_on_a_detached_container",
        Part::Features,
    ) else {
        return;
    };
    step(out, "detached", 0);
    let exec = step(out, "exec", 4);
    assert!(exec.contains("exec-ok"), "{exec}");
    // `sh` and its lasting `sleep` (and the loop's `sleep` at times), by guest pid.
    let ps = step(out, "ps", 0);
    let pids: Vec<u32> = ps
        .lines()
        .skip_while(|l| !l.starts_with("PID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|&pid| pid > 0)
        .collect();
    assert!(pids.len() >= 2, "not sh and sleep:\n{ps}");
    let metrics = step(out, "metrics", 0);
    let usage: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory.usage in:\n{metrics}"));
    assert!(usage > 0, "memory.usage is 0:\n{metrics}");
    let pause = step(out, "pause", 0);
    assert_eq!(
        task_states(pause, "long"),
        ["PAUSED", "RUNNING"],
        "the states after pause and after resume:\n{pause}"
    );
    let frozen = numbers(pause, "paused_counter");
    assert!(frozen[0] > 0, "the counter never ran:\n{pause}");
    assert_eq!(
        frozen[0], frozen[1],
        "the counter ran while PAUSED:\n{pause}"
    );
    let resumed = numbers(pause, "resumed_counter");
    assert!(
        resumed[0] > frozen[1],
        "the counter stayed after resume:\n{pause}"
    );
    step(out, "term", 0);
    step(out, "stopped", 0);
    step(out, "rmlong", 0);
}

#[test]
fn checkpoint_is_refused_and_the_task_keeps_running() {
    let Some(out) = run(
        "checkpoint_is_refused_and_the_task_keeps_running",
        Part::Features,
    ) else {
        return;
    };
    let body = step(out, "checkpoint", 0);
    assert_ne!(
        numbers(body, "checkpoint_exit"),
        [0],
        "checkpoint succeeded:\n{body}"
    );
    // ctr 1.6 and 1.7 print the code after the message ("...: not implemented");
    // 2.x's ctr prints the message alone. Nothing else may follow it.
    const REFUSAL: &str = "ctr: checkpoint is not supported by husk";
    let line = body.lines().find(|l| l.starts_with(REFUSAL));
    assert!(
        matches!(
            line.map(|l| &l[REFUSAL.len()..]),
            Some("" | ": not implemented")
        ),
        "not a clear UNIMPLEMENTED error:\n{body}"
    );
    // ctr pauses around a checkpoint and resumes after it, failed or not.
    assert_eq!(task_states(body, "long"), ["RUNNING"], "{body}");
    let counter = numbers(body, "counter_after");
    assert!(counter[1] > counter[0], "the task stopped running:\n{body}");
}

#[test]
fn update_changes_the_memory_limit_in_the_guest() {
    let Some(out) = run(
        "update_changes_the_memory_limit_in_the_guest",
        Part::Features,
    ) else {
        return;
    };
    let body = step(out, "update", 0);
    assert_eq!(
        common::line_value(body, "hog_before "),
        "0",
        "96 MiB did not fit before the update:\n{body}"
    );
    assert!(body.contains("grpc-status: 0"), "{body}");
    assert_eq!(
        common::line_value(body, "memory.usage_limit "),
        "67108864",
        "ctr task metrics shows another limit:\n{body}"
    );
    assert_eq!(
        common::line_value(body, "hog_after "),
        "137",
        "96 MiB still fit under the new 64 MiB limit:\n{body}"
    );
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() {
    let Some(out) = run(
        "a_container_over_its_memory_limit_is_oom_killed",
        Part::Features,
    ) else {
        return;
    };
    // ctr run exits with the task's status: SIGKILL from the OOM killer. The TaskOOM
    // event is checked with the other events.
    step(out, "oom", 137);
}

/// `ctr events` lines as (topic, event).
fn events(text: &str) -> Vec<(&str, serde_json::Value)> {
    text.lines()
        .filter_map(|l| {
            let topic = l.split_whitespace().find(|w| w.starts_with("/tasks/"))?;
            let event = serde_json::from_str(&l[l.find('{')?..]).ok()?;
            Some((topic, event))
        })
        .collect()
}

/// Whether `event` has `want`'s fields. containerd's JSON leaves zeros and empty
/// strings out, so a missing field matches them.
fn has_fields(event: &serde_json::Value, want: &serde_json::Value) -> bool {
    let Some(want) = want.as_object() else {
        return false;
    };
    want.iter().all(|(k, v)| match event.get(k) {
        Some(got) => got == v,
        None => v == 0 || v == "",
    })
}

#[test]
fn containerd_gets_every_task_event() {
    use serde_json::json;
    let Some(out) = run("containerd_gets_every_task_event", Part::Features) else {
        return;
    };
    step(out, "evstart", 0);
    let text = step(out, "events", 0);
    let got = events(text);
    let want = [
        ("/tasks/create", json!({"container_id": "t2"})),
        ("/tasks/start", json!({"container_id": "t2"})),
        (
            "/tasks/exit",
            json!({"container_id": "t2", "id": "t2", "exit_status": 3}),
        ),
        (
            "/tasks/delete",
            json!({"container_id": "t2", "exit_status": 3}),
        ),
        (
            "/tasks/exec-added",
            json!({"container_id": "long", "exec_id": "e1"}),
        ),
        (
            "/tasks/exec-started",
            json!({"container_id": "long", "exec_id": "e1"}),
        ),
        (
            "/tasks/exit",
            json!({"container_id": "long", "id": "e1", "exit_status": 4}),
        ),
        ("/tasks/oom", json!({"container_id": "long"})),
        (
            "/tasks/exit",
            json!({"container_id": "long", "id": "hog1", "exit_status": 137}),
        ),
        ("/tasks/paused", json!({"container_id": "long"})),
        ("/tasks/resumed", json!({"container_id": "long"})),
        (
            "/tasks/exit",
            json!({"container_id": "long", "id": "long", "exit_status": 0}),
        ),
        ("/tasks/delete", json!({"container_id": "long"})),
        ("/tasks/oom", json!({"container_id": "oom1"})),
        (
            "/tasks/exit",
            json!({"container_id": "oom1", "id": "oom1", "exit_status": 137}),
        ),
        ("/tasks/delete", json!({"container_id": "oom1"})),
    ];
    for (topic, fields) in &want {
        assert!(
            got.iter().any(|(t, e)| t == topic && has_fields(e, fields)),
            "containerd got no {topic} {fields}; it got:\n{text}"
        );
    }
    // TaskExit carries the time of the exit.
    for (_, e) in got.iter().filter(|(t, _)| *t == "/tasks/exit") {
        let at = &e["exited_at"];
        assert!(
            !at.is_null() && !at.to_string().contains("0001-01-01"),
            "an exit without its time: {e}"
        );
    }
    // The /tasks/start pid is the one the exit reports.
    let pid_of = |topic: &str| {
        got.iter()
            .find(|(t, e)| *t == topic && e["container_id"] == "t2" && e["id"] != "e1")
            .map(|(_, e)| e["pid"].clone())
    };
    assert_eq!(pid_of("/tasks/start"), pid_of("/tasks/exit"), "{text}");
}

#[test]
fn a_killed_vmm_ends_the_task_within_5_seconds() {
    let Some(out) = run(
        "a_killed_vmm_ends_the_task_within_5_seconds",
        Part::Features,
    ) else {
        return;
    };
    step(out, "victim", 0);
    let body = step(out, "killvmm", 0);
    let ms: u64 = common::line_value(body, "exit_seen_ms ")
        .parse()
        .expect("ms");
    assert!(ms <= 5000, "containerd saw the exit after {ms} ms");
    step(out, "rmvictim", 0);
    // Right after the deletes: its shim, VMM, run directory and mounts are gone.
    let left = step(out, "victimleft", 0);
    for what in ["shims", "vmms", "dirs", "mounts"] {
        assert_eq!(
            common::line_value(left, &format!("{what} ")),
            "0",
            "the victim's {what} remain:\n{left}"
        );
    }
}

#[test]
fn a_dead_vmm_leaves_its_log_tails_in_containerds_log() {
    let Some(out) = run(
        "a_dead_vmm_leaves_its_log_tails_in_containerds_log",
        Part::Features,
    ) else {
        return;
    };
    // The run directory (console.log, agent.log, vmm.log) is gone with the VM; what
    // stays is the shim's error with their tails.
    let body = step(out, "vmmdeath", 0);
    assert!(
        body.contains("husk-vmm exited"),
        "no error for the dead VMM in containerd's log:\n{body}"
    );
    for marker in [
        "--- husk-vmm log (tail) ---",
        "--- guest console (tail) ---",
        "--- guest agent log (tail) ---",
    ] {
        let after = body
            .split_once(marker)
            .map(|(_, rest)| rest.trim_start_matches('\n'))
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{body}"));
        let first = after.lines().next().unwrap_or_default();
        assert!(
            !first.is_empty() && !first.starts_with("---") && !first.starts_with("time="),
            "{marker} is empty:\n{body}"
        );
    }
}

#[test]
fn debug_level_puts_guest_lines_in_containerds_log() {
    let Some(out) = run(
        "debug_level_puts_guest_lines_in_containerds_log",
        Part::Features,
    ) else {
        return;
    };
    let body = step(out, "shimlog", 0);
    for what in ["agent_lines", "console_lines"] {
        let n: u64 = common::line_value(body, &format!("{what} "))
            .parse()
            .expect("a count");
        assert!(n > 0, "no {what} in containerd's log:\n{body}");
    }
}

#[test]
fn a_killed_shim_is_cleaned_up_by_delete() {
    let Some(out) = run("a_killed_shim_is_cleaned_up_by_delete", Part::Features) else {
        return;
    };
    step(out, "shimvictim", 0);
    step(out, "killshim", 0);
    let left = step(out, "shimleft", 0);
    assert_eq!(
        left.trim(),
        "0",
        "its VMM, mounts or run directory remain:\n{left}"
    );
}

#[test]
fn ctr_run_with_a_tty() {
    let Some(out) = run("ctr_run_with_a_tty", Part::Features) else {
        return;
    };
    let body = step(out, "tty", 0);
    assert!(body.contains("/dev/pts/0"), "{body}");
}

#[test]
fn stdin_reaches_the_container_and_closes() {
    let Some(out) = run("stdin_reaches_the_container_and_closes", Part::Features) else {
        return;
    };
    assert_eq!(step(out, "stdin", 0).trim(), "through-stdin");
}

#[test]
fn exec_with_a_tty() {
    let Some(out) = run("exec_with_a_tty", Part::Features) else {
        return;
    };
    step(out, "execdetached", 0);
    let body = step(out, "exectty", 0);
    assert!(body.contains("/dev/pts/"), "{body}");
    step(out, "killtl", 0);
}

#[test]
fn file_and_binary_log_uris() {
    let Some(out) = run("file_and_binary_log_uris", Part::Features) else {
        return;
    };
    step(out, "filelog", 0);
    assert_eq!(step(out, "filelogged", 0).trim(), "into-a-file");
    step(out, "binlog", 0);
    assert_eq!(step(out, "binlogged", 0).trim(), "into-a-logger");
}

#[test]
fn runtime_options_name_another_config() {
    let Some(out) = run("runtime_options_name_another_config", Part::Features) else {
        return;
    };
    let meminfo = step(out, "options", 0);
    let kib: u64 = meminfo
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{meminfo}"));
    assert!(
        kib < 200 * 1024,
        "the 200 MiB config was not used: {meminfo}"
    );
    let (bad, rc) = section(&out.stdout, "badconfig");
    assert_ne!(rc, 0, "a bad config was accepted:\n{bad}");
    assert!(
        bad.contains("vcpus"),
        "the error does not name the key:\n{bad}"
    );
}

#[test]
fn fifty_run_rm_cycles_leak_nothing() {
    let Some(out) = run("fifty_run_rm_cycles_leak_nothing", Part::Cycles) else {
        return;
    };
    let before = step(out, "before", 0).trim().to_owned();
    step(out, "cycles", 0);
    let after = step(out, "after", 0).trim().to_owned();
    assert_eq!(
        before, after,
        "containerd fds, shims, VMMs, mounts or run dirs leaked"
    );
    let left = step(out, "leftovers", 0);
    assert_eq!(
        left.trim(),
        "0",
        "containers, tasks, run dirs, mounts or VMMs left:\n{left}"
    );
    eprintln!(
        "{} cycles took {} ms; {after}",
        cycles(),
        common::line_value(&out.stdout, "cycles_ms ")
    );
}

#[test]
fn a_container_in_a_network_namespace_gets_its_interface() {
    let Some(out) = run(
        "a_container_in_a_network_namespace_gets_its_interface",
        Part::Features,
    ) else {
        return;
    };
    step(out, "netsetup", 0);
    let veth = step(out, "netmac", 0);
    let mut veth = veth.lines();
    let (mac, mtu) = (
        veth.next().unwrap_or_default(),
        veth.next().unwrap_or_default(),
    );
    assert_eq!(mtu, "1400");
    step(out, "netrun", 0);
    let guest = step(out, "netguest", 0);
    let mut lines = guest.lines();
    assert_eq!(
        lines.next(),
        Some(mac),
        "the guest NIC has not the veth's MAC:\n{guest}"
    );
    assert_eq!(lines.next(), Some(mtu), "nor its MTU:\n{guest}");
    // The header, the kernel's 10.77.0.0/24 and CNI's 10.78.0.0/16 via 10.77.0.1.
    assert_eq!(
        lines.next(),
        Some("3"),
        "routes in /proc/net/route:\n{guest}"
    );
    assert!(guest.contains("guest-to-host-ok"), "{guest}");
    assert_eq!(step(out, "nethost", 0).trim(), "served-from-the-guest");
    let tc = step(out, "nettc", 0);
    assert!(
        tc.starts_with("1\ntap-present"),
        "no mirred filter or tap:\n{tc}"
    );
    step(out, "netrm", 0);
    assert_eq!(
        step(out, "netleft", 0).trim(),
        "0\n0\n0",
        "ingress qdisc, tap or veth left behind"
    );
}

#[test]
fn host_networking_is_refused_with_a_clear_error() {
    let Some(out) = run(
        "host_networking_is_refused_with_a_clear_error",
        Part::Features,
    ) else {
        return;
    };
    let body = step(out, "hostnet", 1);
    assert!(body.contains("host's network"), "{body}");
}

#[test]
fn nothing_is_left_after_run_rm() {
    let Some(out) = run("nothing_is_left_after_run_rm", Part::Features) else {
        return;
    };
    let left = step(out, "leftovers", 0);
    assert_eq!(
        left.trim(),
        "0",
        "containers, tasks, run dirs, mounts or VMMs left:\n{left}"
    );
}
