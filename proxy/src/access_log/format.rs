//! Envoy's access log format strings: literal text with command operators (`%RESPONSE_CODE%`,
//! `%REQ(X-REQUEST-ID)%`, `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64%`, ...), parsed once when the
//! listener is accepted and rendered per request. An operator Ferry does not know is refused by
//! name. A value that is not available renders as `-` (`null` in JSON), as in Envoy.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Version};

/// Envoy's default format (used when a file logger sets none).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A command operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `START_TIME` (Envoy's default `%Y-%m-%dT%H:%M:%E3SZ`).
    StartTime,
    /// `REQ(NAME?ALT)`: a request header (`:method`, `:path`, `:authority` included).
    Req(Vec<String>),
    /// `RESP(NAME?ALT)`: a response header.
    Resp(Vec<String>),
    /// `PROTOCOL`.
    Protocol,
    /// `RESPONSE_CODE`.
    ResponseCode,
    /// `RESPONSE_FLAGS`.
    ResponseFlags,
    /// `RESPONSE_CODE_DETAILS`.
    ResponseCodeDetails,
    /// `CONNECTION_TERMINATION_DETAILS`: always `-`, as in Envoy without a network filter that
    /// closes connections with details (RBAC, ext_authz), which ferry-proxy does not have.
    ConnectionTerminationDetails,
    /// `UPSTREAM_TRANSPORT_FAILURE_REASON` (`delayed_connect_error:_Connection_refused`).
    UpstreamTransportFailureReason,
    /// `BYTES_RECEIVED`: request body bytes.
    BytesReceived,
    /// `BYTES_SENT`: response body bytes.
    BytesSent,
    /// `DURATION`: milliseconds from the request's start to the response's end.
    Duration,
    /// `UPSTREAM_HOST`.
    UpstreamHost,
    /// `UPSTREAM_CLUSTER` / `UPSTREAM_CLUSTER_RAW`.
    UpstreamCluster,
    /// `UPSTREAM_LOCAL_ADDRESS`: the local address of the last attempt's connection.
    UpstreamLocalAddress,
    /// `DOWNSTREAM_LOCAL_ADDRESS`.
    DownstreamLocalAddress,
    /// `DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT`.
    DownstreamLocalAddressWithoutPort,
    /// `DOWNSTREAM_REMOTE_ADDRESS`.
    DownstreamRemoteAddress,
    /// `DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT`.
    DownstreamRemoteAddressWithoutPort,
    /// `REQUESTED_SERVER_NAME`: the downstream TLS SNI; ferry-proxy's listeners are plaintext
    /// (downstream TLS is refused), so `-`, as Envoy prints for a plaintext connection.
    RequestedServerName,
    /// `ROUTE_NAME`.
    RouteName,
}

/// Literal text or an operator with an optional length limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// An operator and its `:N` limit.
    Op(Operator, Option<usize>),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

/// What a log line is rendered from.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the request started.
    pub start: SystemTime,
    /// Start to end of the response.
    pub duration: Duration,
    /// The request's method, path and authority.
    pub method: &'a str,
    /// The request path (with query).
    pub path: &'a str,
    /// The request authority.
    pub authority: &'a str,
    /// The downstream HTTP version.
    pub version: Version,
    /// Request headers (after the HCM's own mutations, as Envoy logs them).
    pub request_headers: &'a HeaderMap,
    /// Response headers.
    pub response_headers: &'a HeaderMap,
    /// Response status.
    pub status: u16,
    /// Response flags (`-` for none).
    pub response_flags: &'a str,
    /// Response code details.
    pub details: &'a str,
    /// Why the last attempt's connection failed (`UPSTREAM_TRANSPORT_FAILURE_REASON`).
    pub transport_failure_reason: Option<&'a str>,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// The last attempt's host.
    pub upstream_host: Option<SocketAddr>,
    /// The local address of the last attempt's connection.
    pub upstream_local: Option<SocketAddr>,
    /// The cluster the router picked.
    pub upstream_cluster: Option<&'a str>,
    /// The route's name.
    pub route_name: Option<&'a str>,
    /// The listener's local address.
    pub downstream_local: SocketAddr,
    /// The client.
    pub downstream_remote: SocketAddr,
}

/// Why a format string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFormat(pub String);

fn operator(name: &str, arg: Option<&str>) -> Result<Operator, InvalidFormat> {
    let headers = |arg: Option<&str>| -> Result<Vec<String>, InvalidFormat> {
        let arg =
            arg.ok_or_else(|| InvalidFormat(format!("%{name}%: a header name is required")))?;
        Ok(arg.split('?').map(str::to_ascii_lowercase).collect())
    };
    let no_arg = |op: Operator| match arg {
        None => Ok(op),
        Some(_) => Err(InvalidFormat(format!(
            "%{name}(...)%: arguments are not implemented by ferry-proxy"
        ))),
    };
    match name {
        "REQ" => Ok(Operator::Req(headers(arg)?)),
        "RESP" => Ok(Operator::Resp(headers(arg)?)),
        "START_TIME" => no_arg(Operator::StartTime),
        "PROTOCOL" => no_arg(Operator::Protocol),
        "RESPONSE_CODE" => no_arg(Operator::ResponseCode),
        "RESPONSE_FLAGS" => no_arg(Operator::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => no_arg(Operator::ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => no_arg(Operator::ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Operator::UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => no_arg(Operator::BytesReceived),
        "BYTES_SENT" => no_arg(Operator::BytesSent),
        "DURATION" => no_arg(Operator::Duration),
        "UPSTREAM_HOST" => no_arg(Operator::UpstreamHost),
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => no_arg(Operator::UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => no_arg(Operator::UpstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Operator::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            no_arg(Operator::DownstreamLocalAddressWithoutPort)
        }
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_PEER_ADDRESS" => {
            no_arg(Operator::DownstreamRemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Operator::DownstreamRemoteAddressWithoutPort)
        }
        "REQUESTED_SERVER_NAME" => no_arg(Operator::RequestedServerName),
        "ROUTE_NAME" => no_arg(Operator::RouteName),
        other => Err(InvalidFormat(format!(
            "command operator %{other}% is not implemented by ferry-proxy"
        ))),
    }
}

impl Template {
    /// Parses a format string.
    pub fn parse(format: &str) -> Result<Self, InvalidFormat> {
        let mut pieces = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 1..];
            let end = after.find('%').ok_or_else(|| {
                InvalidFormat(format!("unterminated command operator in {format:?}"))
            })?;
            let command = &after[..end];
            rest = &after[end + 1..];
            let (head, limit) = match command.rsplit_once("):") {
                Some((head, n)) => (format!("{head})"), Some(n)),
                None => match command.split_once(':').filter(|_| !command.contains('(')) {
                    Some((head, n)) => (head.to_owned(), Some(n)),
                    None => (command.to_owned(), None),
                },
            };
            let limit =
                match limit {
                    Some(n) => Some(n.parse::<usize>().map_err(|_| {
                        InvalidFormat(format!("%{command}%: {n:?} is not a length"))
                    })?),
                    None => None,
                };
            let (name, arg) = match head.split_once('(') {
                Some((name, arg)) => {
                    let arg = arg.strip_suffix(')').ok_or_else(|| {
                        InvalidFormat(format!("%{command}%: missing closing parenthesis"))
                    })?;
                    (name.to_owned(), Some(arg.to_owned()))
                }
                None => (head.clone(), None),
            };
            pieces.push(Piece::Op(operator(&name, arg.as_deref())?, limit));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// Renders the line (`-` for missing values).
    pub fn render(&self, entry: &Entry<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Op(op, limit) => {
                    let value = value(op, entry).unwrap_or_else(|| "-".to_owned());
                    match limit {
                        Some(n) => out.extend(value.chars().take(*n)),
                        None => out.push_str(&value),
                    }
                }
            }
        }
        out
    }

    /// The JSON value of a template that is a JSON field: a lone numeric operator as a number,
    /// a lone missing value as `null`, anything else as a string.
    pub fn render_json(&self, entry: &Entry<'_>) -> serde_json::Value {
        if let [Piece::Op(op, None)] = self.0.as_slice() {
            let Some(value) = value(op, entry) else {
                return serde_json::Value::Null;
            };
            let numeric = matches!(
                op,
                Operator::ResponseCode
                    | Operator::BytesReceived
                    | Operator::BytesSent
                    | Operator::Duration
            );
            if let (true, Ok(n)) = (numeric, value.parse::<u64>()) {
                return n.into();
            }
            return value.into();
        }
        self.render(entry).into()
    }
}

fn header(
    headers: &HeaderMap,
    names: &[String],
    entry: &Entry<'_>,
    request: bool,
) -> Option<String> {
    names.iter().find_map(|name| {
        if request {
            match name.as_str() {
                ":method" => return Some(entry.method.to_owned()),
                ":path" => return Some(entry.path.to_owned()),
                ":authority" | "host" => return Some(entry.authority.to_owned()),
                _ => {}
            }
        }
        headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

fn value(op: &Operator, e: &Entry<'_>) -> Option<String> {
    Some(match op {
        Operator::StartTime => start_time(e.start),
        Operator::Req(names) => return header(e.request_headers, names, e, true),
        Operator::Resp(names) => return header(e.response_headers, names, e, false),
        Operator::Protocol => match e.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .to_owned(),
        Operator::ResponseCode => e.status.to_string(),
        Operator::ResponseFlags => e.response_flags.to_owned(),
        Operator::ResponseCodeDetails => e.details.to_owned(),
        Operator::BytesReceived => e.bytes_received.to_string(),
        Operator::BytesSent => e.bytes_sent.to_string(),
        Operator::Duration => e.duration.as_millis().to_string(),
        Operator::UpstreamHost => e.upstream_host?.to_string(),
        Operator::UpstreamCluster => e.upstream_cluster?.to_owned(),
        Operator::RouteName => e.route_name.filter(|r| !r.is_empty())?.to_owned(),
        Operator::DownstreamLocalAddress => e.downstream_local.to_string(),
        Operator::DownstreamLocalAddressWithoutPort => e.downstream_local.ip().to_string(),
        Operator::DownstreamRemoteAddress => e.downstream_remote.to_string(),
        Operator::DownstreamRemoteAddressWithoutPort => e.downstream_remote.ip().to_string(),
        Operator::UpstreamLocalAddress => e.upstream_local?.to_string(),
        Operator::UpstreamTransportFailureReason => e.transport_failure_reason?.to_owned(),
        Operator::ConnectionTerminationDetails | Operator::RequestedServerName => return None,
    })
}

/// `2026-11-21T18:34:43.123Z`.
pub fn start_time(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

    fn entry<'a>(req: &'a HeaderMap, resp: &'a HeaderMap) -> Entry<'a> {
        Entry {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_750_083_123),
            duration: Duration::from_millis(12),
            method: "GET",
            path: "/reviews/1",
            authority: "reviews:9080",
            version: Version::HTTP_11,
            request_headers: req,
            response_headers: resp,
            status: 503,
            response_flags: "UH",
            details: "no_healthy_upstream",
            transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 19,
            upstream_host: None,
            upstream_local: None,
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local"),
            route_name: Some("default"),
            downstream_local: "127.0.0.10:15001".parse().unwrap(),
            downstream_remote: "127.0.0.10:40000".parse().unwrap(),
        }
    }

    #[test]
    fn istio_default_format_renders() {
        let mut req = HeaderMap::new();
        req.insert("x-request-id", "abc".parse().unwrap());
        let resp = HeaderMap::new();
        let t = Template::parse(ISTIO).unwrap();
        let line = t.render(&entry(&req, &resp));
        assert_eq!(
            line,
            "[2025-11-21T18:34:43.123Z] \"GET /reviews/1 HTTP/1.1\" 503 UH no_healthy_upstream - \"-\" 0 19 12 - \"-\" \"-\" \"abc\" \"reviews:9080\" \"-\" outbound|9080||reviews.default.svc.cluster.local - 127.0.0.10:15001 127.0.0.10:40000 - default\n"
        );
        assert!(Template::parse(DEFAULT_FORMAT).is_ok());
    }

    #[test]
    fn upstream_connection_operators_render_what_the_router_learned() {
        let (req, resp) = (HeaderMap::new(), HeaderMap::new());
        let mut e = entry(&req, &resp);
        let t = Template::parse(
            "%UPSTREAM_HOST% %UPSTREAM_LOCAL_ADDRESS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\"",
        )
        .unwrap();
        assert_eq!(t.render(&e), "- - \"-\"");
        e.upstream_host = Some("127.0.0.1:9080".parse().unwrap());
        e.upstream_local = Some("127.0.0.1:40100".parse().unwrap());
        assert_eq!(t.render(&e), "127.0.0.1:9080 127.0.0.1:40100 \"-\"");
        e.upstream_local = None;
        e.transport_failure_reason = Some("delayed_connect_error:_Connection_refused");
        assert_eq!(
            t.render(&e),
            "127.0.0.1:9080 - \"delayed_connect_error:_Connection_refused\""
        );
    }

    #[test]
    fn limits_alternatives_and_json_types() {
        let mut req = HeaderMap::new();
        req.insert("x-envoy-original-path", "/original".parse().unwrap());
        let resp = HeaderMap::new();
        let e = entry(&req, &resp);
        let t =
            Template::parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):4%|%REQ(:AUTHORITY):7%").unwrap();
        assert_eq!(t.render(&e), "/ori|reviews");
        assert_eq!(
            Template::parse("%RESPONSE_CODE%").unwrap().render_json(&e),
            503
        );
        assert_eq!(
            Template::parse("%UPSTREAM_HOST%").unwrap().render_json(&e),
            serde_json::Value::Null
        );
    }

    #[test]
    fn unknown_operators_are_refused_by_name() {
        let e = Template::parse("%DYNAMIC_METADATA(istio.mixer:status)%").unwrap_err();
        assert!(e.0.contains("DYNAMIC_METADATA"), "{e}");
        assert!(Template::parse("%START_TIME(%s)%").is_err());
        assert!(Template::parse("%RESPONSE_CODE").is_err());
    }
}
