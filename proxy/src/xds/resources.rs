//! The four xDS resource kinds Ferry subscribes to, and the one place an `Any` from the wire becomes
//! a validated domain type. Every resource of a response passes through [`validate`]; its error
//! names the resource and the field, and becomes the NACK's `error_detail` verbatim.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use xds_proto::envoy::config::cluster::v3::Cluster as ClusterProto;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener as ListenerProto;
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url;

use crate::cluster::{ClusterConfig, InvalidCluster, LoadAssignment};
use crate::listener::{InvalidListener, Listener};
use crate::route::{InvalidRoute, RouteTable};

/// Envoy's default `initial_fetch_timeout`: how long a listener or cluster warms before it is
/// activated without what it waits for.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// An xDS resource kind Ferry understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
}

impl Kind {
    /// All kinds, in the order Envoy subscribes (clusters first, so endpoints can follow).
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    /// The kind a type URL names, `None` for kinds Ferry does not subscribe to.
    pub fn from_type_url(url: &str) -> Option<Self> {
        match url {
            type_url::LISTENER => Some(Self::Listener),
            type_url::ROUTE_CONFIGURATION => Some(Self::Route),
            type_url::CLUSTER => Some(Self::Cluster),
            type_url::CLUSTER_LOAD_ASSIGNMENT => Some(Self::Endpoint),
            _ => None,
        }
    }

    /// The kind's type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Listener => type_url::LISTENER,
            Self::Route => type_url::ROUTE_CONFIGURATION,
            Self::Cluster => type_url::CLUSTER,
            Self::Endpoint => type_url::CLUSTER_LOAD_ASSIGNMENT,
        }
    }

    /// Whether the kind is subscribed by wildcard (LDS, CDS) rather than by name (RDS, EDS).
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }

    /// `LDS`, `RDS`, `CDS` or `EDS`, for logs.
    pub fn short_name(self) -> &'static str {
        type_url::short_name(self.type_url())
    }

    /// The index of the kind in per-kind arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A validated resource of one of the four kinds.
#[derive(Debug, Clone)]
pub enum Domain {
    /// A listener.
    Listener(Arc<Listener>),
    /// A route configuration.
    Route(Arc<RouteTable>),
    /// A cluster.
    Cluster(Arc<ClusterConfig>),
    /// A cluster load assignment.
    Endpoint(Arc<LoadAssignment>),
}

/// One resource as it came off the wire, decoded and validated.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The resource name (listener, route configuration or cluster name; the load assignment's
    /// `cluster_name`).
    pub name: String,
    /// The raw resource, kept for `/config_dump`.
    pub raw: Any,
    /// The validated domain value.
    pub domain: Domain,
    /// How long the resource may warm before it is activated anyway; `None` waits forever.
    pub warm_timeout: Option<Duration>,
}

/// A resource Ferry refuses. The Display is the NACK's `error_detail.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResource {
    /// The response carries a type Ferry never subscribes to.
    #[error("type {type_url}: unsupported resource type")]
    UnsupportedType {
        /// The response's type URL.
        type_url: String,
    },
    /// A resource inside the response is not of the response's type.
    #[error("{kind} resource [{index}]: type_url: expected {expected}, got {actual}")]
    WrongType {
        /// `LDS`, `CDS`...
        kind: &'static str,
        /// The resource's position in the response.
        index: usize,
        /// The response's type URL.
        expected: String,
        /// The resource's own type URL.
        actual: String,
    },
    /// A resource's bytes do not decode as its type.
    #[error("{kind} resource [{index}]: value: cannot decode {type_url}: {reason}")]
    Decode {
        /// `LDS`, `CDS`...
        kind: &'static str,
        /// The resource's position in the response.
        index: usize,
        /// The type being decoded.
        type_url: String,
        /// The decoder's reason.
        reason: String,
    },
    /// A resource without a name cannot be tracked.
    #[error("{kind} resource [{index}]: name: must not be empty")]
    EmptyName {
        /// `LDS`, `CDS`...
        kind: &'static str,
        /// The resource's position in the response.
        index: usize,
    },
    /// The same name appears twice in one response.
    #[error("{kind} resource {name}: name: duplicate in one response")]
    Duplicate {
        /// `LDS`, `CDS`...
        kind: &'static str,
        /// The duplicated name.
        name: String,
    },
    /// A delta resource's name differs from the name inside it.
    #[error("{kind} resource {name}: name: the resource inside is named {inner}")]
    NameMismatch {
        /// `LDS`, `CDS`...
        kind: &'static str,
        /// The name the delta envelope gives.
        name: String,
        /// The name inside the resource.
        inner: String,
    },
    /// The listener conversion refused it.
    #[error(transparent)]
    Listener(#[from] InvalidListener),
    /// The route configuration conversion refused it.
    #[error(transparent)]
    Route(#[from] InvalidRoute),
    /// The cluster or load assignment conversion refused it.
    #[error(transparent)]
    Cluster(#[from] InvalidCluster),
}

fn decode<M: Message + Default>(kind: Kind, index: usize, any: &Any) -> Result<M, InvalidResource> {
    if any.type_url != kind.type_url() {
        return Err(InvalidResource::WrongType {
            kind: kind.short_name(),
            index,
            expected: kind.type_url().to_owned(),
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| InvalidResource::Decode {
        kind: kind.short_name(),
        index,
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })
}

/// The warm timeout a config source asks for: absent means Envoy's default, zero means forever.
fn fetch_timeout(timeout: Option<&xds_proto::google::protobuf::Duration>) -> Option<Duration> {
    match timeout {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(d) if d.seconds <= 0 && d.nanos <= 0 => None,
        Some(d) => Some(
            Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)),
        ),
    }
}

/// How long a listener warms for its RDS route configurations: the longest
/// `initial_fetch_timeout` of its HTTP connection managers' RDS config sources (`None`, forever,
/// when any of them says zero, as Istio's do).
fn rds_fetch_timeout(listener: &ListenerProto) -> Option<Duration> {
    use xds_proto::envoy::config::listener::v3::filter::ConfigType;
    use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    let filters = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|chain| chain.filters.iter());
    let mut longest = Some(Duration::ZERO);
    for filter in filters {
        let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        let Ok(hcm) = xds_proto::any::unpack::<HttpConnectionManager>(any) else {
            continue;
        };
        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let timeout = initial_fetch_timeout(rds.config_source.as_ref());
            longest = longest.zip(timeout).map(|(a, b)| a.max(b));
        }
    }
    longest
}

/// Decodes and validates the resource at `index` of a response of kind `kind`.
pub fn validate(kind: Kind, index: usize, any: &Any) -> Result<Validated, InvalidResource> {
    let short = kind.short_name();
    let (name, domain, warm_timeout) = match kind {
        Kind::Listener => {
            let proto: ListenerProto = decode(kind, index, any)?;
            let listener = Listener::try_from(&proto)?;
            let timeout = rds_fetch_timeout(&proto);
            (proto.name, Domain::Listener(Arc::new(listener)), timeout)
        }
        Kind::Route => {
            let proto: RouteConfiguration = decode(kind, index, any)?;
            let table = RouteTable::try_from(&proto)?;
            (proto.name, Domain::Route(Arc::new(table)), None)
        }
        Kind::Cluster => {
            let proto: ClusterProto = decode(kind, index, any)?;
            let cluster = ClusterConfig::try_from(&proto)?;
            let timeout = proto
                .eds_cluster_config
                .as_ref()
                .and_then(|eds| eds.eds_config.as_ref())
                .map_or(Some(DEFAULT_INITIAL_FETCH_TIMEOUT), |source| {
                    fetch_timeout(source.initial_fetch_timeout.as_ref())
                });
            (proto.name, Domain::Cluster(Arc::new(cluster)), timeout)
        }
        Kind::Endpoint => {
            let proto: ClusterLoadAssignment = decode(kind, index, any)?;
            let assignment = LoadAssignment::try_from(&proto)?;
            (
                proto.cluster_name,
                Domain::Endpoint(Arc::new(assignment)),
                None,
            )
        }
    };
    if name.is_empty() {
        return Err(InvalidResource::EmptyName { kind: short, index });
    }
    Ok(Validated {
        name,
        raw: any.clone(),
        domain,
        warm_timeout,
    })
}

/// Validates every resource of a response; the first refusal refuses the whole response.
pub fn validate_all(kind: Kind, resources: &[Any]) -> Result<Vec<Validated>, InvalidResource> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(resources.len());
    for (index, any) in resources.iter().enumerate() {
        let validated = validate(kind, index, any)?;
        if !seen.insert(validated.name.clone()) {
            return Err(InvalidResource::Duplicate {
                kind: kind.short_name(),
                name: validated.name,
            });
        }
        out.push(validated);
    }
    Ok(out)
}

/// The timeout a config source's `initial_fetch_timeout` asks for (absent: 15 s, zero: forever).
pub fn initial_fetch_timeout(
    source: Option<&xds_proto::envoy::config::core::v3::ConfigSource>,
) -> Option<Duration> {
    fetch_timeout(source.and_then(|s| s.initial_fetch_timeout.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::any::pack;

    #[test]
    fn kinds_round_trip_their_type_urls() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_url(kind.type_url()), Some(kind));
        }
        assert_eq!(Kind::from_type_url("type.googleapis.com/foo.Bar"), None);
    }

    #[test]
    fn garbage_bytes_name_the_kind_and_index() {
        let any = Any {
            type_url: type_url::CLUSTER_LOAD_ASSIGNMENT.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let err = validate_all(Kind::Endpoint, &[any]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("EDS resource [0]: value: cannot decode"),
            "{err}"
        );
    }

    #[test]
    fn wrong_inner_type_and_duplicates_are_refused() {
        let cla = ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        };
        let err = validate_all(Kind::Cluster, &[pack(&cla)]).unwrap_err();
        assert!(
            matches!(err, InvalidResource::WrongType { index: 0, .. }),
            "{err}"
        );
        let err = validate_all(Kind::Endpoint, &[pack(&cla), pack(&cla)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "EDS resource a: name: duplicate in one response"
        );
        let ok = validate_all(Kind::Endpoint, &[pack(&cla)]).unwrap();
        assert_eq!(ok[0].name, "a");
    }

    #[test]
    fn fetch_timeouts_follow_envoy_defaults() {
        assert_eq!(fetch_timeout(None), Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
        let zero = xds_proto::google::protobuf::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(fetch_timeout(Some(&zero)), None);
        let two = xds_proto::google::protobuf::Duration {
            seconds: 2,
            nanos: 0,
        };
        assert_eq!(fetch_timeout(Some(&two)), Some(Duration::from_secs(2)));
    }
}
