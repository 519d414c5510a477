//! The Pod's network on the host side: a tap in the Pod's network namespace,
//! wired to the CNI interface with tc, and handed to `husk-vmm`.
//!
//! CNI made a network namespace for the Pod and put one end of a veth pair in
//! it, with addresses and routes. A VM cannot live in a network namespace, so
//! [`attach`] enters it from a short-lived thread and:
//! 1. reads the CNI interface: its MAC, MTU, addresses and routes (what the
//!    agent will give the guest NIC);
//! 2. creates a tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), with the same MTU;
//! 3. adds an ingress qdisc to both and a match-all u32 filter with a mirred
//!    egress redirect each way, so every frame that arrives on the veth leaves
//!    through the tap (into the guest) and every frame from the guest leaves
//!    through the veth. The namespace's own IP stack never sees Pod traffic.
//!
//! The tap's file descriptor is the only reference that keeps it alive (it is
//! not persistent): the VMM inherits it, and the tap disappears when the VMM
//! and the shim have both closed it. [`detach`] removes the qdiscs (and with
//! them the filters) from the veth.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::TryStreamExt;
use husk_proto::pb;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec};

/// The tap's name inside the Pod's network namespace.
pub const TAP_NAME: &str = "tap0_husk";
/// The TC handle of an ingress qdisc's parent (`ffff:`).
const INGRESS_PARENT: u32 = 0xffff_0000;
/// `ETH_P_ALL`, in network byte order as the kernel keeps a filter's protocol
/// (`tc filter ... protocol all`; in host order it would be protocol 0x0300 and
/// match nothing).
const ETH_P_ALL: u16 = 0x0003u16.to_be();
/// Linux's main routing table.
const RT_TABLE_MAIN: u8 = 254;
/// Bounds on what is copied into the guest from the namespace.
const MAX_ADDRESSES: usize = 16;
const MAX_ROUTES: usize = 64;

/// The Pod's network as the guest must see it, and the tap that carries it.
#[derive(Debug)]
pub struct PodNetwork {
    /// The network namespace CNI made.
    pub netns: PathBuf,
    /// The tap, for `husk-vmm --net-tap-fd`.
    pub tap: OwnedFd,
    /// The CNI interface's index in the namespace.
    pub veth_index: u32,
    /// The guest NIC: the CNI interface's name, MAC, addresses and MTU.
    pub interface: pb::Interface,
    /// The routes through that interface that CNI (not the kernel) added.
    pub routes: Vec<pb::Route>,
}

/// Wires the Pod's network namespace at `netns` to a new tap (see the module
/// documentation). Undoes what it did if a step fails.
pub fn attach(netns: &Path) -> Result<PodNetwork> {
    let path = netns.to_owned();
    let (tap, veth_index, interface, routes) = in_netns(netns, move || {
        let tap = create_tap(TAP_NAME).context("creating the tap")?;
        let rt = runtime()?;
        let wired = rt.block_on(async {
            let handle = connect()?;
            let veth = cni_interface(&handle).await?;
            let interface = describe(&handle, &veth).await?;
            let routes = routes_of(&handle, veth.header.index).await?;
            if let Err(e) = wire(&handle, veth.header.index, interface.mtu).await {
                let _ = unwire(&handle, veth.header.index).await;
                return Err(e);
            }
            Ok((veth.header.index, interface, routes))
        });
        let (veth_index, interface, routes) = wired?;
        Ok((tap, veth_index, interface, routes))
    })?;
    Ok(PodNetwork {
        netns: path,
        tap,
        veth_index,
        interface,
        routes,
    })
}

/// Removes the tc wiring from the CNI interface. The namespace (or the
/// interface) may be gone already, which is not an error.
pub fn detach(netns: &Path, veth_index: u32) -> Result<()> {
    if !netns.exists() {
        return Ok(());
    }
    in_netns(netns, move || {
        runtime()?.block_on(async {
            let handle = connect()?;
            unwire(&handle, veth_index).await
        })
    })
}

/// The network namespace path in an OCI spec: `Some(Some(path))` for a
/// namespace to join, `Some(None)` for a new (empty) one, `None` when the
/// spec has no network namespace at all (the host's network).
pub fn netns_of(spec: &serde_json::Value) -> Option<Option<PathBuf>> {
    let namespaces = spec["linux"]["namespaces"].as_array()?;
    let net = namespaces.iter().find(|n| n["type"] == "network")?;
    Some(
        net["path"]
            .as_str()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    )
}

/// Runs `f` on a thread that has joined the network namespace at `netns`;
/// the thread ends with `f`, so the namespace switch never leaks.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let name = netns.display().to_string();
    std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || {
            // SAFETY: setns(2) on a valid descriptor; it changes only this thread.
            if unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("entering the network namespace {name}"));
            }
            f()
        })
        .context("starting the netns thread")?
        .join()
        .map_err(|_| anyhow!("the netns thread panicked"))?
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("creating the netns thread's runtime")
}

/// A netlink connection in the current thread's namespace (the socket is
/// bound to it at creation).
fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The interface CNI made: the Ethernet device that is not our tap, `eth0`
/// if there are several.
async fn cni_interface(handle: &Handle) -> Result<LinkMessage> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing the namespace's links")?;
    let mut candidates: Vec<LinkMessage> = links
        .into_iter()
        .filter(|l| l.header.link_layer_type == LinkLayerType::Ether)
        .filter(|l| link_name(l).is_some_and(|n| n != TAP_NAME))
        .collect();
    if candidates.is_empty() {
        bail!("the Pod's network namespace has no Ethernet interface (did CNI run?)");
    }
    if candidates.len() > 1 {
        log::warn!(
            "the Pod's network namespace has {} interfaces; husk wires one",
            candidates.len()
        );
    }
    let pick = candidates
        .iter()
        .position(|l| link_name(l) == Some("eth0"))
        .unwrap_or(0);
    Ok(candidates.swap_remove(pick))
}

/// The guest NIC's settings, from the CNI interface.
async fn describe(handle: &Handle, veth: &LinkMessage) -> Result<pb::Interface> {
    let mut mac = None;
    let mut mtu = 1500;
    for a in &veth.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => mac = Some(format_mac(m)),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| anyhow!("the CNI interface has no MAC address"))?;
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(veth.header.index)
        .execute()
        .try_collect()
        .await
        .context("listing the CNI interface's addresses")?;
    let mut addresses = Vec::new();
    for m in messages {
        // The guest makes its own link-local address (from the same MAC).
        if m.header.scope != rtnetlink::packet_route::address::AddressScope::Universe {
            continue;
        }
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            addresses.push(format!("{ip}/{}", m.header.prefix_len));
        }
    }
    addresses.truncate(MAX_ADDRESSES);
    Ok(pb::Interface {
        name: link_name(veth).unwrap_or("eth0").to_owned(),
        mac,
        addresses,
        mtu,
    })
}

fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The main table's routes through `index` that CNI added: the kernel's own
/// (the prefix routes of the addresses) come back by themselves in the guest.
async fn routes_of(handle: &Handle, index: u32) -> Result<Vec<pb::Route>> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let found: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .context("listing the namespace's routes")?;
        for r in found {
            if let Some(route) = cni_route(&r, index) {
                routes.push(route);
            }
        }
    }
    routes.truncate(MAX_ROUTES);
    Ok(routes)
}

/// `r` as the agent's route, if it is one of CNI's through `index`.
fn cni_route(r: &RouteMessage, index: u32) -> Option<pb::Route> {
    if r.header.table != RT_TABLE_MAIN || r.header.protocol == RouteProtocol::Kernel {
        return None;
    }
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    if oif != Some(index) {
        return None;
    }
    let mut route = pb::Route {
        destination: String::new(),
        gateway: String::new(),
        device: String::new(),
        source: String::new(),
        scope: u32::from(u8::from(r.header.scope)),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                if let Some(ip) = route_ip(d) {
                    route.destination = format!("{ip}/{}", r.header.destination_prefix_length);
                }
            }
            RouteAttribute::Gateway(g) => {
                if let Some(ip) = route_ip(g) {
                    route.gateway = ip.to_string();
                }
            }
            RouteAttribute::PrefSource(s) => {
                if let Some(ip) = route_ip(s) {
                    route.source = ip.to_string();
                }
            }
            _ => {}
        }
    }
    // IPv6's multicast and link-local routes belong to the kernel too.
    if route.destination.starts_with("ff00::") || route.destination.starts_with("fe80::") {
        return None;
    }
    if route.destination.is_empty() {
        route.destination = "default".into();
    }
    if r.header.scope == RouteScope::Universe {
        route.scope = 0;
    }
    Some(route)
}

/// Sets the tap up with `mtu` and redirects both ways between it and the veth.
async fn wire(handle: &Handle, veth: u32, mtu: u32) -> Result<()> {
    let tap = link_index(handle, TAP_NAME).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap).mtu(mtu).up().build())
        .execute()
        .await
        .context("setting the tap up")?;
    for (from, to) in [(veth, tap), (tap, veth)] {
        let from_i32 = i32::try_from(from).context("interface index")?;
        handle
            .qdisc()
            .replace(from_i32)
            .ingress()
            .execute()
            .await
            .with_context(|| format!("adding an ingress qdisc to interface {from}"))?;
        handle
            .traffic_filter(from_i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ETH_P_ALL)
            .redirect(to)
            .context("building the redirect filter")?
            .execute()
            .await
            .with_context(|| format!("redirecting interface {from} to {to}"))?;
    }
    Ok(())
}

/// Deletes the veth's ingress qdisc (the filters go with it).
async fn unwire(handle: &Handle, veth: u32) -> Result<()> {
    let index = i32::try_from(veth).context("interface index")?;
    let mut del = handle.qdisc().del(index);
    let m = del.message_mut();
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = TcHandle::from(INGRESS_PARENT);
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    match del.execute().await {
        Ok(()) => Ok(()),
        // Already gone: ENOENT/EINVAL/ENODEV from the kernel.
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(
                e.raw_code().abs(),
                libc::ENOENT | libc::EINVAL | libc::ENODEV
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("removing the ingress qdisc"),
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("looking up {name}"))?
        .ok_or_else(|| anyhow!("no interface {name}"))?;
    Ok(link.header.index)
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a tap named `name` in the current thread's network namespace.
fn create_tap(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    if name.len() >= libc::IFNAMSIZ {
        bail!("tap name {name:?} is too long");
    }
    // SAFETY: open(2) on a constant NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is (same size and layout).
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(tap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteHeader;
    use serde_json::json;

    #[test]
    fn the_network_namespace_is_read_from_the_spec() {
        let join = json!({"linux": {"namespaces": [{"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}]}});
        assert_eq!(
            netns_of(&join),
            Some(Some(PathBuf::from("/var/run/netns/cni-1")))
        );
        let new = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(netns_of(&new), Some(None));
        let host = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(netns_of(&host), None);
        assert_eq!(netns_of(&json!({})), None);
    }

    fn route(attrs: Vec<RouteAttribute>, protocol: RouteProtocol, prefix: u8) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = protocol;
        r.header.destination_prefix_length = prefix;
        r.attributes = attrs;
        r
    }

    #[test]
    fn only_cni_routes_through_the_interface_are_kept() {
        let gw = RouteAttribute::Gateway(RouteAddress::Inet("10.88.0.1".parse().unwrap()));
        let default = route(
            vec![RouteAttribute::Oif(2), gw.clone()],
            RouteProtocol::Boot,
            0,
        );
        let got = cni_route(&default, 2).unwrap();
        assert_eq!(got.destination, "default");
        assert_eq!(got.gateway, "10.88.0.1");
        assert_eq!(got.scope, 0);
        // Another interface's, and the kernel's prefix route, are not copied.
        assert!(cni_route(&default, 3).is_none());
        let kernel = route(
            vec![
                RouteAttribute::Oif(2),
                RouteAttribute::Destination(RouteAddress::Inet("10.88.0.0".parse().unwrap())),
            ],
            RouteProtocol::Kernel,
            16,
        );
        assert!(cni_route(&kernel, 2).is_none());
        let static_net = route(
            vec![
                RouteAttribute::Oif(2),
                RouteAttribute::Destination(RouteAddress::Inet("192.168.7.0".parse().unwrap())),
                gw,
            ],
            RouteProtocol::Static,
            24,
        );
        assert_eq!(
            cni_route(&static_net, 2).unwrap().destination,
            "192.168.7.0/24"
        );
    }

    #[test]
    fn macs_are_formatted_like_ip_link() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x01]),
            "0a:58:0a:f4:00:01"
        );
    }
}
