//! DNS for STRICT_DNS and LOGICAL_DNS clusters: the cluster's DNS settings and a resolver on
//! hickory-resolver.
//!
//! The resolver reads the system configuration (`/etc/resolv.conf`) and, like c-ares in Envoy,
//! answers from `/etc/hosts` first, so `localhost` and names pinned there resolve without a
//! name server. The refresh loop that swaps a cluster's hosts lives with the cluster
//! ([`super::manager`]).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use xds_proto::envoy::config::cluster::v3 as proto;

use super::InvalidCluster;
use super::config::duration;

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// AUTO: IPv6 first, IPv4 if there is none.
    Auto,
    /// V4_ONLY.
    V4Only,
    /// V6_ONLY.
    V6Only,
    /// V4_PREFERRED: IPv4 first, IPv6 if there is none.
    V4Preferred,
    /// ALL: both families.
    All,
}

/// A DNS cluster's resolution settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// `dns_refresh_rate` (default 5 s).
    pub refresh_rate: Duration,
    /// `dns_failure_refresh_rate`: (base, max) backoff after a failed resolution; the refresh
    /// rate when absent.
    pub failure_refresh: Option<(Duration, Duration)>,
    /// `respect_dns_ttl`: refresh when the records expire instead of at the refresh rate.
    pub respect_dns_ttl: bool,
    /// `dns_jitter`: up to this much random delay added to each refresh.
    pub jitter: Option<Duration>,
    /// `dns_lookup_family`.
    pub lookup_family: DnsLookupFamily,
}

impl DnsConfig {
    /// Reads the DNS fields of a STRICT_DNS or LOGICAL_DNS cluster.
    #[allow(deprecated)]
    pub(crate) fn parse(c: &proto::Cluster) -> Result<Self, InvalidCluster> {
        use proto::cluster::DnsLookupFamily as F;
        let name = c.name.as_str();
        let refresh_rate = match &c.dns_refresh_rate {
            Some(d) => {
                let d = duration(name, "dns_refresh_rate", d)?;
                if d < Duration::from_millis(1) {
                    return Err(InvalidCluster::new(
                        name,
                        "dns_refresh_rate",
                        "must be at least 1ms",
                    ));
                }
                d
            }
            None => DEFAULT_DNS_REFRESH_RATE,
        };
        let failure_refresh = match &c.dns_failure_refresh_rate {
            None => None,
            Some(rate) => {
                let base = rate
                    .base_interval
                    .as_ref()
                    .map(|d| duration(name, "dns_failure_refresh_rate.base_interval", d))
                    .transpose()?
                    .filter(|d| *d >= Duration::from_millis(1))
                    .ok_or_else(|| {
                        InvalidCluster::new(
                            name,
                            "dns_failure_refresh_rate.base_interval",
                            "is required and must be at least 1ms",
                        )
                    })?;
                let max = rate
                    .max_interval
                    .as_ref()
                    .map(|d| duration(name, "dns_failure_refresh_rate.max_interval", d))
                    .transpose()?
                    .unwrap_or(base * 10);
                if max < base {
                    return Err(InvalidCluster::new(
                        name,
                        "dns_failure_refresh_rate.max_interval",
                        "must not be less than base_interval",
                    ));
                }
                Some((base, max))
            }
        };
        let lookup_family = match F::try_from(c.dns_lookup_family) {
            Ok(F::Auto) => DnsLookupFamily::Auto,
            Ok(F::V4Only) => DnsLookupFamily::V4Only,
            Ok(F::V6Only) => DnsLookupFamily::V6Only,
            Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
            Ok(F::All) => DnsLookupFamily::All,
            Err(_) => {
                return Err(InvalidCluster::new(
                    name,
                    "dns_lookup_family",
                    format!("unknown value {}", c.dns_lookup_family),
                ));
            }
        };
        Ok(Self {
            refresh_rate,
            failure_refresh,
            respect_dns_ttl: c.respect_dns_ttl,
            jitter: c
                .dns_jitter
                .as_ref()
                .map(|d| duration(name, "dns_jitter", d))
                .transpose()?,
            lookup_family,
        })
    }
}

impl DnsConfig {
    /// How long to wait before the next resolution (jitter aside): after `failures`
    /// consecutive failed rounds, `dns_failure_refresh_rate` doubling from its base up to its
    /// max (or the refresh rate); after a success, the records' TTL with `respect_dns_ttl`, else
    /// `dns_refresh_rate`.
    pub fn next_refresh(&self, failures: u32, ttl: Option<Duration>) -> Duration {
        if failures > 0 {
            return match self.failure_refresh {
                Some((base, max)) => base.saturating_mul(1 << (failures.min(16) - 1)).min(max),
                None => self.refresh_rate,
            };
        }
        match ttl {
            Some(ttl) if self.respect_dns_ttl && !ttl.is_zero() => ttl,
            _ => self.refresh_rate,
        }
    }
}

/// A resolver for one DNS cluster.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsResolver")
    }
}

impl DnsResolver {
    /// A resolver with the system configuration (hosts file first) and the given family.
    pub fn new(family: DnsLookupFamily) -> Result<Self, String> {
        let strategy = match family {
            DnsLookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
            DnsLookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
            DnsLookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
            DnsLookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
            DnsLookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        };
        let configure = |mut builder: ResolverBuilder<TokioRuntimeProvider>| {
            let options = builder.options_mut();
            options.use_hosts_file = ResolveHosts::Always;
            options.ip_strategy = strategy;
            // Ferry refreshes on its own schedule; a cache would only hide changes.
            options.cache_size = 0;
            builder.build()
        };
        let system = TokioResolver::builder_tokio().and_then(configure);
        let resolver = match system {
            Ok(resolver) => resolver,
            Err(error) => {
                // No usable resolv.conf (minimal containers): /etc/hosts still answers.
                tracing::warn!(%error, "no system DNS configuration; resolving from /etc/hosts only");
                let empty = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
                configure(TokioResolver::builder_with_config(
                    empty,
                    TokioRuntimeProvider::default(),
                ))
                .map_err(|e| e.to_string())?
            }
        };
        Ok(Self { resolver })
    }

    /// Resolves `host`: its addresses in answer order and the smallest record TTL.
    pub async fn resolve(&self, host: &str) -> Result<(Vec<IpAddr>, Option<Duration>), String> {
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|s| Duration::from_secs(u64::from(s)));
        let addresses: Vec<IpAddr> = lookup.iter().collect();
        if addresses.is_empty() {
            return Err(format!("no addresses for {host}"));
        }
        Ok((addresses, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> DnsConfig {
        let proto: proto::Cluster = xds_proto::json::from_yaml_str(yaml).unwrap();
        DnsConfig::parse(&proto).unwrap()
    }

    #[test]
    fn refresh_follows_rate_ttl_and_failure_backoff() {
        let plain = config("name: d");
        assert_eq!(plain.refresh_rate, DEFAULT_DNS_REFRESH_RATE);
        assert_eq!(plain.lookup_family, DnsLookupFamily::Auto);
        assert_eq!(
            plain.next_refresh(0, Some(Duration::from_secs(30))),
            Duration::from_secs(5)
        );
        assert_eq!(plain.next_refresh(3, None), Duration::from_secs(5));

        let ttl = config("name: d\nrespect_dns_ttl: true\ndns_refresh_rate: 1s");
        assert_eq!(
            ttl.next_refresh(0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(ttl.next_refresh(0, None), Duration::from_secs(1));

        let backoff =
            config("name: d\ndns_failure_refresh_rate: { base_interval: 1s, max_interval: 5s }");
        let waits: Vec<u64> = (1..=5)
            .map(|f| backoff.next_refresh(f, None).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn invalid_dns_settings_are_refused() {
        for (yaml, field) in [
            ("name: d\ndns_refresh_rate: 0s", "dns_refresh_rate"),
            (
                "name: d\ndns_failure_refresh_rate: {}",
                "dns_failure_refresh_rate.base_interval",
            ),
            (
                "name: d\ndns_failure_refresh_rate: { base_interval: 2s, max_interval: 1s }",
                "dns_failure_refresh_rate.max_interval",
            ),
        ] {
            let proto: proto::Cluster = xds_proto::json::from_yaml_str(yaml).unwrap();
            assert_eq!(DnsConfig::parse(&proto).unwrap_err().field, field, "{yaml}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        let resolver = DnsResolver::new(DnsLookupFamily::V4Only).unwrap();
        let (ips, _) = resolver.resolve("localhost").await.unwrap();
        assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    }
}
