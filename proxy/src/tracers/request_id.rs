//! The trace decision carried in `x-request-id`, as Envoy's default request id extension
//! (`envoy.request_id.uuid`, `UuidRequestIdConfig`) does it, so every hop of a mesh agrees:
//!
//! - `pack_trace_reason` (default true): the reason a request is traced is written into the
//!   UUID's version nibble (character 14): `9` random sampling, `a` forced by the service
//!   (`x-envoy-force-trace`), `b` forced by the client (`x-client-trace-id`), back to `4` when
//!   `overall_sampling` vetoes it. The next hop reads the reason back instead of deciding again.
//! - `use_request_id_for_trace_sampling` (default true): random sampling is a function of the
//!   id (its first 8 hex digits modulo 10,000 against the percentage in ten-thousandths), so
//!   hops with the same percentage make the same decision for the same request.
//!
//! The pure parts live here; [`super::sampling::decide`] applies them in Envoy's order.

use http::HeaderValue;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension;
use xds_proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;

use super::sampling::Reason;

/// Envoy's UUID length (`8-4-4-4-12`); only ids of this length carry a reason.
const UUID_LENGTH: usize = 36;
/// The character that carries the reason (the UUID version nibble, `4` for a fresh UUID v4).
const TRACE_BYTE_POSITION: usize = 14;

/// The HCM's `request_id_extension` (`UuidRequestIdConfig`), Envoy's defaults when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UuidRequestId {
    /// `pack_trace_reason` (default true).
    pub pack_trace_reason: bool,
    /// `use_request_id_for_trace_sampling` (default true).
    pub use_request_id_for_trace_sampling: bool,
}

impl Default for UuidRequestId {
    fn default() -> Self {
        Self {
            pack_trace_reason: true,
            use_request_id_for_trace_sampling: true,
        }
    }
}

impl UuidRequestId {
    /// Reads the HCM's `request_id_extension`; only Envoy's UUID extension (its default) is
    /// implemented, anything else is refused with the reason.
    pub fn from_proto(ext: Option<&RequestIdExtension>) -> Result<Self, String> {
        let mut config = Self::default();
        let Some(any) = ext.and_then(|e| e.typed_config.as_ref()) else {
            return Ok(config);
        };
        if !any
            .type_url
            .ends_with("request_id.uuid.v3.UuidRequestIdConfig")
        {
            return Err(format!(
                "{} is not implemented by ferry-proxy; only envoy.request_id.uuid is",
                any.type_url
            ));
        }
        let uuid: UuidRequestIdConfig = xds_proto::any::unpack(any).map_err(|e| e.to_string())?;
        if let Some(pack) = uuid.pack_trace_reason {
            config.pack_trace_reason = pack.value;
        }
        if let Some(use_id) = uuid.use_request_id_for_trace_sampling {
            config.use_request_id_for_trace_sampling = use_id.value;
        }
        Ok(config)
    }
}

/// What a request id tells the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromRequestId {
    /// The first 8 hex digits as a number (`None`: no id, or it does not start with 8 hex
    /// digits; Envoy then traces nothing).
    pub value: Option<u64>,
    /// The reason packed by an earlier hop (`NotTraceable` when none).
    pub reason: Reason,
}

impl FromRequestId {
    /// Reads `id` (Envoy's `getInteger` and `getTraceReason`).
    pub fn read(id: Option<&HeaderValue>) -> Self {
        let bytes = id.map_or(&[][..], HeaderValue::as_bytes);
        Self {
            value: to_integer(bytes),
            reason: trace_reason(bytes),
        }
    }
}

/// The first 8 characters as a hexadecimal number, when they all are hex digits.
pub fn to_integer(id: &[u8]) -> Option<u64> {
    let head = id.get(..8)?;
    let text = std::str::from_utf8(head).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// The reason packed in a UUID-length id (`NotTraceable` for any other id or character).
pub fn trace_reason(id: &[u8]) -> Reason {
    if id.len() != UUID_LENGTH {
        return Reason::NotTraceable;
    }
    match id[TRACE_BYTE_POSITION] {
        b'9' => Reason::RandomSampling,
        b'a' => Reason::ServiceForced,
        b'b' => Reason::ClientEnabled,
        _ => Reason::NotTraceable,
    }
}

/// `id` with `reason` packed into it; `None` when `id` is not UUID-length (left as it is).
pub fn with_trace_reason(id: &HeaderValue, reason: Reason) -> Option<HeaderValue> {
    let mut bytes = id.as_bytes().to_vec();
    if bytes.len() != UUID_LENGTH {
        return None;
    }
    bytes[TRACE_BYTE_POSITION] = match reason {
        Reason::RandomSampling => b'9',
        Reason::ServiceForced => b'a',
        Reason::ClientEnabled => b'b',
        Reason::NotTraceable => b'4',
    };
    HeaderValue::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: &str = "0a1b2c3d-1111-4222-a333-444455556666";

    #[test]
    fn reasons_round_trip_through_the_version_nibble() {
        let fresh = HeaderValue::from_static(FRESH);
        assert_eq!(trace_reason(fresh.as_bytes()), Reason::NotTraceable);
        for (reason, nibble) in [
            (Reason::RandomSampling, '9'),
            (Reason::ServiceForced, 'a'),
            (Reason::ClientEnabled, 'b'),
            (Reason::NotTraceable, '4'),
        ] {
            let packed = with_trace_reason(&fresh, reason).unwrap();
            let text = packed.to_str().unwrap();
            assert_eq!(text.as_bytes()[14] as char, nibble, "{reason:?}");
            assert_eq!(&text[..14], &FRESH[..14]);
            assert_eq!(&text[15..], &FRESH[15..]);
            assert_eq!(trace_reason(packed.as_bytes()), reason);
        }
    }

    #[test]
    fn other_ids_carry_no_reason_and_are_left_alone() {
        let short = HeaderValue::from_static("rid-404");
        assert_eq!(trace_reason(short.as_bytes()), Reason::NotTraceable);
        assert_eq!(with_trace_reason(&short, Reason::RandomSampling), None);
        let read = FromRequestId::read(Some(&short));
        assert_eq!(read.value, None);
        assert_eq!(FromRequestId::read(None).value, None);
    }

    #[test]
    fn the_integer_is_the_first_eight_hex_digits() {
        assert_eq!(to_integer(FRESH.as_bytes()), Some(0x0a1b_2c3d));
        assert_eq!(to_integer(b"ffffffff"), Some(0xffff_ffff));
        assert_eq!(to_integer(b"0a1b2c3"), None);
        assert_eq!(to_integer(b"0a1b2c3g-rest"), None);
        assert_eq!(to_integer(b"+a1b2c3d"), None);
    }

    #[test]
    fn the_uuid_extension_is_read_and_others_are_refused() {
        use xds_proto::google::protobuf::BoolValue;
        let ext = |any| RequestIdExtension {
            typed_config: Some(any),
        };
        assert_eq!(
            UuidRequestId::from_proto(None),
            Ok(UuidRequestId::default())
        );
        let istio = UuidRequestIdConfig {
            use_request_id_for_trace_sampling: Some(BoolValue { value: true }),
            ..Default::default()
        };
        let read = UuidRequestId::from_proto(Some(&ext(xds_proto::any::pack(&istio))));
        assert_eq!(read, Ok(UuidRequestId::default()));
        let off = UuidRequestIdConfig {
            pack_trace_reason: Some(BoolValue { value: false }),
            use_request_id_for_trace_sampling: Some(BoolValue { value: false }),
        };
        let read = UuidRequestId::from_proto(Some(&ext(xds_proto::any::pack(&off)))).unwrap();
        assert!(!read.pack_trace_reason && !read.use_request_id_for_trace_sampling);
        let other = xds_proto::google::protobuf::Any {
            type_url: "type.googleapis.com/example.RequestId".into(),
            value: vec![],
        };
        let e = UuidRequestId::from_proto(Some(&ext(other))).unwrap_err();
        assert!(e.contains("example.RequestId"), "{e}");
    }
}
