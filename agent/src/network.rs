//! The guest's network: the loopback device, and the Pod's NIC configured
//! from what CNI gave the Pod (UpdateInterface, UpdateRoutes).
//!
//! Every container of the VM shares the guest's own network namespace, so
//! this is the Pod's network. The shim copies the CNI interface's MAC into
//! the virtio-net device; the agent finds the NIC by that MAC, renames it to
//! the CNI name, sets the MTU and addresses, brings it up, and installs the
//! routes. Requests come from the host and are validated before any change.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use husk_proto::pb;
use rtnetlink::packet_route::address::AddressScope;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Bounds on a request.
const MAX_ADDRESSES: usize = 16;
const MAX_ROUTES: usize = 64;
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;
/// Linux's `IFNAMSIZ` less the NUL.
const MAX_IFNAME: usize = 15;
/// Linux's main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// Why a network request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no network interface has MAC {0}")]
    NoSuchNic(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("rtnetlink: {0}")]
    Connect(#[source] std::io::Error),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// A validated interface request.
#[derive(Debug, PartialEq, Eq)]
struct NicPlan {
    name: String,
    mac: [u8; 6],
    addresses: Vec<(IpAddr, u8)>,
    mtu: u32,
}

/// A validated route.
#[derive(Debug, PartialEq, Eq)]
struct RoutePlan {
    /// `None` for the default route of `family_v6`'s family.
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    device: String,
    source: Option<IpAddr>,
    scope: u8,
    v6: bool,
}

fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::Invalid(format!("MAC {s:?}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), NetError> {
    let bad = || NetError::Invalid(format!("address {s:?} (want ADDRESS/PREFIX)"));
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((ip, prefix))
}

fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!("interface name {name:?}")))
    }
}

fn plan_nic(i: &pb::Interface) -> Result<NicPlan, NetError> {
    let name = if i.name.is_empty() { "eth0" } else { &i.name };
    check_name(name)?;
    let mac = parse_mac(&i.mac)?;
    if mac[0] & 1 != 0 {
        return Err(NetError::Invalid(format!("MAC {} is multicast", i.mac)));
    }
    if i.addresses.len() > MAX_ADDRESSES {
        return Err(NetError::Invalid(format!(
            "{} addresses",
            i.addresses.len()
        )));
    }
    let addresses = i
        .addresses
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<_, _>>()?;
    let mtu = if i.mtu == 0 { 1500 } else { i.mtu };
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(NetError::Invalid(format!("MTU {mtu}")));
    }
    Ok(NicPlan {
        name: name.to_owned(),
        mac,
        addresses,
        mtu,
    })
}

fn plan_route(r: &pb::Route) -> Result<RoutePlan, NetError> {
    let destination = match r.destination.as_str() {
        "" | "default" => None,
        d => Some(parse_cidr(d)?),
    };
    let ip = |s: &str, what: &str| -> Result<Option<IpAddr>, NetError> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| NetError::Invalid(format!("route {what} {s:?}")))
    };
    let gateway = ip(&r.gateway, "gateway")?;
    let source = ip(&r.source, "source")?;
    let scope =
        u8::try_from(r.scope).map_err(|_| NetError::Invalid(format!("route scope {}", r.scope)))?;
    let families: Vec<bool> = [destination.map(|d| d.0), gateway, source]
        .into_iter()
        .flatten()
        .map(|a| a.is_ipv6())
        .collect();
    let v6 = families.first().copied().unwrap_or(false);
    if families.iter().any(|f| *f != v6) {
        return Err(NetError::Invalid(format!(
            "route {r:?} mixes IPv4 and IPv6"
        )));
    }
    if destination.is_none() && gateway.is_none() {
        return Err(NetError::Invalid("a default route needs a gateway".into()));
    }
    if !r.device.is_empty() {
        check_name(&r.device)?;
    }
    Ok(RoutePlan {
        destination,
        gateway,
        device: r.device.clone(),
        source,
        scope,
        v6,
    })
}

fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    links(handle)
        .await?
        .iter()
        .find(|l| link_name(l) == Some(name))
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::Invalid(format!("no interface {name:?}")))
}

/// Brings `lo` up: containers reach each other over 127.0.0.1.
pub async fn loopback_up() -> Result<(), NetError> {
    let handle = connect()?;
    let lo = index_of(&handle, "lo").await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(netlink("setting lo up"))
}

/// UpdateInterface: see the module documentation. Returns the interface as
/// configured.
pub async fn update_interface(i: &pb::Interface) -> Result<pb::Interface, NetError> {
    let plan = plan_nic(i)?;
    let handle = connect()?;
    let nic = links(&handle)
        .await?
        .into_iter()
        .find(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == plan.mac[..]))
        })
        .ok_or_else(|| NetError::NoSuchNic(i.mac.clone()))?;
    let index = nic.header.index;
    // A rename needs the link down.
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(netlink("setting the NIC down"))?;
    let mut set = LinkUnspec::new_with_index(index).mtu(plan.mtu);
    if link_name(&nic) != Some(plan.name.as_str()) {
        set = set.name(plan.name.clone());
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(netlink(format!(
            "naming the NIC {} with MTU {}",
            plan.name, plan.mtu
        )))?;
    // Replace the addresses: remove the global ones there are, add the plan's.
    let existing: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    for a in existing {
        if a.header.scope == AddressScope::Universe {
            handle
                .address()
                .del(a)
                .execute()
                .await
                .map_err(netlink("removing an address"))?;
        }
    }
    for (ip, prefix) in &plan.addresses {
        handle
            .address()
            .add(index, *ip, *prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("adding {ip}/{prefix}")))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink("setting the NIC up"))?;
    Ok(pb::Interface {
        name: plan.name,
        mac: i.mac.to_ascii_lowercase(),
        addresses: plan
            .addresses
            .iter()
            .map(|(ip, p)| format!("{ip}/{p}"))
            .collect(),
        mtu: plan.mtu,
    })
}

/// UpdateRoutes: replaces the main table's non-kernel routes with `routes`,
/// link routes first so that gateways are reachable when their routes come.
pub async fn update_routes(routes: &[pb::Route]) -> Result<Vec<pb::Route>, NetError> {
    if routes.len() > MAX_ROUTES {
        return Err(NetError::Invalid(format!("{} routes", routes.len())));
    }
    let mut plans = routes
        .iter()
        .map(plan_route)
        .collect::<Result<Vec<_>, _>>()?;
    plans.sort_by_key(|p| p.gateway.is_some());
    let handle = connect()?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let old: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing routes"))?;
        for r in old {
            if r.header.table == RT_TABLE_MAIN && r.header.protocol != RouteProtocol::Kernel {
                handle
                    .route()
                    .del(r)
                    .execute()
                    .await
                    .map_err(netlink("removing a route"))?;
            }
        }
    }
    for (plan, asked) in plans.iter().zip(routes) {
        let message = route_message(&handle, plan).await?;
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("adding the route {asked:?}")))?;
    }
    Ok(routes.to_vec())
}

async fn route_message(handle: &Handle, p: &RoutePlan) -> Result<RouteMessage, NetError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    let (dest, prefix) = match p.destination {
        Some(d) => d,
        None if p.v6 => (IpAddr::from([0u16; 8]), 0),
        None => (IpAddr::from([0u8; 4]), 0),
    };
    b = b
        .destination_prefix(dest, prefix)
        .map_err(|e| NetError::Invalid(format!("route destination: {e}")))?;
    if let Some(gw) = p.gateway {
        b = b
            .gateway(gw)
            .map_err(|e| NetError::Invalid(format!("route gateway: {e}")))?;
    }
    if let Some(src) = p.source {
        b = b
            .pref_source(src)
            .map_err(|e| NetError::Invalid(format!("route source: {e}")))?;
    }
    if !p.device.is_empty() {
        b = b.output_interface(index_of(handle, &p.device).await?);
    }
    let scope = match p.scope {
        0 => RouteScope::Universe,
        s => RouteScope::from(s),
    };
    Ok(b.scope(scope).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: &str, addresses: &[&str], mtu: u32) -> pb::Interface {
        pb::Interface {
            name: name.into(),
            mac: mac.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            mtu,
        }
    }

    #[test]
    fn a_cni_interface_is_planned() {
        let p = plan_nic(&nic(
            "eth0",
            "0A:58:0a:f4:00:05",
            &["10.88.0.5/16", "fd00::5/64"],
            1450,
        ))
        .unwrap();
        assert_eq!(p.mac, [0x0a, 0x58, 0x0a, 0xf4, 0, 5]);
        assert_eq!(
            p.addresses,
            vec![
                ("10.88.0.5".parse().unwrap(), 16),
                ("fd00::5".parse().unwrap(), 64)
            ]
        );
        assert_eq!(p.mtu, 1450);
        assert_eq!(
            plan_nic(&nic("", "02:00:00:00:00:01", &[], 0))
                .unwrap()
                .name,
            "eth0"
        );
    }

    #[test]
    fn bad_interfaces_are_refused() {
        for bad in [
            nic("eth0", "02:00:00:00:00", &[], 1500),
            nic("eth0", "02:00:00:00:00:zz", &[], 1500),
            nic("eth0", "03:00:00:00:00:01", &[], 1500),
            nic("eth0", "02:00:00:00:00:01", &["10.0.0.1"], 1500),
            nic("eth0", "02:00:00:00:00:01", &["10.0.0.1/33"], 1500),
            nic("eth0", "02:00:00:00:00:01", &["fd00::1/129"], 1500),
            nic("eth0", "02:00:00:00:00:01", &[], 67),
            nic("eth0", "02:00:00:00:00:01", &[], 65536),
            nic("a/b", "02:00:00:00:00:01", &[], 1500),
            nic("sixteen-chars-xx", "02:00:00:00:00:01", &[], 1500),
            nic("..", "02:00:00:00:00:01", &[], 1500),
        ] {
            assert!(plan_nic(&bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("10.0.0.{i}/24")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(plan_nic(&nic("eth0", "02:00:00:00:00:01", &many, 1500)).is_err());
    }

    fn route(destination: &str, gateway: &str) -> pb::Route {
        pb::Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: "eth0".into(),
            source: String::new(),
            scope: 0,
        }
    }

    #[test]
    fn routes_are_planned_and_checked() {
        let d = plan_route(&route("default", "10.88.0.1")).unwrap();
        assert_eq!(d.destination, None);
        assert!(!d.v6);
        let d6 = plan_route(&route("", "fd00::1")).unwrap();
        assert!(d6.v6);
        let link = plan_route(&route("192.168.0.0/24", "")).unwrap();
        assert_eq!(link.destination, Some(("192.168.0.0".parse().unwrap(), 24)));
        assert!(
            plan_route(&route("default", "")).is_err(),
            "default needs a gateway"
        );
        assert!(
            plan_route(&route("10.0.0.0/8", "fd00::1")).is_err(),
            "mixed families"
        );
        assert!(plan_route(&route("10.0.0.0/8", "nonsense")).is_err());
        let mut scoped = route("10.0.0.0/8", "");
        scoped.scope = 256;
        assert!(plan_route(&scoped).is_err());
        let mut dev = route("10.0.0.0/8", "");
        dev.device = "bad/name".into();
        assert!(plan_route(&dev).is_err());
    }
}
