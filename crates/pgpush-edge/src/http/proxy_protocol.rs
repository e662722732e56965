//! The PROXY protocol header (v1 and v2) in front of a connection: the real client's address
//! when a trusted L4 proxy (nginx's stream module) forwards it.

use std::{io, net::SocketAddr, time::Duration};

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// Longest header accepted (v2 allows TLVs; nginx sends a few dozen bytes).
const MAX_HEADER: usize = 4096;
/// How long a peer may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a v1 header starts.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// How a v2 header starts.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// True when the connection starts with a PROXY protocol header. Waits only until the first
/// bytes decide it, so direct clients (health checks, a node's own tools) still work.
pub(crate) async fn has_header(stream: &TcpStream) -> io::Result<bool> {
    let decide = async {
        let mut peeked = [0u8; 12];
        loop {
            let n = stream.peek(&mut peeked).await?;
            if n == 0 {
                return Ok(false);
            }
            let seen = &peeked[..n];
            let could_be =
                |signature: &[u8]| signature.starts_with(&seen[..n.min(signature.len())]);
            if !could_be(V1_SIGNATURE) && !could_be(V2_SIGNATURE) {
                return Ok(false);
            }
            if (n >= V1_SIGNATURE.len() && seen.starts_with(V1_SIGNATURE))
                || n >= V2_SIGNATURE.len()
            {
                return Ok(true);
            }
            // A prefix of a signature: wait for more bytes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, decide)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))?
}

/// Reads a PROXY protocol header. Returns the source address it names (`None` for `UNKNOWN` or
/// `LOCAL`) and the bytes read after it, which belong to the HTTP request.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let invalid = |reason: &str| io::Error::new(io::ErrorKind::InvalidData, reason.to_owned());
    let mut buffer = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the PROXY header",
                ));
            }
            buffer.extend_from_slice(&chunk[..n]);
            return match parse(&buffer) {
                Parsed::Incomplete if buffer.len() > MAX_HEADER => {
                    Err(invalid("PROXY header too long"))
                }
                Parsed::Incomplete => continue,
                Parsed::Header { source, length } => Ok((source, length)),
                Parsed::Invalid => Err(invalid("not a PROXY protocol header")),
            };
        }
    };
    let (source, length) = tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))??;
    Ok((source, buffer.split_off(length)))
}

/// What the start of a connection holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not enough bytes yet.
    Incomplete,
    /// A whole header: the client's address (`None` for UNKNOWN/LOCAL) and the header's length.
    Header {
        source: Option<SocketAddr>,
        length: usize,
    },
    /// Not a valid PROXY header.
    Invalid,
}

/// Parses a PROXY protocol v1 or v2 header at the start of `buffer` (sans IO).
pub(crate) fn parse(buffer: &[u8]) -> Parsed {
    let parsed = HeaderResult::parse(buffer);
    if parsed.is_incomplete() {
        return Parsed::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                source,
                length: header.header.len(),
            }
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match header.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                _ => None,
            };
            Parsed::Header {
                source,
                length: header.len(),
            }
        }
        _ => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn check(sent: Vec<u8>, expected: Option<&str>, rest: &[u8]) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(&sent).await.unwrap();
            stream
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap();
        let (source, leftover) = read_header(&mut server).await.unwrap();
        assert_eq!(source.map(|s| s.to_string()).as_deref(), expected);
        assert_eq!(leftover, rest);
    }

    #[tokio::test]
    async fn v1_and_v2_headers() {
        check(
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\nGET / HTTP/1.1\r\n".to_vec(),
            Some("203.0.113.7:51000"),
            b"GET / HTTP/1.1\r\n",
        )
        .await;
        check(b"PROXY UNKNOWN\r\nGET".to_vec(), None, b"GET").await;
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
                "[::1]:8080".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut sent = v2;
        sent.extend_from_slice(b"GET /");
        check(sent, Some("[2001:db8::1]:443"), b"GET /").await;
    }

    #[tokio::test]
    async fn connections_without_a_header_are_told_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for (sent, expected) in [
            (&b"GET / HTTP/1.1\r\n"[..], false),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", true),
            (V2_SIGNATURE, true),
            (b"\r\nX", false),
        ] {
            let client = tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                stream.write_all(sent).await.unwrap();
                stream
            });
            let (server, _) = listener.accept().await.unwrap();
            let _client = client.await.unwrap();
            assert_eq!(has_header(&server).await.unwrap(), expected, "{sent:?}");
        }
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let (mut server, _) = listener.accept().await.unwrap();
        assert!(read_header(&mut server).await.is_err());
    }
}
