//! Envoy's request and response header handling for a sidecar: `x-envoy-*` stripping unless
//! the caller is internal, `x-forwarded-for` / `x-forwarded-proto`, XFCC sanitizing,
//! `x-request-id` generation, and the `server` header on the way back. Pure functions of the
//! HCM config and the headers, called once per request by [`super::handle`].

use http::{HeaderName, HeaderValue, Response, header};

use super::{Downstream, HttpConnectionManagerConfig, ServerHeader};
use crate::body::Body;
use crate::route::RouteTable;

// Names, not strings: a lookup by `&str` parses the name again on every request.
pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Envoy's internal-request rule: with `use_remote_address` the peer's address decides; without
/// it, `x-forwarded-for` must hold exactly one address (no XFF: external). The address is
/// internal when it is loopback, RFC 1918 or unique-local IPv6 (Envoy's classic default for
/// `internal_address_config`).
pub(super) fn is_internal_request(
    hcm: &HttpConnectionManagerConfig,
    downstream: &Downstream,
    headers: &http::HeaderMap,
) -> bool {
    let address = if hcm.use_remote_address {
        Some(downstream.peer.ip())
    } else {
        let mut xff = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty());
        match (xff.next(), xff.next()) {
            (Some(single), None) => single.parse::<std::net::IpAddr>().ok(),
            _ => None,
        }
    };
    address.is_some_and(|ip| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    })
}

/// Envoy's request header handling for a sidecar.
pub(super) fn prepare_request(
    hcm: &HttpConnectionManagerConfig,
    table: &RouteTable,
    downstream: &Downstream,
    parts: &mut http::request::Parts,
) {
    // Envoy's internal-only headers must not be spoofable from outside. Internal callers (see
    // `is_internal_request`) keep the router's retry and timeout overrides, as Envoy does.
    let keep_overrides = is_internal_request(hcm, downstream, &parts.headers);
    let internal: Vec<_> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-envoy-"))
        .filter(|k| !(keep_overrides && crate::retry::HeaderOverrides::NAMES.contains(&k.as_str())))
        .cloned()
        .collect();
    for name in internal {
        parts.headers.remove(name);
    }
    for name in &table.internal_only_headers {
        parts.headers.remove(name);
    }
    if hcm.sanitize_xfcc {
        parts.headers.remove(&X_FORWARDED_CLIENT_CERT);
    }
    if hcm.use_remote_address && !hcm.skip_xff_append {
        let peer = downstream.peer.ip().to_string();
        let value = match parts
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) => format!("{existing}, {peer}"),
            None => peer,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if hcm.generate_request_id
        && !parts.headers.contains_key(&X_REQUEST_ID)
        && let Ok(id) = HeaderValue::from_bytes(&uuid_v4_bytes())
    {
        parts.headers.insert(X_REQUEST_ID, id);
    }
}

pub(super) fn finish_response(
    hcm: &HttpConnectionManagerConfig,
    request_id: Option<HeaderValue>,
    response: &mut Response<Body>,
) {
    let headers = response.headers_mut();
    match hcm.server_header {
        ServerHeader::Overwrite => {
            headers.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent if !headers.contains_key(header::SERVER) => {
            headers.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent | ServerHeader::PassThrough => {}
    }
    if let (true, Some(id)) = (hcm.always_set_request_id_in_response, request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
}

/// A random (version 4) UUID, the format Envoy uses for `x-request-id`.
pub fn uuid_v4() -> String {
    String::from_utf8_lossy(&uuid_v4_bytes()).into_owned()
}

/// [`uuid_v4`] formatted on the stack: it runs for every request without an `x-request-id`.
fn uuid_v4_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, byte) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, uuid_v4());
        assert!(id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
        }));
    }
}
