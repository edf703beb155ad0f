//! `DestinationRule` (networking.istio.io): what happens to traffic for a host after routing:
//! subsets, load balancing, connection pools (Envoy circuit breakers), outlier detection, TLS,
//! per-port settings. Mirrors Istio's `networking.v1.DestinationRule` including deprecated fields
//! still in use (`consecutiveErrors`, `warmupDurationSecs`, `consistentHash.minimumRingSize`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, PortSelector, WorkloadSelector};

/// The spec of a DestinationRule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DestinationRule {
    /// The service the rule applies to (short name, FQDN or ServiceEntry host); required.
    pub host: String,
    /// Policy for all ports and subsets unless overridden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of endpoints (versions), selected by labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces the rule is visible to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Apply the rule only to these client workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// Traffic policy for a destination, subset or (without `portLevelSettings`) port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrafficPolicy {
    /// Load balancing algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits (circuit breakers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of misbehaving endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides for individual ports; they do not inherit the fields above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel TCP over CONNECT/POST to another host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// Send the PROXY protocol header upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Limit concurrent retries relative to active requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Traffic policy for one port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PortTrafficPolicy {
    /// The port the policy applies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// Load balancing algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of misbehaving endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Subset {
    /// Name, referenced by VirtualService destinations and used in cluster names; required.
    pub name: String,
    /// Endpoint labels that select the subset.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the rule's policy, field by field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing: one of `simple` or `consistentHash`, plus locality and warmup settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware weighting and failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Deprecated slow-start window; use `warmup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start for new endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
    /// Envoy zone-aware routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
}

/// Standard load balancing algorithms, as Istio spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default (LEAST_REQUEST).
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Random choice.
    Random,
    /// Send to the address the client asked for.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Power of two choices, fewest active requests.
    LeastRequest,
}

/// Consistent hashing: one hash key, and one of `ringHash` or `maglev`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash on this cookie, generating it when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Maglev algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated; use `ringHash.minimumRingSize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// The cookie hashed on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpCookie {
    /// Cookie name; required.
    pub name: String,
    /// Path of the generated cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of the generated cookie; zero makes a session cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Extra attributes of the generated cookie.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// An attribute of a generated cookie.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CookieAttribute {
    /// Attribute name; required.
    pub name: String,
    /// Attribute value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Ring hash settings.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring (Envoy default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MagLev {
    /// Lookup table size, a prime (Envoy default 65537).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Locality load balancing: one of `distribute`, `failover`, `failoverPriority`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalityLbSetting {
    /// Explicit traffic shares per locality.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region to fail over to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels ordering endpoints by priority.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Enable locality load balancing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Traffic shares from one locality.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalityDistribute {
    /// Originating locality, `region/zone/subzone`, wildcards allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Upstream locality to weight; weights add up to 100.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

/// Failover between regions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalityFailover {
    /// Originating region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Region to fail over to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Slow start for new endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WarmupConfiguration {
    /// Length of the warmup window; required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Starting share of traffic, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// Curve of the traffic increase (1 = linear).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Envoy zone-aware routing settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ZoneAwareLbSetting {
    /// Enable zone-aware routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Region to fail over to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels ordering endpoints by priority.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Minimum local hosts for zone-aware routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

/// Connection and request limits, for TCP and HTTP.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConnectionPoolSettings {
    /// Limits for all connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// Limits for HTTP requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// TCP connection settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TcpSettings {
    /// Maximum connections to the destination (Envoy `max_connections`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    /// Connect timeout (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// SO_KEEPALIVE settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of TCP connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive settings.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TcpKeepalive {
    /// Probes sent before the connection is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before probes start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Interval between probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// HTTP connection pool settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Maximum queued requests (Envoy `max_pending_requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests (Envoy `max_requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    /// Requests per connection; 0 means unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    /// Maximum outstanding retries (Envoy `max_retries`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    /// Idle timeout of pooled connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 is upgraded to HTTP/2 upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Keep the client's protocol upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PING keepalive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// Upgrade of HTTP/1.1 connections to HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Use the mesh-wide setting.
    Default,
    /// Do not upgrade.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

/// HTTP/2 PING keepalive.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Http2KeepAlive {
    /// Interval between PINGs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time to wait for a PING response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Ejection of endpoints that keep failing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Deprecated: Istio maps it to Envoy's consecutive *gateway* failures (502/503/504) with
    /// 5xx enforcement off, not to `consecutive5xxErrors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
    /// Locally originated failures before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502/503/504 and connect failures before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx responses before ejection (default 5; 0 disables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Minimum ejection time, multiplied by the ejection count (default 30s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    /// Below this share of healthy endpoints, detection is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
    /// Count local origin failures separately.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Status codes counted as errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// TLS towards the upstream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientTlsSettings {
    /// Whether and how to use TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// CA bundle file to verify the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Secret holding the client certificate, key and CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// SANs the server certificate must carry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip server certificate verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// Upstream TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plain text.
    Disable,
    /// TLS, server verified.
    Simple,
    /// TLS with a client certificate from files or a secret.
    Mutual,
    /// mTLS with the workload certificate Istio provisions.
    IstioMutual,
}

/// Tunnelling TCP through a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host the connection is tunnelled to; required.
    pub target_host: String,
    /// Port the connection is tunnelled to; required.
    pub target_port: u32,
}

/// PROXY protocol towards the upstream.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyProtocol {
    /// Protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProxyProtocolVersion {
    /// Human readable.
    V1,
    /// Binary.
    V2,
}

/// A cap on concurrent retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetryBudget {
    /// Retries as a percentage of active requests (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries always allowed (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    /// Window over which requests are counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

impl SimpleLb {
    /// The algorithm Istio actually configures: UNSPECIFIED and the deprecated LEAST_CONN are
    /// LEAST_REQUEST.
    pub fn effective(self) -> SimpleLb {
        match self {
            SimpleLb::Unspecified | SimpleLb::LeastConn => SimpleLb::LeastRequest,
            other => other,
        }
    }
}

/// What a consistent hash hashes on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HashKey<'a> {
    /// A request header.
    Header(&'a str),
    /// A cookie (generated when absent).
    Cookie(&'a HttpCookie),
    /// The source IP.
    SourceIp,
    /// A query parameter.
    QueryParameter(&'a str),
}

/// The consistent hash algorithm and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Ring hash with this minimum ring size (`None`: Envoy's default, 1024).
    RingHash(Option<u64>),
    /// Maglev with this table size (`None`: Envoy's default, 65537).
    Maglev(Option<u64>),
}

impl ConsistentHashLb {
    /// The hash key; `None` when none is set (validation refuses that).
    pub fn key(&self) -> Option<HashKey<'_>> {
        if let Some(h) = &self.http_header_name {
            Some(HashKey::Header(h))
        } else if let Some(c) = &self.http_cookie {
            Some(HashKey::Cookie(c))
        } else if self.use_source_ip == Some(true) {
            Some(HashKey::SourceIp)
        } else {
            self.http_query_parameter_name
                .as_deref()
                .map(HashKey::QueryParameter)
        }
    }

    /// The algorithm: maglev when asked for, otherwise ring hash with `ringHash.minimumRingSize`
    /// or the deprecated top-level `minimumRingSize`.
    pub fn algorithm(&self) -> HashAlgorithm {
        match (&self.maglev, &self.ring_hash) {
            (Some(m), _) => HashAlgorithm::Maglev(m.table_size),
            (None, Some(r)) => {
                HashAlgorithm::RingHash(r.minimum_ring_size.or(self.minimum_ring_size))
            }
            (None, None) => HashAlgorithm::RingHash(self.minimum_ring_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_hash_key_and_algorithm() {
        let ch = ConsistentHashLb {
            http_header_name: Some("x-user".into()),
            minimum_ring_size: Some(2048),
            ..Default::default()
        };
        assert_eq!(ch.key(), Some(HashKey::Header("x-user")));
        assert_eq!(ch.algorithm(), HashAlgorithm::RingHash(Some(2048)));
        let ch = ConsistentHashLb {
            use_source_ip: Some(true),
            maglev: Some(MagLev { table_size: None }),
            ..Default::default()
        };
        assert_eq!(ch.key(), Some(HashKey::SourceIp));
        assert_eq!(ch.algorithm(), HashAlgorithm::Maglev(None));
        assert_eq!(SimpleLb::LeastConn.effective(), SimpleLb::LeastRequest);
    }
}
