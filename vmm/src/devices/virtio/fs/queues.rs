//! The queues: descriptor chains in, FUSE requests to the server, replies back into the chain.
//! Nothing here depends on epoll, so tests drive it with hand-built rings.
//!
//! Before the server sees a request, its header is read from a copy of the chain and checked:
//! the length must fit the readable part of the chain, and the opcode must be one the server
//! knows. fuse-backend-rs turns opcodes into its `Opcode` enum with a `transmute` when it logs
//! at trace level, which is undefined behaviour for the holes in the numbering (0, 7, 19) and is
//! never reached here; husk answers unknown opcodes with ENOSYS itself.

use std::io::Write;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{bump, FsCounters};

/// FUSE opcodes (`include/uapi/linux/fuse.h`) that get no reply.
mod opcode {
    pub const FORGET: u32 = 2;
    pub const INTERRUPT: u32 = 36;
    pub const BATCH_FORGET: u32 = 42;
}

/// What the device does with a request, judged by its opcode.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// The server and the passthrough implement it.
    Served,
    /// The server knows it but husk does not do it (locks, ioctl, DAX, ...): the server's
    /// default answer (ENOSYS or ENOTTY) goes back, and it is counted.
    Unsupported,
    /// Not an opcode the server knows: husk answers ENOSYS without calling it.
    Unknown,
}

fn kind(op: u32) -> Kind {
    match op {
        // LOOKUP (1) to RELEASE (18) and FSYNC (20) to FSYNCDIR (30); FUSE never assigned 7
        // and 19.
        1..=6 | 8..=18 | 20..=30 => Kind::Served,
        // GETLK, SETLK, SETLKW (31-33; no lock support is advertised, so locks stay in the
        // guest), BMAP (37), IOCTL (39), POLL (40), NOTIFY_REPLY (41).
        31..=33 | 37 | 39..=41 => Kind::Unsupported,
        // ACCESS, CREATE, INTERRUPT (34-36), DESTROY (38), BATCH_FORGET, FALLOCATE,
        // READDIRPLUS, RENAME2, LSEEK (42-46).
        34..=36 | 38 | 42..=46 => Kind::Served,
        // COPY_FILE_RANGE (47), which the server does not implement; SETUPMAPPING and
        // REMOVEMAPPING (48, 49): DAX, and the device has no DAX window (the server would say
        // EINVAL); everything newer than the server.
        _ => Kind::Unknown,
    }
}

/// Serves up to `limit` chains from `queue`. Each chain is returned to the guest whatever its
/// fate. Returns how many were.
pub(super) fn process_queue<F: FileSystem + Sync>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    server: &Server<F>,
    counters: &FsCounters,
    limit: usize,
) -> usize {
    let mut done = 0;
    while done < limit {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        bump(&counters.requests);
        let len = serve_chain(mem, chain, server, counters);
        if queue.add_used(mem, head, len).is_err() {
            bump(&counters.malformed);
        }
        done += 1;
    }
    done
}

/// Serves one request; returns the number of bytes written into the chain.
fn serve_chain<F: FileSystem + Sync>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    server: &Server<F>,
    counters: &FsCounters,
) -> u32 {
    let (reader, writer) = match (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain),
    ) {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            tracing::trace!("virtio-fs: chain outside guest memory");
            bump(&counters.malformed);
            return 0;
        }
    };
    let mut peek = reader.clone();
    let Ok(header) = peek.read_obj::<InHeader>() else {
        bump(&counters.malformed);
        return 0;
    };
    if header.len as usize > reader.available_bytes() {
        // The message claims more than the chain holds.
        bump(&counters.malformed);
        return reply_error(writer, &header, libc::EINVAL);
    }
    match kind(header.opcode) {
        Kind::Served => {}
        Kind::Unsupported => bump(&counters.unsupported),
        Kind::Unknown => {
            bump(&counters.unsupported);
            bump(&counters.error_replies);
            return reply_error(writer, &header, libc::ENOSYS);
        }
    }
    match server.handle_message(reader, Writer::VirtioFs(writer), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(0),
        Err(e) => {
            tracing::trace!("virtio-fs: request {} failed: {e}", header.opcode);
            bump(&counters.malformed);
            0
        }
    }
}

/// Writes an error reply; returns its length, or 0 if the chain has no room for it.
fn reply_error(mut writer: VirtioFsWriter<'_>, header: &InHeader, code: i32) -> u32 {
    if matches!(
        header.opcode,
        opcode::FORGET | opcode::INTERRUPT | opcode::BATCH_FORGET
    ) {
        return 0;
    }
    let out = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -code,
        unique: header.unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_kinds() {
        for op in [
            1, 2, 3, 6, 8, 18, 20, 26, 30, 34, 35, 36, 38, 42, 44, 45, 46,
        ] {
            assert_eq!(kind(op), Kind::Served, "opcode {op}");
        }
        for op in [31, 32, 33, 37, 39, 40, 41] {
            assert_eq!(kind(op), Kind::Unsupported, "opcode {op}");
        }
        for op in [0, 7, 19, 47, 48, 49, 50, 51, 4096, u32::MAX] {
            assert_eq!(kind(op), Kind::Unknown, "opcode {op}");
        }
    }
}
