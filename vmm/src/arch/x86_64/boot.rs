//! Loading the kernel and initramfs, and the Linux 64-bit boot protocol's zero page.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    lowmem_end, ram_ranges, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START,
    ZERO_PAGE_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Boot protocol magic in `boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS": the setup header is present.
const HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// vmlinux is linked at 16 MiB and wants that alignment.
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `EI_CLASS` of a 64-bit ELF.
const ELF_CLASS_64: u8 = 2;
/// `e_machine` of x86_64.
const ELF_MACHINE_X86_64: u16 = 0x3e;
/// Guest page size, for initramfs alignment.
const PAGE_SIZE: u64 = 4096;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image cannot be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel file is not a 64-bit x86 ELF.
    #[error("kernel {path} is not an x86_64 ELF (vmlinux)")]
    NotX86_64Elf {
        /// Path given.
        path: String,
    },
    /// The kernel is not a loadable vmlinux ELF, or does not fit in guest memory.
    #[error("cannot load kernel (expected an x86_64 vmlinux ELF that fits in guest memory): {0}")]
    LoadKernel(linux_loader::loader::Error),
    /// The initramfs cannot be read.
    #[error("cannot read initramfs {path}: {source}")]
    ReadInitramfs {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the end of low memory.
    #[error("initramfs of {size} bytes does not fit in guest memory above the kernel")]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
    },
    /// The command line is too long for the x86 boot protocol.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Length including the NUL.
        len: usize,
        /// Limit including the NUL.
        max: usize,
    },
    /// Too many e820 entries for the zero page.
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    /// Writing to guest memory failed.
    #[error("writing {what} to guest memory: {source}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// 64-bit entry point (physical).
    pub entry: u64,
    /// First byte past the kernel image in guest memory.
    pub end: u64,
}

/// Where the initramfs landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitramfsPlacement {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads `vmlinux` at its ELF physical addresses.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.display().to_string(),
        source,
    })?;
    let mut ident = [0u8; 20];
    let is_x86_64_elf = file.read_exact(&mut ident).is_ok()
        && ident[..4] == *b"\x7fELF"
        && ident[4] == ELF_CLASS_64
        && u16::from_le_bytes([ident[18], ident[19]]) == ELF_MACHINE_X86_64;
    if !is_x86_64_elf {
        return Err(BootError::NotX86_64Elf {
            path: path.display().to_string(),
        });
    }
    let res = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::LoadKernel)?;
    Ok(LoadedKernel {
        entry: res.kernel_load.0,
        end: res.kernel_end,
    })
}

/// Chooses the initramfs address: page-aligned, as high as possible in low memory, above the
/// kernel.
pub fn place_initramfs(
    mem_size: u64,
    kernel_end: u64,
    size: u64,
) -> Result<InitramfsPlacement, BootError> {
    let too_large = BootError::InitramfsTooLarge { size };
    let top = lowmem_end(mem_size);
    let addr = top.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(BootError::InitramfsTooLarge { size });
    }
    Ok(InitramfsPlacement { addr, size })
}

/// Reads the initramfs file and copies it into guest memory.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<InitramfsPlacement, BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::ReadInitramfs {
        path: path.display().to_string(),
        source,
    })?;
    let placement = place_initramfs(mem_size, kernel_end, data.len() as u64)?;
    mem.write_slice(&data, GuestAddress(placement.addr))
        .map_err(|source| BootError::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok(placement)
}

/// The e820 map of a guest with `mem_size` bytes of RAM: the low 639 KiB (below the EBDA,
/// which holds the MP tables), then everything from 1 MiB, split around the MMIO gap.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![entry(0, EBDA_START)];
    for (start, len) in ram_ranges(mem_size) {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start));
        }
    }
    map
}

fn entry(addr: u64, size: u64) -> boot_e820_entry {
    boot_e820_entry {
        addr,
        size,
        type_: E820_RAM,
    }
}

/// Builds the zero page for the 64-bit boot protocol.
pub fn build_boot_params(
    cmdline_size: usize,
    initramfs: Option<InitramfsPlacement>,
    e820: &[boot_e820_entry],
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(e820.len()));
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(initramfs) = initramfs {
        params.hdr.ramdisk_image = initramfs.addr as u32;
        params.hdr.ramdisk_size = initramfs.size as u32;
    }
    params.e820_table[..e820.len()].copy_from_slice(e820);
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the NUL-terminated command line and the zero page into guest memory.
pub fn write_boot_data(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    initramfs: Option<InitramfsPlacement>,
) -> Result<(), BootError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    if bytes.len() > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: bytes.len(),
            max: CMDLINE_MAX_SIZE,
        });
    }
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestMemory {
            what: "command line",
            source,
        })?;
    let params = build_boot_params(bytes.len(), initramfs, &e820_map(mem_size))?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::GuestMemory {
            what: "zero page",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

    fn ranges(map: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        map.iter().map(|e| (e.addr, e.size, e.type_)).collect()
    }

    #[test]
    fn e820_small_guest() {
        let mem = 128u64 << 20;
        let map = e820_map(mem);
        assert_eq!(
            ranges(&map),
            vec![(0, EBDA_START, 1), (HIMEM_START, mem - HIMEM_START, 1)]
        );
        // Total RAM is the configured size less the legacy hole (EBDA..1 MiB).
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(mem - total, HIMEM_START - EBDA_START);
    }

    #[test]
    fn e820_large_guest_skips_mmio_gap() {
        let mem = 5u64 << 30;
        let map = e820_map(mem);
        assert_eq!(
            ranges(&map),
            vec![
                (0, EBDA_START, 1),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START, 1),
                (MMIO_GAP_END, mem - MMIO_GAP_START, 1),
            ]
        );
    }

    #[test]
    fn boot_params_fields() {
        let initramfs = InitramfsPlacement {
            addr: 0x700_0000,
            size: 0x1234,
        };
        let e820 = e820_map(256 << 20);
        let p = build_boot_params(42, Some(initramfs), &e820).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.e820_entries }, 2);
        assert_eq!({ p.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ p.e820_table[2].size }, 0);
    }

    #[test]
    fn boot_params_without_initramfs() {
        let p = build_boot_params(10, None, &e820_map(64 << 20)).unwrap();
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.hdr.ramdisk_size }, 0);
    }

    #[test]
    fn too_many_e820_entries_is_an_error() {
        let map = vec![entry(0, 1); 129];
        assert!(matches!(
            build_boot_params(1, None, &map),
            Err(BootError::TooManyE820Entries(129))
        ));
    }

    #[test]
    fn initramfs_goes_to_top_of_low_memory_page_aligned() {
        let mem = 128u64 << 20;
        let p = place_initramfs(mem, 0x200_0000, 10_000).unwrap();
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + p.size <= mem);
        assert!(mem - p.addr < 10_000 + 4096);
        // Above 3 GiB the initramfs still stays below the MMIO gap.
        let p = place_initramfs(8 << 30, 0x200_0000, 4096).unwrap();
        assert_eq!({ p.addr }, MMIO_GAP_START - 4096);
    }

    #[test]
    fn initramfs_that_would_overlap_the_kernel_is_refused() {
        let mem = 64u64 << 20;
        assert!(place_initramfs(mem, 0x300_0000, 40 << 20).is_err());
        assert!(place_initramfs(mem, 0, mem + 1).is_err());
    }

    #[test]
    fn non_elf_and_32_bit_kernels_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("husk-boot-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text");
        std::fs::write(&text, "not a kernel at all, just text").unwrap();
        let elf32 = dir.join("elf32");
        let mut hdr = vec![0u8; 64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 1;
        hdr[18] = 3;
        std::fs::write(&elf32, &hdr).unwrap();
        for p in [&text, &elf32] {
            assert!(matches!(
                load_kernel(&mem, p),
                Err(BootError::NotX86_64Elf { .. })
            ));
        }
        assert!(matches!(
            load_kernel(&mem, &dir.join("missing")),
            Err(BootError::OpenKernel { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline_too_long_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_boot_data(&mem, 1 << 20, &long, None),
            Err(BootError::CmdlineTooLong { .. })
        ));
        write_boot_data(&mem, 1 << 20, "console=ttyS0", None).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmdline_size }, 14);
    }
}
