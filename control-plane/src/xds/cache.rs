//! One proxy's generated resources, packed and versioned: the unit a connection diffs against
//! what it has sent.
//!
//! A resource's version is a hash of its encoded bytes. Encoding is not canonical for map fields
//! (`Struct`, metadata), so a rebuilt snapshot keeps the previous version of every resource whose
//! bytes are equal or decode to an equal message: an unchanged resource is never re-pushed.
//! Entries keep only the packed bytes: the typed message is several times larger, and was the
//! largest part of the server's memory once proxies connect.
//!
//! Entries are interned by kind, name and content: the sidecars of a namespace get the same
//! outbound clusters, endpoints and routes, and the server keeps each such resource once, shared by
//! every snapshot that holds it, instead of once per connected proxy (benches/ measures the
//! memory per connected proxy).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use prost::Message;
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

/// A generated resource before it is packed: compared with existing entries to recognise
/// unchanged resources, then dropped (entries keep only the packed bytes).
#[derive(Debug, Clone, PartialEq)]
enum Typed {
    Cluster(Box<Cluster>),
    Endpoint(Box<ClusterLoadAssignment>),
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
}

impl Typed {
    fn kind(&self) -> ResourceType {
        match self {
            Typed::Cluster(_) => ResourceType::Cluster,
            Typed::Endpoint(_) => ResourceType::Endpoint,
            Typed::Listener(_) => ResourceType::Listener,
            Typed::Route(_) => ResourceType::Route,
        }
    }

    fn pack(&self) -> Any {
        match self {
            Typed::Cluster(m) => xds_proto::any::pack(&**m),
            Typed::Endpoint(m) => xds_proto::any::pack(&**m),
            Typed::Listener(m) => xds_proto::any::pack(&**m),
            Typed::Route(m) => xds_proto::any::pack(&**m),
        }
    }

    /// Whether `packed` holds this same message: equal bytes, or (encoding is not canonical
    /// for map fields) bytes that decode to an equal message.
    fn same_as(&self, mine: &[u8], packed: &[u8]) -> bool {
        fn decodes_to<M: Message + Default + PartialEq>(m: &M, packed: &[u8]) -> bool {
            M::decode(packed).is_ok_and(|decoded| decoded == *m)
        }
        mine == packed
            || match self {
                Typed::Cluster(m) => decodes_to(&**m, packed),
                Typed::Endpoint(m) => decodes_to(&**m, packed),
                Typed::Listener(m) => decodes_to(&**m, packed),
                Typed::Route(m) => decodes_to(&**m, packed),
            }
    }
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
}

/// The entries of one kind in a snapshot, sorted by name: a vector of shared entries rather
/// than a map keyed by a copy of each name, since every connected proxy keeps one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entries(Vec<Arc<Entry>>);

impl Entries {
    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.0
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i])
    }

    /// Every entry, by name.
    pub fn values(&self) -> std::slice::Iter<'_, Arc<Entry>> {
        self.0.iter()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorts by name and keeps the last of each name, as a map would.
    fn seal(&mut self, ty: ResourceType) {
        self.0.sort_by(|a, b| a.name.cmp(&b.name));
        let before = self.0.len();
        self.0.dedup_by(|later, kept| {
            let same = later.name == kept.name;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        if self.0.len() != before {
            tracing::warn!(
                kind = ty.label(),
                "generator produced a duplicate resource name"
            );
        }
        self.0.shrink_to_fit();
    }
}

impl std::ops::Index<&str> for Entries {
    type Output = Arc<Entry>;

    fn index(&self, name: &str) -> &Arc<Entry> {
        match self.get(name) {
            Some(entry) => entry,
            None => panic!("no entry named {name:?}"),
        }
    }
}

/// All of one proxy's resources at one model epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: [Entries; 4],
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
        // Each resource moves into its entry: packing reads it from there, so nothing is cloned.
        for c in clusters {
            snapshot.insert(previous, c.name.clone(), Typed::Cluster(Box::new(c)));
        }
        for e in endpoints {
            snapshot.insert(
                previous,
                e.cluster_name.clone(),
                Typed::Endpoint(Box::new(e)),
            );
        }
        for l in listeners {
            snapshot.insert(previous, l.name.clone(), Typed::Listener(Box::new(l)));
        }
        for r in routes {
            snapshot.insert(previous, r.name.clone(), Typed::Route(Box::new(r)));
        }
        for ty in ResourceType::PUSH_ORDER {
            snapshot.types[ty.index()].seal(ty);
        }
        snapshot
    }

    fn insert(&mut self, previous: Option<&Snapshot>, name: String, typed: Typed) {
        let ty = typed.kind();
        let packed = typed.pack();
        let unchanged = previous
            .and_then(|p| p.resources(ty).get(&name))
            .filter(|old| typed.same_as(&packed.value, &old.resource.value))
            .cloned();
        let entry = unchanged.unwrap_or_else(|| intern(ty, &name, &typed, packed));
        self.types[ty.index()].0.push(entry);
    }

    /// The resources of one kind, by name.
    pub fn resources(&self, ty: ResourceType) -> &Entries {
        &self.types[ty.index()]
    }

    /// All resources of all kinds, for the config dump.
    pub fn all(&self) -> impl Iterator<Item = (ResourceType, &Arc<Entry>)> {
        ResourceType::PUSH_ORDER
            .into_iter()
            .flat_map(move |ty| self.resources(ty).values().map(move |e| (ty, e)))
    }
}

/// Interned entries by kind and name, compared as typed messages (encoding is not canonical
/// for map fields, so equal resources of two proxies may pack to different bytes); dead ones are
/// pruned as the table doubles.
struct Interner {
    entries: HashMap<(ResourceType, String), Vec<Weak<Entry>>>,
    prune_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        entries: HashMap::new(),
        prune_at: 1024,
    })
});

/// The shared entry for this resource: an existing equal one if any snapshot still holds it,
/// else a new one.
fn intern(ty: ResourceType, name: &str, typed: &Typed, packed: Any) -> Arc<Entry> {
    let key = (ty, name.to_owned());
    let mut interner = INTERNER.lock().unwrap_or_else(PoisonError::into_inner);
    let existing = interner.entries.get(&key).and_then(|versions| {
        versions
            .iter()
            .filter_map(Weak::upgrade)
            .find(|e| typed.same_as(&packed.value, &e.resource.value))
    });
    if let Some(existing) = existing {
        return existing;
    }
    let entry = Arc::new(Entry {
        version: hash_bytes(&packed.value),
        name: name.to_owned(),
        resource: packed,
    });
    interner
        .entries
        .entry(key)
        .or_default()
        .push(Arc::downgrade(&entry));
    if interner.entries.len() >= interner.prune_at {
        interner.entries.retain(|_, versions| {
            versions.retain(|e| e.strong_count() > 0);
            !versions.is_empty()
        });
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

fn hash_bytes(bytes: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
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
    fn resources_with_map_fields_are_shared_whatever_their_encoding() {
        use xds_proto::envoy::config::core::v3::Metadata;
        use xds_proto::google::protobuf::{Struct, Value, value::Kind};
        // Struct fields are a HashMap: two equal clusters may encode their keys in different
        // orders, so sharing must not depend on the bytes.
        let with_metadata = || {
            let fields = (0..16)
                .map(|i| {
                    let value = Value {
                        kind: Some(Kind::NumberValue(f64::from(i))),
                    };
                    (format!("key-{i}"), value)
                })
                .collect();
            let mut c = cluster("with-metadata", 1);
            c.metadata = Some(Metadata {
                filter_metadata: [("istio".to_owned(), Struct { fields })].into(),
                ..Default::default()
            });
            Snapshot::build(
                Resources {
                    clusters: vec![c],
                    ..Default::default()
                },
                None,
            )
        };
        let (a, b) = (with_metadata(), with_metadata());
        assert!(Arc::ptr_eq(
            &a.resources(ResourceType::Cluster)["with-metadata"],
            &b.resources(ResourceType::Cluster)["with-metadata"]
        ));
    }

    #[test]
    fn entries_are_found_by_name_and_the_last_of_a_duplicate_wins() {
        let snapshot = Snapshot::build(
            Resources {
                clusters: vec![
                    cluster("b", 1),
                    cluster("a", 1),
                    cluster("b", 2),
                    cluster("c", 1),
                ],
                ..Default::default()
            },
            None,
        );
        let clusters = snapshot.resources(ResourceType::Cluster);
        let names: Vec<&str> = clusters.values().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(clusters.len(), 3);
        let b = Snapshot::build(
            Resources {
                clusters: vec![cluster("b", 2)],
                ..Default::default()
            },
            None,
        );
        assert!(Arc::ptr_eq(
            &clusters["b"],
            &b.resources(ResourceType::Cluster)["b"]
        ));
        assert!(clusters.get("d").is_none());
        assert!(snapshot.resources(ResourceType::Route).is_empty());
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
