//! `husk-probe`: what one container measures and sees, printed as `key value` lines.
//!
//! The same static binary runs in a container of every runtime compared (runc, crun,
//! gVisor, husk), so differences come from the runtime and not from the tool:
//!
//! ```text
//! husk-probe cpu [ITERATIONS]      a compute loop: cpu_ms
//! husk-probe syscalls [N]          getpid_ns, open_close_ns, fork_exit_us
//! husk-probe io DIR [MIB]          sequential and random I/O and metadata operations in DIR
//! husk-probe isolation [--act]     what the container can see and do (see `isolation`)
//! husk-probe forkbomb N SECONDS    forks N children that sleep SECONDS (a bounded fork bomb)
//! husk-probe hog MIB               allocates and touches MIB MiB, then holds it 30 s
//! husk-probe serve PORT            answers `tcp` clients until killed
//! husk-probe tcp HOST PORT [MIB]   tcp_mib_s (one way, to the server), rtt_p50_us, rtt_p99_us
//! ```
//!
//! Nothing here harms the machine: `--act` writes `h` (help) to `/proc/sysrq-trigger`,
//! offers the kernel a module that is not one, and remounts `/` read-only and back.

use std::ffi::CString;
use std::fs;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: husk-probe cpu [ITERATIONS] | syscalls [N] | io DIR [MIB] | \
isolation [--act] | forkbomb N SECONDS | hog MIB | serve PORT | tcp HOST PORT [MIB]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["cpu"] => cpu(200_000_000),
        ["cpu", n] => number(n).and_then(cpu),
        ["syscalls"] => syscalls(200_000),
        ["syscalls", n] => number(n).and_then(syscalls),
        ["io", dir] => io_bench(Path::new(dir), 32),
        ["io", dir, mib] => number(mib).and_then(|m| io_bench(Path::new(dir), m)),
        ["isolation"] => isolation(false),
        ["isolation", "--act"] => isolation(true),
        ["forkbomb", n, secs] => number(n).and_then(|n| number(secs).and_then(|t| forkbomb(n, t))),
        ["hog", mib] => number(mib).and_then(hog),
        ["serve", port] => number(port).and_then(serve),
        ["tcp", host, port] => number(port).and_then(|p| tcp(host, p, 64)),
        ["tcp", host, port, mib] => {
            number(port).and_then(|p| number(mib).and_then(|m| tcp(host, p, m)))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn number(s: &str) -> io::Result<u64> {
    s.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?}: not a positive number"),
        )
    })
}

fn say(key: &str, value: impl std::fmt::Display) {
    println!("{key} {value}");
}

/// Nanoseconds per operation, one decimal.
fn per_op_ns(start: Instant, ops: u64) -> String {
    format!("{:.1}", start.elapsed().as_nanos() as f64 / ops as f64)
}

/// A pure compute loop (xorshift and a multiply): no memory traffic, no system calls.
fn cpu(iterations: u64) -> io::Result<()> {
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut acc: u64 = 0;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.wrapping_add(x.wrapping_mul(i | 1));
    }
    black_box(acc);
    say("cpu_iterations", iterations);
    say(
        "cpu_ms",
        format!("{:.1}", start.elapsed().as_secs_f64() * 1000.0),
    );
    Ok(())
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// The cheapest system call, a file open and close, and a fork whose child exits at once.
fn syscalls(n: u64) -> io::Result<()> {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    say("getpid_ns", per_op_ns(start, n));

    let path = CString::new("/etc/passwd").expect("no NUL");
    let opens = (n / 4).max(1);
    let start = Instant::now();
    for _ in 0..opens {
        // SAFETY: a valid C string and flags; the fd is closed at once.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(last_error());
        }
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
    }
    say("open_close_ns", per_op_ns(start, opens));

    let forks = (n / 2000).max(20);
    let start = Instant::now();
    for _ in 0..forks {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            -1 => return Err(last_error()),
            // SAFETY: see above.
            0 => unsafe { libc::_exit(0) },
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child with a valid status pointer.
                if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                    return Err(last_error());
                }
            }
        }
    }
    say(
        "fork_exit_us",
        format!("{:.1}", start.elapsed().as_secs_f64() * 1e6 / forks as f64),
    );
    Ok(())
}

/// A small deterministic generator for the random offsets.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 33) % n
    }
}

fn rate(amount: f64, start: Instant) -> String {
    format!("{:.1}", amount / start.elapsed().as_secs_f64())
}

/// Sequential write (with fsync) and read of `mib` MiB, random 4 KiB writes (then fsync)
/// and reads in that file, then creating, stat-ing and removing small files. Reads are
/// from the page cache where the runtime has one: a container cannot drop caches.
fn io_bench(dir: &Path, mib: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    const BLOCK: u64 = 4096;
    let work = dir.join(format!("husk-probe-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let result = io_bench_in(&work, mib, CHUNK, BLOCK);
    let cleanup = fs::remove_dir_all(&work);
    result.and(cleanup)
}

fn io_bench_in(work: &Path, mib: u64, chunk: usize, block: u64) -> io::Result<()> {
    let data = work.join("data");
    let buf: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut f = fs::File::create(&data)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    say("seq_write_mib_s", rate(mib as f64, start));

    let start = Instant::now();
    let total = drain(&mut fs::File::open(&data)?, chunk)?;
    say(
        "seq_read_mib_s",
        rate(total as f64 / (1 << 20) as f64, start),
    );

    let blocks = mib * (1 << 20) / block;
    let mut rng = Lcg(42);
    let f = fs::OpenOptions::new().read(true).write(true).open(&data)?;
    let page = vec![0x5au8; block as usize];
    let writes = 2048u64;
    let start = Instant::now();
    for _ in 0..writes {
        f.write_all_at(&page, rng.below(blocks) * block)?;
    }
    f.sync_all()?;
    say("rand_write_iops", rate(writes as f64, start));
    let mut page = vec![0u8; block as usize];
    let reads = 4096u64;
    let start = Instant::now();
    for _ in 0..reads {
        f.read_exact_at(&mut page, rng.below(blocks) * block)?;
    }
    say("rand_read_iops", rate(reads as f64, start));

    let files = 500u32;
    let meta = work.join("meta");
    fs::create_dir(&meta)?;
    let start = Instant::now();
    for i in 0..files {
        fs::write(meta.join(i.to_string()), b"small file\n")?;
    }
    for i in 0..files {
        black_box(fs::metadata(meta.join(i.to_string()))?);
    }
    for i in 0..files {
        fs::remove_file(meta.join(i.to_string()))?;
    }
    say("meta_ops_s", rate(f64::from(files) * 3.0, start));
    Ok(())
}

/// Reads `r` to its end in `chunk`-byte reads; the bytes read.
fn drain(r: &mut impl Read, chunk: usize) -> io::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// The symbolic name of an OS error, for the isolation table.
fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ENOEXEC) => "ENOEXEC",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EFAULT) => "EFAULT",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EIO) => "EIO",
        Some(n) => return format!("errno{n}"),
        None => return e.to_string().replace(' ', "_"),
    };
    name.to_owned()
}

fn outcome(r: io::Result<()>, ok: &str) -> String {
    match r {
        Ok(()) => ok.to_owned(),
        Err(e) => errno_name(&e),
    }
}

fn first_line(path: &str) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unreadable".to_owned())
}

/// What the container sees of the machine, and which privileged actions reach a kernel:
///
/// - `kernel_release`, `boot_id`, `hypervisor` (the `hypervisor` CPU flag): whose kernel;
/// - `processes`, `interfaces`, `mounts`, `dev_kvm`: what else is visible;
/// - `cap_eff`: the effective capabilities;
/// - `sysrq` (open for writing), `kmsg_read`, `init_module` (a module that is not one:
///   `ENOEXEC` means the kernel's loader looked at it, `EPERM` that it was refused);
/// - with `--act`: `sysrq_h` (writes `h`, which only logs the help text) and
///   `remount_root` (read-only, then back).
fn isolation(act: bool) -> io::Result<()> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(last_error());
    }
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    say("kernel_release", release.to_string_lossy());
    say("boot_id", first_line("/proc/sys/kernel/random/boot_id"));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hypervisor = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    say("hypervisor", if hypervisor { "yes" } else { "no" });
    let processes = fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();
    say("processes", processes);
    let mut interfaces: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    say("interfaces", interfaces.join(","));
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    say("mounts", mounts.lines().count());
    say(
        "dev_kvm",
        if Path::new("/dev/kvm").exists() {
            "yes"
        } else {
            "no"
        },
    );
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map_or("unknown", str::trim);
    say("cap_eff", cap_eff);

    let sysrq = fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger");
    say(
        "sysrq",
        match &sysrq {
            Ok(_) => "writable".to_owned(),
            Err(e) => errno_name(e),
        },
    );
    let kmsg = fs::File::open("/dev/kmsg").map(|_| ());
    say("kmsg_read", outcome(kmsg, "readable"));
    say("init_module", errno_name(&offer_bogus_module()));
    if act {
        let written = match sysrq {
            Ok(mut f) => outcome(f.write_all(b"h"), "written"),
            Err(e) => errno_name(&e),
        };
        say("sysrq_h", written);
        say(
            "remount_root",
            outcome(remount_root_readonly_and_back(), "ok"),
        );
    }
    Ok(())
}

/// init_module with 64 zero bytes: never a module. The error says how far it got.
fn offer_bogus_module() -> io::Error {
    let image = [0u8; 64];
    let params = CString::new("").expect("no NUL");
    // SAFETY: a valid buffer of the given length and a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    };
    if r == 0 {
        io::Error::other("loaded")
    } else {
        last_error()
    }
}

fn remount(flags: libc::c_ulong) -> io::Result<()> {
    let root = CString::new("/").expect("no NUL");
    // SAFETY: valid C strings; null source, type and data are allowed for MS_REMOUNT.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

fn remount_root_readonly_and_back() -> io::Result<()> {
    remount(libc::MS_REMOUNT | libc::MS_RDONLY)?;
    remount(libc::MS_REMOUNT)
}

/// The `tcp` protocol's first byte: what the connection is for.
const STREAM: u8 = b'S';
const PING: u8 = b'P';
/// A ping's size, both ways.
const PING_SIZE: usize = 64;
/// Pings per `tcp` run.
const PINGS: usize = 2000;

/// Serves `tcp` clients, one thread per connection: a `STREAM` connection is read to its
/// end and answered with the byte count (8 bytes, little-endian); a `PING` connection has
/// each 64-byte message echoed.
fn serve(port: u64) -> io::Result<()> {
    let port = u16::try_from(port)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    say("listening", port);
    for conn in listener.incoming() {
        // One client's failure (reset before accept, say) must not end the server.
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("husk-probe serve: accept: {e}");
                continue;
            }
        };
        std::thread::spawn(move || {
            if let Err(e) = serve_one(conn) {
                eprintln!("husk-probe serve: {e}");
            }
        });
    }
    Ok(())
}

fn serve_one(mut conn: std::net::TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut kind = [0u8; 1];
    conn.read_exact(&mut kind)?;
    match kind[0] {
        STREAM => {
            let total = drain(&mut conn, 1 << 16)?;
            conn.write_all(&total.to_le_bytes())
        }
        PING => {
            let mut msg = [0u8; PING_SIZE];
            loop {
                match conn.read_exact(&mut msg) {
                    Ok(()) => conn.write_all(&msg)?,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown request {other}"),
        )),
    }
}

/// Streams `mib` MiB to a `serve`r (throughput, counted once the server confirmed every
/// byte), then times request/response round trips of 64 bytes.
fn tcp(host: &str, port: u64, mib: u64) -> io::Result<()> {
    let port = u16::try_from(port)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))?;
    let mut conn = std::net::TcpStream::connect((host, port))?;
    conn.set_nodelay(true)?;
    let chunk = vec![0xa5u8; 1 << 16];
    let start = Instant::now();
    conn.write_all(&[STREAM])?;
    for _ in 0..mib * 16 {
        conn.write_all(&chunk)?;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)?;
    let elapsed = start.elapsed();
    let got = u64::from_le_bytes(count);
    if got != mib << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server counted {got} bytes of {}", mib << 20),
        ));
    }
    say("tcp_mib", mib);
    say(
        "tcp_mib_s",
        format!("{:.1}", mib as f64 / elapsed.as_secs_f64()),
    );

    let mut conn = std::net::TcpStream::connect((host, port))?;
    conn.set_nodelay(true)?;
    conn.write_all(&[PING])?;
    let mut msg = [0x3cu8; PING_SIZE];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        conn.write_all(&msg)?;
        conn.read_exact(&mut msg)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    say("rtt_p50_us", format!("{:.1}", at(0.5)));
    say("rtt_p99_us", format!("{:.1}", at(0.99)));
    Ok(())
}

/// Forks up to `n` children that each sleep `secs` seconds, as fast as it can, then
/// waits for them: a fork bomb with an end, so that it cannot take down a host that
/// runs it without a VM around it. Stops forking at the first failure (a pids limit).
fn forkbomb(n: u64, secs: u64) -> io::Result<()> {
    let start = Instant::now();
    let mut forked = 0u64;
    let mut refused = None;
    for _ in 0..n {
        // SAFETY: the child only sleeps and exits, both async-signal-safe.
        match unsafe { libc::fork() } {
            -1 => {
                refused = Some(last_error());
                break;
            }
            0 => {
                // SAFETY: see above.
                unsafe {
                    libc::sleep(secs as libc::c_uint);
                    libc::_exit(0)
                }
            }
            _ => forked += 1,
        }
    }
    say("forked", forked);
    say("fork_ms", start.elapsed().as_millis());
    if let Some(e) = refused {
        say("fork_refused", errno_name(&e));
    }
    let mut status = 0;
    // SAFETY: reaping our own children with a valid status pointer.
    while unsafe { libc::wait(&mut status) } > 0 {}
    Ok(())
}

/// Allocates `mib` MiB in 1 MiB pieces, writing every page, then holds them 30 s: a
/// memory hog that its cgroup's limit (or the OOM killer) has to stop.
fn hog(mib: u64) -> io::Result<()> {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        let mut piece = vec![0u8; 1 << 20];
        for page in piece.chunks_mut(4096) {
            page[0] = i as u8 | 1;
        }
        held.push(black_box(piece));
        if i % 64 == 63 {
            say("hog_mib", i + 1);
        }
    }
    say("hog_mib", mib);
    std::thread::sleep(std::time::Duration::from_secs(30));
    black_box(&held);
    Ok(())
}
