//! The CRI pod network for the tests: one CNI `bridge` network with host-local
//! IPAM, the setup kubelet's nodes commonly start from.
//!
//! ```json
//! {"cniVersion": "0.4.0", "name": "husk-pods", "plugins": [{
//!   "type": "bridge", "bridge": "husk-cni0", "isGateway": true, "ipMasq": false,
//!   "hairpinMode": true,
//!   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
//!            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "<base>/cni/ipam"}}]}
//! ```
//!
//! The plugins are Debian's `containernetworking-plugins` (`/usr/lib/cni`). CRI
//! adds the loopback network (the `loopback` plugin) to every pod itself. The
//! bridge gets the gateway address (`10.88.0.1`), so the machine reaches every
//! pod's address directly; there is no masquerading, so no iptables.

use serde_json::json;

use super::ContainerdError;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The file name of the configuration list in CRI's configuration directory.
pub const CONF_FILE: &str = "10-husk-pods.conflist";
/// The kernel modules the bridge network needs in the test host (Debian's
/// kernel builds both as modules): the bridge and the veth pairs.
pub const CNI_MODULES: &[&str] = &["bridge", "veth"];
/// The modules a VM runtime needs to wire a pod's veth to a tap device with tc
/// (Debian builds them as modules; `CONFIG_NET_SCHED` and `CONFIG_NET_CLS_ACT`
/// are built in): tun, the ingress qdisc, the u32 classifier, the mirred action.
pub const TAP_MODULES: &[&str] = &["tun", "sch_ingress", "cls_u32", "act_mirred"];

/// A CNI bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cni {
    /// The network's name (CRI reports it in the pod's CNI result).
    pub network: String,
    /// The bridge device, created by the plugin on first use.
    pub bridge: String,
    /// host-local's IPv4 range, e.g. `10.88.0.0/16`; the bridge gets the first address.
    pub subnet: String,
    /// The directory holding the plugins.
    pub bin_dir: String,
}

impl Default for Cni {
    fn default() -> Self {
        Self {
            network: "husk-pods".into(),
            bridge: "husk-cni0".into(),
            subnet: "10.88.0.0/16".into(),
            bin_dir: DEBIAN_CNI_BIN_DIR.into(),
        }
    }
}

impl Cni {
    /// The configuration list, with host-local's leases in `ipam_dir`.
    pub fn conflist(&self, ipam_dir: &str) -> String {
        let list = json!({
            "cniVersion": "0.4.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                // A pod may reach itself through its own pod address.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            }],
        });
        serde_json::to_string_pretty(&list).expect("a serde_json::Value always serializes")
    }

    /// Checks the names: a bridge name is a Linux interface name (at most 15
    /// bytes, no '/' or whitespace), the subnet is `a.b.c.d/n`, the directory is
    /// an absolute path, and nothing holds a quote or control character.
    pub(super) fn check(&self) -> Result<(), ContainerdError> {
        let bad = |s: &str| ContainerdError::Cni(s.to_string());
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'/'))
        };
        if !plain(&self.network) {
            return Err(bad(&self.network));
        }
        if !plain(&self.bridge) || self.bridge.len() > 15 {
            return Err(bad(&self.bridge));
        }
        let subnet_ok = self.subnet.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok()
                && bits.parse::<u8>().is_ok_and(|b| (8..=30).contains(&b))
        });
        if !subnet_ok {
            return Err(bad(&self.subnet));
        }
        super::checked_path(&self.bin_dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_conflist_is_a_bridge_with_host_local_ipam() {
        let list: Value =
            serde_json::from_str(&Cni::default().conflist("/tmp/b/cni/ipam")).unwrap();
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["name"], "husk-pods");
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        let bridge = &plugins[0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "husk-cni0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(ipam["dataDir"], "/tmp/b/cni/ipam");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
    }

    #[test]
    fn names_are_checked() {
        assert!(Cni::default().check().is_ok());
        let with = |f: fn(&mut Cni)| {
            let mut c = Cni::default();
            f(&mut c);
            c.check()
        };
        assert!(with(|c| c.bridge = "a-very-long-bridge-name".into()).is_err());
        assert!(with(|c| c.bridge = "br 0".into()).is_err());
        assert!(with(|c| c.bridge = String::new()).is_err());
        assert!(with(|c| c.network = "a\"b".into()).is_err());
        assert!(with(|c| c.subnet = "10.88.0.0".into()).is_err());
        assert!(with(|c| c.subnet = "10.88.0/16".into()).is_err());
        assert!(with(|c| c.subnet = "10.88.0.0/31".into()).is_err());
        assert!(with(|c| c.bin_dir = "usr/lib/cni".into()).is_err());
    }
}
