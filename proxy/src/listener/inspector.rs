//! Listener filters that look at a connection's first bytes without consuming them:
//! `tls_inspector` (TLS or `raw_buffer`) and `http_inspector` (`http/1.1`, `http/1.0` or `h2c`),
//! feeding filter chain matching. For TLS the peeked ClientHello is parsed by rustls' `Acceptor`
//! (fed a copy, so the stream is untouched) for the SNI and ALPN, as Envoy's `tls_inspector`;
//! a hello rustls cannot parse (e.g. SSLv3-only) counts as TLS without SNI. Peeking stops at Envoy's `listener_filters_timeout` (15 s), after
//! which the connection continues with what is known, as Envoy's
//! `continue_on_listener_filters_timeout`.

use std::time::Duration;

use tokio::net::TcpStream;

/// Envoy's default `listener_filters_timeout`.
pub const LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much is peeked: one full TLS record (a ClientHello with post-quantum key shares passes
/// 1 KiB; Envoy reads up to 16 KiB by default too).
const PEEK_LIMIT: usize = 16 * 1024 + 5;

/// What the inspectors found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'static str,
    /// `http/1.1`, `http/1.0` or `h2c` when detected.
    pub application_protocol: Option<&'static str>,
    /// The ClientHello's SNI, lower case.
    pub server_name: Option<String>,
    /// The ClientHello's ALPN protocols, in the client's order.
    pub alpn: Vec<String>,
}

/// Classifies the first bytes; `None` means more bytes are needed.
pub fn classify(bytes: &[u8], want_tls: bool, want_http: bool) -> Option<Inspection> {
    if bytes.is_empty() {
        return None;
    }
    let tls = want_tls && bytes[0] == 0x16;
    let mut found = Inspection {
        transport_protocol: if tls { "tls" } else { "raw_buffer" },
        ..Inspection::default()
    };
    if tls {
        let (server_name, alpn) = client_hello(bytes)?;
        found.server_name = server_name;
        found.alpn = alpn;
        return Some(found);
    }
    if !want_http {
        return Some(found);
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        if bytes.len() < H2_PREFACE.len() {
            return None;
        }
        found.application_protocol = Some("h2c");
        return Some(found);
    }
    match bytes.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &bytes[..end];
            if line.ends_with(b" HTTP/1.1") {
                found.application_protocol = Some("http/1.1");
            } else if line.ends_with(b" HTTP/1.0") {
                found.application_protocol = Some("http/1.0");
            }
            Some(found)
        }
        // A request line longer than what we peek, or not HTTP at all.
        None if bytes.len() >= 1024 => Some(found),
        None if !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => Some(found),
        None => None,
    }
}

/// SNI and ALPN from a ClientHello at the start of `bytes`; `None` means more bytes are needed.
fn client_hello(bytes: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            // Its buffer is full: not a hello it can parse.
            Err(_) => return Some((None, Vec::new())),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let server_name = hello.server_name().map(str::to_ascii_lowercase);
            let alpn = hello
                .alpn()
                .map(|protocols| {
                    protocols
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            Some((server_name, alpn))
        }
        Ok(None) if bytes.len() < PEEK_LIMIT => None,
        Ok(None) | Err(_) => Some((None, Vec::new())),
    }
}

/// Peeks until the inspectors can decide, the peer closes, or the timeout passes.
pub async fn inspect(stream: &TcpStream, want_tls: bool, want_http: bool) -> Inspection {
    let fallback = Inspection {
        transport_protocol: "raw_buffer",
        ..Inspection::default()
    };
    if !want_tls && !want_http {
        return fallback;
    }
    let work = async {
        let mut buf = vec![0u8; PEEK_LIMIT];
        let mut last = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return fallback.clone(),
                Ok(n) => n,
            };
            if let Some(found) = classify(&buf[..n], want_tls, want_http) {
                return found;
            }
            if n == last {
                // Nothing new: data already buffered keeps the socket readable, so back off
                // briefly instead of spinning on peek.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last = n;
        }
    };
    tokio::time::timeout(LISTENER_FILTERS_TIMEOUT, work)
        .await
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_protocols() {
        let c = |b: &[u8]| classify(b, true, true);
        assert_eq!(
            c(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .application_protocol,
            Some("http/1.1")
        );
        assert_eq!(
            c(b"GET / HTTP/1.0\r\n").unwrap().application_protocol,
            Some("http/1.0")
        );
        assert_eq!(c(H2_PREFACE).unwrap().application_protocol, Some("h2c"));
        assert_eq!(c(b"PRI * HT"), None);
        assert_eq!(c(b"GET / HT"), None);
        // A partial TLS record waits for the whole ClientHello.
        assert_eq!(c(&[0x16, 3, 1]), None);
        assert_eq!(c(&[0, 1, 2]).unwrap().application_protocol, None);
        // Not a ClientHello after the handshake byte: TLS without SNI.
        assert_eq!(
            c(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]).unwrap().server_name,
            None
        );
    }

    /// A real ClientHello, written by a rustls client.
    pub(crate) fn client_hello_bytes(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        let mut client =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write");
        }
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let hello = client_hello_bytes("Reviews.Example.COM", &[b"h2", b"http/1.1"]);
        let found = classify(&hello, true, true).expect("complete");
        assert_eq!(found.transport_protocol, "tls");
        assert_eq!(found.server_name.as_deref(), Some("reviews.example.com"));
        assert_eq!(found.alpn, ["h2", "http/1.1"]);
        // Every truncation asks for more bytes rather than guessing.
        for n in 1..hello.len() {
            assert_eq!(classify(&hello[..n], true, true), None, "{n} bytes");
        }
        // Without the TLS inspector the same bytes are raw.
        assert_eq!(classify(&hello, false, false).unwrap().server_name, None);
    }

    #[tokio::test]
    async fn inspect_peeks_without_consuming() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hello = client_hello_bytes("a.example.com", &[]);
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&hello).await.unwrap();
        let found = inspect(&server, true, false).await;
        assert_eq!(found.server_name.as_deref(), Some("a.example.com"));
        let mut read = vec![0u8; hello.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, hello);
    }
}
