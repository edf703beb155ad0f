//! Listener filters that look at a connection's first bytes without consuming them:
//! `tls_inspector` (TLS or `raw_buffer`) and `http_inspector` (`http/1.1`, `http/1.0` or `h2c`),
//! feeding filter chain matching. Peeking stops at Envoy's `listener_filters_timeout` (15 s), after
//! which the connection continues with what is known, as Envoy's
//! `continue_on_listener_filters_timeout`.

use std::time::Duration;

use tokio::net::TcpStream;

/// Envoy's default `listener_filters_timeout`.
pub const LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the inspectors found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'static str,
    /// `http/1.1`, `http/1.0` or `h2c` when detected.
    pub application_protocol: Option<&'static str>,
}

/// Classifies the first bytes; `None` means more bytes are needed.
pub fn classify(bytes: &[u8], want_tls: bool, want_http: bool) -> Option<Inspection> {
    if bytes.is_empty() {
        return None;
    }
    let tls = want_tls && bytes[0] == 0x16;
    let mut found = Inspection {
        transport_protocol: if tls { "tls" } else { "raw_buffer" },
        application_protocol: None,
    };
    if tls || !want_http {
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

/// Peeks until the inspectors can decide, the peer closes, or the timeout passes.
pub async fn inspect(stream: &TcpStream, want_tls: bool, want_http: bool) -> Inspection {
    let fallback = Inspection {
        transport_protocol: "raw_buffer",
        application_protocol: None,
    };
    if !want_tls && !want_http {
        return fallback;
    }
    let work = async {
        let mut buf = [0u8; 1024];
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
        assert_eq!(c(&[0x16, 3, 1]).unwrap().transport_protocol, "tls");
        assert_eq!(c(&[0, 1, 2]).unwrap().application_protocol, None);
    }
}
