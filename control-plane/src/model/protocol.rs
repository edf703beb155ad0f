//! Istio's protocol selection for service ports: the Kubernetes `appProtocol` first, then the
//! port name (`http`, `http-web`, `grpc-api`, `tcp-db`, ...), case-insensitive; ServiceEntry
//! ports say their protocol outright. Anything else is `Unknown` (Istio sniffs it).

use super::Protocol;

impl Protocol {
    /// Parses an Istio protocol name (`HTTP`, `http2`, `GRPC`, `TLS`, `Mongo`, ...). Protocols
    /// Istio treats as opaque TCP by default (`mongo`, `redis`, `mysql`) map to [`Protocol::Tcp`];
    /// `grpc-web` is HTTP/1.1 on the wire. Returns `None` for UDP, which sidecars do not proxy.
    pub fn from_istio_name(name: &str) -> Option<Protocol> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" | "grpc-web" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" | "mongo" | "redis" | "mysql" => Protocol::Tcp,
            "udp" => return None,
            _ => Protocol::Unknown,
        })
    }

    /// Infers the protocol of a Kubernetes service port as Istio does: `appProtocol` (including
    /// Kubernetes' `kubernetes.io/h2c`, `kubernetes.io/ws`, `kubernetes.io/wss`), else the part
    /// of the port name before the first `-`. `grpc-web-*` names are gRPC-Web (HTTP).
    pub fn from_kubernetes_port(name: &str, app_protocol: Option<&str>) -> Protocol {
        let name = match app_protocol {
            Some("kubernetes.io/h2c") => return Protocol::Http2,
            Some("kubernetes.io/ws") => return Protocol::Http,
            Some("kubernetes.io/wss") => return Protocol::Https,
            Some(app) => app,
            None => name,
        };
        if name.to_ascii_lowercase().starts_with("grpc-web") {
            return Protocol::Http;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        Protocol::from_istio_name(prefix).unwrap_or(Protocol::Unknown)
    }

    /// True for the protocols Envoy handles with the HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_port_inference() {
        let p = Protocol::from_kubernetes_port;
        assert_eq!(p("http", None), Protocol::Http);
        assert_eq!(p("http-web", None), Protocol::Http);
        assert_eq!(p("HTTP2-x", None), Protocol::Http2);
        assert_eq!(p("grpc", None), Protocol::Grpc);
        assert_eq!(p("grpc-web", None), Protocol::Http);
        assert_eq!(p("grpc-api", None), Protocol::Grpc);
        assert_eq!(p("tcp-db", None), Protocol::Tcp);
        assert_eq!(p("tls", None), Protocol::Tls);
        assert_eq!(p("https-admin", None), Protocol::Https);
        assert_eq!(p("mongo", None), Protocol::Tcp);
        assert_eq!(
            p("httpbin", None),
            Protocol::Unknown,
            "a prefix must end at '-'"
        );
        assert_eq!(p("", None), Protocol::Unknown);
        assert_eq!(p("web", Some("http")), Protocol::Http);
        assert_eq!(p("http", Some("grpc")), Protocol::Grpc, "appProtocol wins");
        assert_eq!(p("x", Some("kubernetes.io/h2c")), Protocol::Http2);
        assert_eq!(p("x", Some("kubernetes.io/ws")), Protocol::Http);
    }

    #[test]
    fn istio_names() {
        assert_eq!(Protocol::from_istio_name("HTTP"), Some(Protocol::Http));
        assert_eq!(Protocol::from_istio_name("GRPC"), Some(Protocol::Grpc));
        assert_eq!(Protocol::from_istio_name("UDP"), None);
        assert_eq!(Protocol::from_istio_name("thrift"), Some(Protocol::Unknown));
    }
}
