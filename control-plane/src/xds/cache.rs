//! One proxy's generated resources, packed and versioned: the unit a connection diffs against
//! what it has sent.
//!
//! A resource's version is a hash of its encoded bytes. Encoding is not canonical for map fields
//! (`Struct`, metadata), so a rebuilt snapshot keeps the previous version of every resource that
//! compares equal as a typed message: an unchanged resource is never re-pushed.
//!
//! Entries are interned by kind, name and content: the sidecars of a namespace get the same
//! outbound clusters, endpoints and routes, and the server keeps each such resource once, shared by
//! every snapshot that holds it, instead of once per connected proxy (benches/ measures the
//! memory per connected proxy).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use prost::{Message, Name};
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url;

use super::Resources;

/// The four kinds the server generates, in push order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
}

impl ResourceType {
    /// Push order: clusters before the endpoints that fill them, listeners before their routes.
    pub const PUSH_ORDER: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => type_url::CLUSTER,
            ResourceType::Endpoint => type_url::CLUSTER_LOAD_ASSIGNMENT,
            ResourceType::Listener => type_url::LISTENER,
            ResourceType::Route => type_url::ROUTE_CONFIGURATION,
        }
    }

    /// The kind for a type URL; `None` for kinds the server does not serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::PUSH_ORDER.into_iter().find(|t| t.type_url() == url)
    }

    /// Istio's metric label: `cds`, `eds`, `lds`, `rds`.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    /// LDS and CDS are wildcard kinds: a client gets all of them unless it names some.
    pub fn is_wildcard_kind(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The typed message behind an entry, kept to recognise unchanged resources.
#[derive(Debug, Clone, PartialEq)]
enum Typed {
    Cluster(Box<Cluster>),
    Endpoint(Box<ClusterLoadAssignment>),
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
}

/// One packed, versioned resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The resource name.
    pub name: String,
    /// Content hash, the delta protocol's per-resource version.
    pub version: String,
    /// The packed resource.
    pub resource: Any,
    typed: Typed,
}

/// All of one proxy's resources at one model epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: [BTreeMap<String, Arc<Entry>>; 4],
}

impl Snapshot {
    /// Packs `resources`, reusing `previous`'s versions for resources that did not change.
    pub fn build(resources: Resources, previous: Option<&Snapshot>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let Resources {
            listeners,
            routes,
            clusters,
            endpoints,
        } = resources;
        for c in clusters {
            snapshot.insert(
                previous,
                c.name.clone(),
                &c,
                Typed::Cluster(Box::new(c.clone())),
            );
        }
        for e in endpoints {
            let name = e.cluster_name.clone();
            snapshot.insert(previous, name, &e, Typed::Endpoint(Box::new(e.clone())));
        }
        for l in listeners {
            snapshot.insert(
                previous,
                l.name.clone(),
                &l,
                Typed::Listener(Box::new(l.clone())),
            );
        }
        for r in routes {
            snapshot.insert(
                previous,
                r.name.clone(),
                &r,
                Typed::Route(Box::new(r.clone())),
            );
        }
        snapshot
    }

    fn insert<M: Message + Name>(
        &mut self,
        previous: Option<&Snapshot>,
        name: String,
        message: &M,
        typed: Typed,
    ) {
        let ty = match typed {
            Typed::Cluster(_) => ResourceType::Cluster,
            Typed::Endpoint(_) => ResourceType::Endpoint,
            Typed::Listener(_) => ResourceType::Listener,
            Typed::Route(_) => ResourceType::Route,
        };
        let unchanged = previous
            .and_then(|p| p.resources(ty).get(&name))
            .filter(|old| old.typed == typed)
            .cloned();
        let entry =
            unchanged.unwrap_or_else(|| intern(ty, &name, xds_proto::any::pack(message), typed));
        if self.types[ty.index()].insert(name, entry).is_some() {
            tracing::warn!(
                kind = ty.label(),
                "generator produced a duplicate resource name"
            );
        }
    }

    /// The resources of one kind, by name.
    pub fn resources(&self, ty: ResourceType) -> &BTreeMap<String, Arc<Entry>> {
        &self.types[ty.index()]
    }

    /// All resources of all kinds, for the config dump.
    pub fn all(&self) -> impl Iterator<Item = (ResourceType, &Arc<Entry>)> {
        ResourceType::PUSH_ORDER
            .into_iter()
            .flat_map(move |ty| self.resources(ty).values().map(move |e| (ty, e)))
    }
}

/// Interned entries by (kind, name, content hash); dead ones are pruned as the table doubles.
struct Interner {
    entries: HashMap<(ResourceType, String, u64), Weak<Entry>>,
    prune_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        entries: HashMap::new(),
        prune_at: 1024,
    })
});

/// The shared entry for this packed resource: an existing identical one if any snapshot still
/// holds it, else a new one.
fn intern(ty: ResourceType, name: &str, resource: Any, typed: Typed) -> Arc<Entry> {
    let hash = hash_u64(&resource.value);
    let key = (ty, name.to_owned(), hash);
    let mut interner = INTERNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(existing) = interner.entries.get(&key).and_then(Weak::upgrade)
        && existing.resource == resource
    {
        return existing;
    }
    let entry = Arc::new(Entry {
        version: format!("{hash:016x}"),
        name: name.to_owned(),
        resource,
        typed,
    });
    interner.entries.insert(key, Arc::downgrade(&entry));
    if interner.entries.len() >= interner.prune_at {
        interner.entries.retain(|_, e| e.strong_count() > 0);
        interner.prune_at = (interner.entries.len() * 2).max(1024);
    }
    entry
}

/// The version of a state-of-the-world response: a hash of its resources' names and versions.
pub fn set_version<'a>(entries: impl IntoIterator<Item = &'a Arc<Entry>>) -> String {
    let mut hasher = DefaultHasher::new();
    for e in entries {
        e.name.hash(&mut hasher);
        e.version.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn hash_u64(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, timeout_s: i64) -> Cluster {
        Cluster {
            name: name.into(),
            connect_timeout: Some(xds_proto::google::protobuf::Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn versions_follow_content_and_survive_rebuilds() {
        let first = Snapshot::build(
            Resources {
                clusters: vec![cluster("a", 1), cluster("b", 1)],
                ..Default::default()
            },
            None,
        );
        let second = Snapshot::build(
            Resources {
                clusters: vec![cluster("a", 1), cluster("b", 2)],
                ..Default::default()
            },
            Some(&first),
        );
        let (c1, c2) = (
            first.resources(ResourceType::Cluster),
            second.resources(ResourceType::Cluster),
        );
        assert_eq!(c1["a"].version, c2["a"].version);
        assert_ne!(c1["b"].version, c2["b"].version);
        assert_ne!(set_version(c1.values()), set_version(c2.values()));
        assert_eq!(c2["a"].resource.type_url, type_url::CLUSTER);
        assert!(second.resources(ResourceType::Listener).is_empty());
    }

    #[test]
    fn identical_resources_of_different_proxies_are_stored_once() {
        let build = |timeout_s| {
            Snapshot::build(
                Resources {
                    clusters: vec![cluster("shared-by-proxies", 1), cluster("own", timeout_s)],
                    ..Default::default()
                },
                None,
            )
        };
        let (a, b) = (build(7), build(8));
        let (a, b) = (
            a.resources(ResourceType::Cluster),
            b.resources(ResourceType::Cluster),
        );
        assert!(Arc::ptr_eq(
            &a["shared-by-proxies"],
            &b["shared-by-proxies"]
        ));
        assert!(!Arc::ptr_eq(&a["own"], &b["own"]));
        assert_ne!(a["own"].version, b["own"].version);
    }

    #[test]
    fn type_urls_round_trip_in_push_order() {
        for ty in ResourceType::PUSH_ORDER {
            assert_eq!(ResourceType::from_type_url(ty.type_url()), Some(ty));
        }
        assert_eq!(ResourceType::from_type_url(type_url::SECRET), None);
        assert!(ResourceType::PUSH_ORDER.is_sorted());
    }
}
