//! The hybrid-vsock handshake (Firecracker's convention, which husk-vmm
//! follows): the host connects to the VM's Unix socket, writes
//! `CONNECT <port>\n`, and the VMM answers `OK <host-port>\n` once the guest
//! accepted the connection. From then on the socket carries the guest
//! connection's bytes. While nothing listens on the port in the guest, the VMM
//! closes the socket instead.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest reply accepted, newline included.
pub const MAX_REPLY_LEN: usize = 64;

/// The handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("writing the CONNECT request")]
    Write(#[source] io::Error),
    #[error("reading the reply")]
    Read(#[source] io::Error),
    #[error("closed before a reply (nothing listens on the guest port yet?)")]
    Closed,
    #[error("reply longer than {MAX_REPLY_LEN} bytes")]
    TooLong,
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

impl HandshakeError {
    /// Whether trying again later may succeed: the guest is not listening
    /// yet, or the VMM is slow. A malformed reply is not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandshakeError::Closed | HandshakeError::Timeout(_) => true,
            HandshakeError::Read(e) | HandshakeError::Write(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            HandshakeError::TooLong | HandshakeError::Unexpected(_) => false,
        }
    }
}

/// Parses the VMM's reply line (with its newline): `OK <n>\n` gives `n`.
pub fn parse_reply(line: &[u8]) -> Result<u32, HandshakeError> {
    let unexpected = || HandshakeError::Unexpected(String::from_utf8_lossy(line).into_owned());
    let text = line
        .strip_suffix(b"\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or_else(unexpected)?;
    let number = text.strip_prefix("OK ").ok_or_else(unexpected)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unexpected());
    }
    number.parse().map_err(|_| unexpected())
}

/// Asks the VMM behind `stream` for a connection to the guest's `port` and
/// waits for the answer, at most `timeout`. Returns the host-side port number
/// the VMM reported.
///
/// The reply is read one byte at a time, so that nothing after its newline
/// (the guest's first bytes) is consumed.
pub async fn handshake<S>(
    stream: &mut S,
    port: u32,
    timeout: Duration,
) -> Result<u32, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(HandshakeError::Write)?;
        stream.flush().await.map_err(HandshakeError::Write)?;
        let mut line = Vec::with_capacity(16);
        loop {
            if line.len() == MAX_REPLY_LEN {
                return Err(HandshakeError::TooLong);
            }
            let mut byte = [0u8; 1];
            let n = stream.read(&mut byte).await.map_err(HandshakeError::Read)?;
            if n == 0 {
                return Err(HandshakeError::Closed);
            }
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return parse_reply(&line);
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"OK 1234\n").expect("valid"), 1234);
        assert_eq!(parse_reply(b"OK 0\n").expect("valid"), 0);
        assert_eq!(parse_reply(b"OK 4294967295\n").expect("valid"), u32::MAX);
        for bad in [
            &b"OK 1234"[..],
            b"OK\n",
            b"OK \n",
            b"ok 1\n",
            b"OK -1\n",
            b"OK +1\n",
            b"OK 1 \n",
            b"OK 4294967296\n",
            b"ERR 1\n",
            b"\xffOK 1\n",
            b"OK 1\r\n",
            b"\n",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(HandshakeError::Unexpected(_))),
                "{bad:?} accepted"
            );
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn good_handshake_leaves_following_bytes() {
        let (mut host, mut vmm) = duplex(256);
        let vmm_side = tokio::spawn(async move {
            let mut req = [0u8; 13];
            vmm.read_exact(&mut req).await.expect("read request");
            assert_eq!(&req, b"CONNECT 1024\n");
            vmm.write_all(b"OK 1073741824\nPRI * HTTP/2.0")
                .await
                .expect("reply");
            vmm
        });
        assert_eq!(handshake(&mut host, 1024, T).await.expect("ok"), 1 << 30);
        let mut rest = [0u8; 14];
        host.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"PRI * HTTP/2.0");
        drop(vmm_side.await.expect("vmm side"));
    }

    #[tokio::test]
    async fn garbage_reply() {
        let (mut host, mut vmm) = duplex(256);
        vmm.write_all(b"HTTP/1.1 400 Bad Request\n")
            .await
            .expect("reply");
        let err = handshake(&mut host, 1024, T).await.expect_err("garbage");
        assert!(matches!(err, HandshakeError::Unexpected(_)), "{err:?}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn too_long_reply() {
        let (mut host, mut vmm) = duplex(1024);
        vmm.write_all(&[b'O'; 200]).await.expect("reply");
        let err = handshake(&mut host, 1024, T).await.expect_err("too long");
        assert!(matches!(err, HandshakeError::TooLong), "{err:?}");
        // 64 bytes of "OK 000…0\n" is still one too many with the newline.
        let (mut host, mut vmm) = duplex(1024);
        let mut reply = b"OK ".to_vec();
        reply.resize(MAX_REPLY_LEN, b'0');
        reply.push(b'\n');
        vmm.write_all(&reply).await.expect("reply");
        let err = handshake(&mut host, 1024, T).await.expect_err("too long");
        assert!(matches!(err, HandshakeError::TooLong), "{err:?}");
    }

    #[tokio::test]
    async fn closed_before_reply_is_retryable() {
        let (mut host, vmm) = duplex(256);
        drop(vmm);
        let err = handshake(&mut host, 1024, T).await.expect_err("closed");
        assert!(err.is_retryable(), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_vmm_times_out() {
        let (mut host, _vmm) = duplex(256);
        let err = handshake(&mut host, 1024, Duration::from_millis(500))
            .await
            .expect_err("timeout");
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err:?}");
        assert!(err.is_retryable());
    }
}
