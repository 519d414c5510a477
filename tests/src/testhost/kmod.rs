//! Kernel modules for the test host: reads `modules.dep` and puts the modules a
//! job needs, with their dependencies, in an order `insmod` can load them.

use std::collections::HashMap;

/// `modules.dep` of one kernel: module name -> (path, dependency paths).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    by_name: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

impl ModuleDeps {
    /// Parses lines like
    /// `kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko`.
    pub fn parse(text: &str) -> Self {
        let mut md = Self::default();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim().to_string();
            md.by_name.insert(module_name(&path), path.clone());
            md.deps
                .insert(path, deps.split_whitespace().map(str::to_string).collect());
        }
        md
    }

    /// The paths (relative to `/lib/modules/<release>`) of `names` and everything
    /// they depend on, dependencies first, each once.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        for name in names {
            let path = self
                .by_name
                .get(&normalize(name))
                .ok_or_else(|| format!("kernel module {name} not in modules.dep"))?;
            self.visit(path, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(&self, path: &str, order: &mut Vec<String>, depth: usize) -> Result<(), String> {
        if order.iter().any(|p| p == path) {
            return Ok(());
        }
        if depth > 64 {
            return Err(format!("module dependency cycle at {path}"));
        }
        let deps = self
            .deps
            .get(path)
            .ok_or_else(|| format!("kernel module {path} not in modules.dep"))?;
        for dep in deps {
            self.visit(dep, order, depth + 1)?;
        }
        order.push(path.to_string());
        Ok(())
    }
}

/// "kernel/arch/x86/kvm/kvm-amd.ko.xz" -> "kvm_amd"
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// Module names treat '-' and '_' alike.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
";

    #[test]
    fn kvm_amd_loads_in_the_documented_order() {
        let md = ModuleDeps::parse(DEP);
        let order = md.load_order(&["kvm-amd"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        // ccp has no dependency of its own and may come first; the rest is fixed.
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert_eq!(names.len(), 4);
        assert!(pos("irqbypass") < pos("kvm"));
        assert!(pos("kvm") < pos("kvm_amd"));
        assert!(pos("ccp") < pos("kvm_amd"));
    }

    #[test]
    fn shared_dependencies_load_once() {
        let md = ModuleDeps::parse(DEP);
        let order = md.load_order(&["kvm_amd", "9p", "kvm", "fscache"]).unwrap();
        assert_eq!(order.len(), 8);
        let pos = |p: &str| order.iter().position(|x| x.ends_with(p)).unwrap();
        assert!(pos("/netfs.ko") < pos("/fscache.ko"));
        assert!(pos("/fscache.ko") < pos("/9p.ko"));
        assert!(pos("/9pnet.ko") < pos("/9p.ko"));
    }

    #[test]
    fn unknown_module_is_an_error() {
        let md = ModuleDeps::parse(DEP);
        assert!(md.load_order(&["nope"]).unwrap_err().contains("nope"));
    }

    #[test]
    fn compressed_names() {
        assert_eq!(module_name("kernel/x/kvm-amd.ko.xz"), "kvm_amd");
        assert_eq!(module_name("kernel/x/9pnet_virtio.ko"), "9pnet_virtio");
    }
}
