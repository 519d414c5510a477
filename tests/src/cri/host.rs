//! What the machine shows about pods, read from `/proc` and `/sys`: processes
//! and their proportional memory (PSS), mounts, network namespace files and
//! veth devices. The runtime-specific part (which processes make up a pod) is
//! [`pod_processes`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// One process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/<pid>/comm`.
    pub comm: String,
    /// `/proc/<pid>/cmdline`, split at NULs.
    pub cmdline: Vec<String>,
}

impl Process {
    /// The command line joined with spaces.
    pub fn command(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The file name of `argv[0]`.
    pub fn program(&self) -> &str {
        self.cmdline
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or(&self.comm)
    }
}

/// The processes now alive (zombies included; kernel threads, which have no
/// command line, left out).
pub fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Process> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_process)
        .filter(|p| !p.cmdline.is_empty())
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

fn read_process(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid = parse_stat_ppid(&stat)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()?
        .trim_end()
        .to_string();
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(Process {
        pid,
        ppid,
        comm,
        cmdline,
    })
}

/// The parent pid from a `/proc/<pid>/stat` line; the command name in
/// parentheses may hold spaces and parentheses, so parse after the last ')'.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and all its descendants among `procs`.
pub fn tree(procs: &[Process], root: u32) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if out.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten());
        }
    }
    out
}

/// Whether `p` is a containerd shim v2 (`containerd-shim-<runtime>-v2`).
pub fn is_shim(p: &Process) -> bool {
    p.program().starts_with("containerd-shim")
}

/// The shim serving the sandbox `sandbox_id`: containerd starts the sandbox's
/// shim with `-id <sandbox id>`, and the pod's other containers join it.
pub fn shim_of<'a>(procs: &'a [Process], sandbox_id: &str) -> Option<&'a Process> {
    procs.iter().find(|p| {
        is_shim(p)
            && p.cmdline
                .windows(2)
                .any(|w| w[0] == "-id" && w[1] == sandbox_id)
    })
}

/// The name the runsc adapter gives its watcher shells (`sh -c SCRIPT NAME ...`).
pub const RUNSC_WATCHER: &str = "runsc-for-runc-shim-watcher";

/// The processes that make up the pod `sandbox_id` under `handler`, for memory
/// accounting and leak checks. Every runtime has its shim and what the shim
/// started; a VM runtime may add processes that are not the shim's children.
pub fn pod_processes(handler: &str, procs: &[Process], sandbox_id: &str) -> BTreeSet<u32> {
    let mut pids = match shim_of(procs, sandbox_id) {
        Some(shim) => tree(procs, shim.pid),
        None => BTreeSet::new(),
    };
    match handler {
        // runc (and crun and runsc under runc's shim): the shim, the pause
        // process and the containers' processes, all the shim's children (it is
        // their subreaper).
        "runc" | "crun" => {}
        // runsc: less the watchers of `tests/containerd/runsc-for-runc-shim`,
        // which stand in for what gVisor's own shim does in-process.
        "runsc" => {
            for w in procs
                .iter()
                .filter(|p| p.cmdline.iter().any(|a| a == RUNSC_WATCHER))
            {
                for pid in tree(procs, w.pid) {
                    pids.remove(&pid);
                }
            }
        }
        // husk: the shim and the pod's husk-vmm, whose command line names the
        // sandbox's run directory (/run/husk/<sandbox id>/), whoever its parent is.
        "husk" => {
            let run_dir = format!("/run/husk/{sandbox_id}/");
            for p in procs.iter().filter(|p| p.command().contains(&run_dir)) {
                pids.extend(tree(procs, p.pid));
            }
        }
        _ => {}
    }
    pids
}

/// Whether the pids CRI reports (the sandbox's and containers' `info.pid`) are
/// host pids. husk's are the guest's: on the host they name unrelated processes.
pub fn cri_pids_are_host_pids(handler: &str) -> bool {
    handler != "husk"
}

/// The process names a leak check looks for after every pod is gone, besides
/// the shims: the runtime's own helpers.
pub fn runtime_programs(handler: &str) -> &'static [&'static str] {
    match handler {
        "runc" => &["runc"],
        "crun" => &["crun"],
        "runsc" => &["runsc", "runsc-gofer", "runsc-sandbox"],
        "husk" => &["husk-vmm"],
        _ => &[],
    }
}

/// The runtime's own run directory, where it keeps a directory per sandbox
/// (named by the sandbox id) and may mount things: none for runc (containerd's
/// state directory, under its base, holds runc's).
pub fn runtime_run_dir(handler: &str) -> Option<&'static Path> {
    match handler {
        "husk" => Some(Path::new("/run/husk")),
        _ => None,
    }
}

/// One network interface as `ip -o -d link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// A tap device (`tun type tap`; a VM runtime's NIC backend).
    pub tap: bool,
}

/// The interfaces of this network namespace (`netns` `None`) or of the named
/// one in `/var/run/netns` (`ip -n <name>`); empty if `ip` fails.
pub fn links(netns: Option<&str>) -> Vec<Link> {
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    match cmd.args(["-o", "-d", "link", "show"]).output() {
        Ok(out) if out.status.success() => parse_links(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

/// `ip -o -d link` lines: `<index>: <name>[@<peer>]: <flags> ... tun type tap ...`.
fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            let name = name.split('@').next().unwrap_or(name).to_string();
            let tap = l.contains("tun type tap");
            Some(Link { name, tap })
        })
        .collect()
}

/// Every tap device on this machine's network and in the network namespaces
/// of `/var/run/netns`, as `<netns or "host">/<name>`.
pub fn taps(netns_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = links(None)
        .into_iter()
        .filter(|l| l.tap)
        .map(|l| format!("host/{}", l.name))
        .collect();
    for ns in dir_entries(netns_dir) {
        out.extend(
            links(Some(&ns))
                .into_iter()
                .filter(|l| l.tap)
                .map(|l| format!("{ns}/{}", l.name)),
        );
    }
    out
}

/// The proportional set size of `pid` in KiB (`/proc/<pid>/smaps_rollup`);
/// `None` when the process is gone or has no memory map (a zombie).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss(&text)
}

fn parse_pss(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|l| {
        let v = l.strip_prefix("Pss:")?;
        v.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

/// The mount points strictly under `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    mount_points(&text)
        .into_iter()
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// The mount points (field 5) of a mountinfo text, octal escapes decoded.
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The network interfaces of this network namespace.
pub fn interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The host ends of veth pairs: the ports of `bridge`, and any other
/// interface named `veth*` (the CNI bridge plugin's names).
pub fn veths(bridge: &str) -> Vec<String> {
    let mut set: BTreeSet<String> = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    set.extend(interfaces().into_iter().filter(|i| i.starts_with("veth")));
    set.into_iter().collect()
}

/// The files in a directory (e.g. `/var/run/netns`); empty if it is missing.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Removes the cgroup directory `/sys/fs/cgroup<path>` (cgroup v2) if it is
/// there and empty, then its parents up to (not including) the root, while
/// they are empty: what kubelet does with a pod's cgroup once the pod is gone.
/// Containers' cgroups are the runtime's to remove.
pub fn remove_cgroup(path: &str) -> std::io::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dir = root.join(path.trim_start_matches('/'));
    while dir != root && dir.starts_with(root) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not empty (another pod's cgroup) or busy: leave it and its parents.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => return Ok(()),
            Err(e) => return Err(e),
        }
        if !dir.pop() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, cmd: &str) -> Process {
        Process {
            pid,
            ppid,
            comm: cmd
                .split(' ')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .into(),
            cmdline: cmd.split(' ').map(String::from).collect(),
        }
    }

    #[test]
    fn a_pod_is_its_shim_and_what_it_started() {
        let procs = vec![
            p(1, 0, "/sbin/init"),
            p(10, 1, "/usr/bin/containerd --config c"),
            p(
                20,
                1,
                "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id aaa -address /s",
            ),
            p(21, 20, "/bin/sh -c pause"),
            p(22, 21, "sleep 2147483647"),
            p(23, 20, "httpd -f"),
            p(
                30,
                1,
                "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id bbb -address /s",
            ),
            p(31, 30, "/bin/sh"),
            p(40, 1, "/opt/husk-vmm --socket /run/husk/bbb/ctl.sock"),
        ];
        assert_eq!(shim_of(&procs, "aaa").map(|s| s.pid), Some(20));
        assert_eq!(shim_of(&procs, "aa").map(|s| s.pid), None);
        let runc: Vec<u32> = pod_processes("runc", &procs, "aaa").into_iter().collect();
        assert_eq!(runc, [20, 21, 22, 23]);
        let husk: Vec<u32> = pod_processes("husk", &procs, "bbb").into_iter().collect();
        assert_eq!(husk, [30, 31, 40]);
        let plain: Vec<u32> = pod_processes("runc", &procs, "bbb").into_iter().collect();
        assert_eq!(plain, [30, 31]);
        assert!(is_shim(&procs[2]) && !is_shim(&procs[1]));
    }

    #[test]
    fn a_runsc_pod_leaves_the_adapters_watchers_out() {
        let procs = vec![
            p(
                20,
                1,
                "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id ccc",
            ),
            p(21, 20, "runsc-gofer --root /r gofer"),
            p(22, 20, "runsc-sandbox --root /r boot"),
            p(
                23,
                20,
                "sh -c SCRIPT runsc-for-runc-shim-watcher /b/runsc /r app",
            ),
            p(
                24,
                23,
                "sh -c SCRIPT runsc-for-runc-shim-watcher /b/runsc /r app",
            ),
            p(25, 24, "/b/runsc --root /r wait app"),
            p(26, 20, "runsc-gofer --root /r gofer app"),
        ];
        let runsc: Vec<u32> = pod_processes("runsc", &procs, "ccc").into_iter().collect();
        assert_eq!(runsc, [20, 21, 22, 26]);
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(parse_stat_ppid("42 (a b) c)) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
        let rollup = "00400000-7ffd [rollup]\nRss:  1200 kB\nPss:  345 kB\nPss_Anon: 100 kB\n";
        assert_eq!(parse_pss(rollup), Some(345));
        let info = "36 35 98:0 / /mnt\\040space rw - ext3 /dev/root rw\n\
                    37 35 0:5 / /tmp/b/state/x/rootfs rw - overlay overlay rw\n";
        assert_eq!(mount_points(info), ["/mnt space", "/tmp/b/state/x/rootfs"]);
    }

    #[test]
    fn ip_link_lines_parse() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN \\    link/loopback 00:00:00:00:00:00\n\
                    2: eth0@if9: <BROADCAST,MULTICAST,UP> mtu 1500 \\    link/ether 0a:58 \\    veth addrgenmode eui64\n\
                    3: tap0_husk: <BROADCAST,MULTICAST,UP> mtu 1500 \\    link/ether 52:54 \\    tun type tap pi off vnet_hdr on persist off\n";
        let links = parse_links(text);
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "tap0_husk"]);
        let taps: Vec<bool> = links.iter().map(|l| l.tap).collect();
        assert_eq!(taps, [false, false, true]);
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id();
        let procs = processes();
        let mine = procs.iter().find(|p| p.pid == me).expect("this process");
        assert!(alive(me));
        assert!(pss_kib(me).unwrap_or(0) > 0 || !Path::new("/proc/self/smaps_rollup").exists());
        assert!(tree(&procs, mine.ppid).contains(&me));
        assert!(!interfaces().is_empty());
        assert!(mounts_under(Path::new("/")).len() > 1);
    }
}
