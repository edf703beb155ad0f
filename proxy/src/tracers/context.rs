//! Trace context propagation: B3 (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//! `x-b3-sampled`, and the single `b3` header), the format Zipkin and Istio's sidecars use, and
//! W3C trace context (`traceparent`, with `tracestate` passed through), the OpenTelemetry
//! tracer's. Parsing never fails a request: a malformed context is treated as absent, as Envoy
//! does.

use http::{HeaderMap, HeaderValue};

/// A 64- or 128-bit trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId {
    /// The upper 64 bits (0 for a 64-bit id).
    pub high: u64,
    /// The lower 64 bits.
    pub low: u64,
}

impl TraceId {
    /// Lower-case hex: 32 digits for a 128-bit id, 16 otherwise.
    pub fn to_hex(self) -> String {
        if self.high == 0 {
            format!("{:016x}", self.low)
        } else {
            format!("{:016x}{:016x}", self.high, self.low)
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let (high, low) = match s.len() {
            16 => ("0", s),
            32 => s.split_at(16),
            _ => return None,
        };
        let id = Self {
            high: hex_u64(high)?,
            low: hex_u64(low)?,
        };
        (id.high != 0 || id.low != 0).then_some(id)
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Lower-case 16-digit hex, B3's span id format.
pub fn span_id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// The context a request arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Incoming {
    /// Trace and span id of the caller's span, when the request carries a whole context.
    pub parent: Option<(TraceId, u64)>,
    /// The caller's sampling decision, when it sent one.
    pub sampled: Option<bool>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn sampled_flag(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Reads a B3 context: the single `b3` header first (`{trace}-{span}[-{sampled}[-{parent}]]`
/// or just a sampling state), else the `x-b3-*` headers. `x-b3-flags: 1` (debug) samples.
pub fn extract_b3(headers: &HeaderMap) -> Incoming {
    if let Some(single) = header(headers, "b3") {
        let mut parts = single.split('-');
        let first = parts.next().unwrap_or_default();
        if let Some(sampled) = sampled_flag(first).filter(|_| single.len() == 1) {
            return Incoming {
                parent: None,
                sampled: Some(sampled),
            };
        }
        let ids = TraceId::parse(first).zip(parts.next().and_then(hex_u64));
        if let Some(ids) = ids {
            return Incoming {
                parent: Some(ids),
                sampled: parts.next().and_then(sampled_flag),
            };
        }
    }
    let debug = header(headers, "x-b3-flags") == Some("1");
    let sampled = header(headers, "x-b3-sampled")
        .and_then(sampled_flag)
        .or(debug.then_some(true));
    let parent = header(headers, "x-b3-traceid")
        .and_then(TraceId::parse)
        .zip(header(headers, "x-b3-spanid").and_then(hex_u64));
    Incoming { parent, sampled }
}

/// Writes the B3 multi-header context of a span going upstream, replacing whatever context
/// the request carried (a stale single `b3` header would win over ours at the next hop).
pub fn inject_b3(
    headers: &mut HeaderMap,
    trace_id: TraceId,
    span_id: u64,
    parent_id: Option<u64>,
    sampled: bool,
) {
    headers.remove("b3");
    headers.remove("x-b3-flags");
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    set("x-b3-traceid", trace_id.to_hex());
    set("x-b3-spanid", span_id_hex(span_id));
    match parent_id {
        Some(p) => set("x-b3-parentspanid", span_id_hex(p)),
        None => {
            headers.remove("x-b3-parentspanid");
        }
    }
    headers.insert(
        "x-b3-sampled",
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

/// Reads a W3C `traceparent` (`00-{trace}-{parent}-{flags}`; bit 0 of the flags is sampled).
pub fn extract_w3c(headers: &HeaderMap) -> Incoming {
    let Some(value) = header(headers, "traceparent") else {
        return Incoming::default();
    };
    let mut parts = value.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Incoming::default();
    };
    let valid_version = version.len() == 2 && version != "ff" && hex_u64(version).is_some();
    let trace = (trace.len() == 32).then(|| TraceId::parse(trace)).flatten();
    let parent = (parent.len() == 16)
        .then(|| hex_u64(parent))
        .flatten()
        .filter(|p| *p != 0);
    let flags = (flags.len() == 2).then(|| hex_u64(flags)).flatten();
    match (valid_version, trace, parent, flags) {
        (true, Some(trace), Some(parent), Some(flags)) => Incoming {
            parent: Some((trace, parent)),
            sampled: Some(flags & 1 == 1),
        },
        _ => Incoming::default(),
    }
}

/// Writes the W3C `traceparent` of a span going upstream (`tracestate` is left as it came).
pub fn inject_w3c(headers: &mut HeaderMap, trace_id: TraceId, span_id: u64, sampled: bool) {
    let value = format!(
        "00-{:016x}{:016x}-{}-{}",
        trace_id.high,
        trace_id.low,
        span_id_hex(span_id),
        if sampled { "01" } else { "00" }
    );
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert("traceparent", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn b3_multi_headers_are_read() {
        let got = extract_b3(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]));
        let (trace, span) = got.parent.unwrap();
        assert_eq!(trace.to_hex(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(span, 0xa2fb_4a1d_1a96_d312);
        assert_eq!(got.sampled, Some(true));
    }

    #[test]
    fn b3_64_bit_trace_id_keeps_its_width() {
        let got = extract_b3(&headers(&[
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "00000000000000ff"),
        ]));
        assert_eq!(got.parent.unwrap().0.to_hex(), "48485a3953bb6124");
        assert_eq!(got.sampled, None);
    }

    #[test]
    fn b3_single_header_wins_and_carries_sampling() {
        let got = extract_b3(&headers(&[
            (
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]));
        assert_eq!(
            got.parent.unwrap().0.to_hex(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(got.parent.unwrap().1, 0xe457_b5a2_e4d8_6bd1);
        assert_eq!(got.sampled, Some(false));
        let deny = extract_b3(&headers(&[("b3", "0")]));
        assert_eq!(
            deny,
            Incoming {
                parent: None,
                sampled: Some(false)
            }
        );
        let debug = extract_b3(&headers(&[("b3", "d")]));
        assert_eq!(debug.sampled, Some(true));
    }

    #[test]
    fn malformed_context_is_absent() {
        for (k, v) in [
            ("x-b3-traceid", "not-hex-at-all!!"),
            ("x-b3-traceid", "0000000000000000"),
            ("x-b3-traceid", "abc"),
        ] {
            let mut h = headers(&[(k, v), ("x-b3-spanid", "a2fb4a1d1a96d312")]);
            assert_eq!(extract_b3(&h).parent, None, "{v}");
            h.insert("x-b3-sampled", HeaderValue::from_static("yes"));
            assert_eq!(extract_b3(&h).sampled, None);
        }
        assert_eq!(
            extract_b3(&headers(&[("x-b3-flags", "1")])).sampled,
            Some(true)
        );
    }

    #[test]
    fn injected_context_replaces_the_incoming_one() {
        let mut h = headers(&[("b3", "1"), ("x-b3-parentspanid", "0000000000000001")]);
        let trace = TraceId { high: 1, low: 2 };
        inject_b3(&mut h, trace, 0xabc, None, true);
        assert_eq!(h["x-b3-traceid"], "00000000000000010000000000000002");
        assert_eq!(h["x-b3-spanid"], "0000000000000abc");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("b3"));
        assert!(!h.contains_key("x-b3-parentspanid"));
        inject_b3(&mut h, trace, 3, Some(0xabc), false);
        assert_eq!(h["x-b3-parentspanid"], "0000000000000abc");
        assert_eq!(h["x-b3-sampled"], "0");
        assert_eq!(extract_b3(&h).parent, Some((trace, 3)));
    }

    #[test]
    fn w3c_traceparent_round_trips() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let got = extract_w3c(&h);
        let (trace, parent) = got.parent.unwrap();
        assert_eq!(trace.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(got.sampled, Some(true));
        let mut out = HeaderMap::new();
        inject_w3c(&mut out, trace, 0xabc, false);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-00"
        );
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let h = headers(&[("traceparent", bad)]);
            assert_eq!(extract_w3c(&h), Incoming::default(), "{bad}");
        }
    }
}
