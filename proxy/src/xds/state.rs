//! What the xDS client has accepted, and what of it is active: Envoy's warming rules in one
//! place, free of I/O so they are tested directly.
//!
//! Every named resource has a slot with an `active` entry (serving) and a `warming` entry (newer,
//! waiting for what it references). A listener warms until every route configuration it names
//! over RDS has arrived; an EDS cluster until its load assignment has arrived or its
//! `initial_fetch_timeout` passes. The bootstrap's static resources live in the same slots,
//! marked static, so they warm alike, win over dynamic names and never go away.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use xds_proto::google::protobuf::Any;

use super::resources::{Domain, Kind, Validated};
use crate::snapshot::Resources;

/// One accepted version of a resource.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The version it arrived with (SotW response `version_info`, delta resource `version`;
    /// empty for static resources).
    pub version: String,
    /// The raw resource, for `/config_dump`.
    pub raw: Any,
    /// When it was accepted.
    pub last_updated: SystemTime,
    /// The validated value.
    pub domain: Domain,
}

/// Where a resource came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The bootstrap's `static_resources`.
    Static,
    /// ADS.
    Dynamic,
}

/// One named resource: what serves, and what waits to replace it.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Static or dynamic.
    pub origin: Origin,
    /// The entry in force, if any has warmed yet.
    pub active: Option<Entry>,
    /// A newer entry still warming, with the instant it activates anyway (`None`: never).
    /// Boxed: few slots warm at any time, and a sidecar holds thousands of slots.
    pub warming: Option<Box<(Entry, Option<Instant>)>>,
}

impl Slot {
    fn latest(&self) -> Option<&Entry> {
        self.warming
            .as_ref()
            .map(|warming| &warming.0)
            .or(self.active.as_ref())
    }
}

/// The client's accepted config.
#[derive(Debug)]
pub struct State {
    slots: [BTreeMap<String, Slot>; 4],
    received: [bool; 4],
    versions: [String; 4],
    subscribed: [bool; 4],
    init_deadline: Option<Instant>,
    init_timed_out: bool,
    revision: u64,
}

impl State {
    /// An empty state. `subscribed` says whether LDS and CDS come from ADS at all; `init_timeout`
    /// is when initialization gives up waiting for their first response (`None`: never).
    pub fn new(lds: bool, cds: bool, init_deadline: Option<Instant>) -> Self {
        let mut subscribed = [false; 4];
        subscribed[Kind::Listener.index()] = lds;
        subscribed[Kind::Cluster.index()] = cds;
        subscribed[Kind::Route.index()] = lds;
        subscribed[Kind::Endpoint.index()] = cds;
        Self {
            slots: Default::default(),
            received: [false; 4],
            versions: Default::default(),
            subscribed,
            init_deadline,
            init_timed_out: false,
            revision: 0,
        }
    }

    /// Adds a static resource (validated like a dynamic one).
    pub fn add_static(&mut self, resource: Validated, now: Instant) {
        let kind = domain_kind(&resource.domain);
        self.slots[kind.index()].insert(
            resource.name.clone(),
            Slot {
                origin: Origin::Static,
                active: None,
                warming: None,
            },
        );
        self.upsert(kind, resource, String::new(), Origin::Static, now);
        self.promote(now);
    }

    /// Applies an accepted state-of-the-world response: for LDS and CDS the response is the
    /// whole set (dynamic names missing from it are removed); for RDS and EDS it adds or
    /// replaces the named resources.
    pub fn apply_sotw(
        &mut self,
        kind: Kind,
        version: &str,
        resources: Vec<Validated>,
        now: Instant,
    ) {
        if kind.is_wildcard() {
            let keep: BTreeSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
            let before = self.slots[kind.index()].len();
            self.slots[kind.index()]
                .retain(|name, slot| slot.origin == Origin::Static || keep.contains(name.as_str()));
            if self.slots[kind.index()].len() != before {
                self.revision += 1;
            }
        }
        for resource in resources {
            self.upsert(kind, resource, version.to_owned(), Origin::Dynamic, now);
        }
        self.finish(kind, version, now);
    }

    /// Applies an accepted delta response: upserts `resources` (each with its version) and
    /// removes `removed`.
    pub fn apply_delta(
        &mut self,
        kind: Kind,
        system_version: &str,
        resources: Vec<(Validated, String)>,
        removed: &[String],
        now: Instant,
    ) {
        for name in removed {
            self.remove_dynamic(kind, name);
        }
        for (resource, version) in resources {
            self.upsert(kind, resource, version, Origin::Dynamic, now);
        }
        self.finish(kind, system_version, now);
    }

    fn finish(&mut self, kind: Kind, version: &str, now: Instant) {
        self.received[kind.index()] = true;
        self.versions[kind.index()] = version.to_owned();
        self.promote(now);
    }

    fn remove_dynamic(&mut self, kind: Kind, name: &str) {
        let slots = &mut self.slots[kind.index()];
        if slots.get(name).is_some_and(|s| s.origin == Origin::Dynamic) {
            slots.remove(name);
            self.revision += 1;
        }
    }

    fn upsert(
        &mut self,
        kind: Kind,
        resource: Validated,
        version: String,
        origin: Origin,
        now: Instant,
    ) {
        let slot = self.slots[kind.index()]
            .entry(resource.name.clone())
            .or_insert(Slot {
                origin,
                active: None,
                warming: None,
            });
        if slot.origin != origin {
            tracing::warn!(kind = kind.short_name(), name = %resource.name, "dynamic resource ignored: a static one has this name");
            return;
        }
        if slot.latest().is_some_and(|e| e.raw == resource.raw) {
            // Unchanged: keep its age and warming state; only the version label moves.
            if let Some(warming) = slot.warming.as_mut() {
                warming.0.version = version;
            } else if let Some(entry) = slot.active.as_mut() {
                entry.version = version;
            }
            return;
        }
        let deadline = resource.warm_timeout.map(|t| now + t);
        let entry = Entry {
            version,
            raw: resource.raw,
            last_updated: SystemTime::now(),
            domain: resource.domain,
        };
        if matches!(kind, Kind::Listener | Kind::Cluster) {
            slot.warming = Some(Box::new((entry, deadline)));
        } else {
            slot.active = Some(entry);
            self.revision += 1;
        }
    }

    /// Activates every warming listener and cluster whose references have arrived or whose
    /// warm timeout has passed. Call after any change and when [`Self::next_deadline`] passes.
    pub fn promote(&mut self, now: Instant) {
        if self.init_deadline.is_some_and(|deadline| deadline <= now) {
            if !self.initial_fetch_done() {
                tracing::warn!("initial fetch timeout: LDS/CDS not received, initializing anyway");
            }
            self.init_deadline = None;
            self.init_timed_out = true;
        }
        for kind in [Kind::Cluster, Kind::Listener] {
            let ready: Vec<String> = self.slots[kind.index()]
                .iter()
                .filter_map(|(name, slot)| {
                    let (entry, deadline) = &**slot.warming.as_ref()?;
                    let expired = deadline.is_some_and(|d| d <= now);
                    (expired || self.is_warm(&entry.domain)).then(|| name.clone())
                })
                .collect();
            for name in ready {
                if let Some(slot) = self.slots[kind.index()].get_mut(&name)
                    && let Some(warming) = slot.warming.take()
                {
                    tracing::debug!(kind = kind.short_name(), %name, "warmed");
                    slot.active = Some(warming.0);
                    self.revision += 1;
                }
            }
        }
    }

    fn is_warm(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Listener(listener) => listener
                .rds_names()
                .iter()
                .all(|name| self.has_active(Kind::Route, name)),
            Domain::Cluster(cluster) => cluster
                .eds_service_name()
                .is_none_or(|name| self.has_active(Kind::Endpoint, name)),
            Domain::Route(_) | Domain::Endpoint(_) => true,
        }
    }

    fn has_active(&self, kind: Kind, name: &str) -> bool {
        self.slots[kind.index()]
            .get(name)
            .is_some_and(|slot| slot.active.is_some())
    }

    /// The names RDS or EDS should be subscribed to: referenced by any active or warming
    /// listener (RDS) or cluster (EDS). Empty for LDS and CDS (wildcard).
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let parents = match kind {
            Kind::Route => &self.slots[Kind::Listener.index()],
            Kind::Endpoint => &self.slots[Kind::Cluster.index()],
            Kind::Listener | Kind::Cluster => return names,
        };
        for slot in parents.values() {
            let entries = slot
                .active
                .iter()
                .chain(slot.warming.iter().map(|warming| &warming.0));
            for entry in entries {
                match &entry.domain {
                    Domain::Listener(l) => names.extend(l.rds_names()),
                    Domain::Cluster(c) => names.extend(c.eds_service_name().map(str::to_owned)),
                    Domain::Route(_) | Domain::Endpoint(_) => {}
                }
            }
        }
        names
    }

    /// Drops route configurations and load assignments no resource references any more (Envoy
    /// forgets them on unsubscribe).
    pub fn forget_unreferenced(&mut self) {
        for kind in [Kind::Route, Kind::Endpoint] {
            let wanted = self.wanted(kind);
            let before = self.slots[kind.index()].len();
            self.slots[kind.index()]
                .retain(|name, slot| slot.origin == Origin::Static || wanted.contains(name));
            if self.slots[kind.index()].len() != before {
                self.revision += 1;
            }
        }
    }

    /// The accepted versions of a kind's dynamic resources, for delta `initial_resource_versions`.
    pub fn resource_versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.slots[kind.index()]
            .iter()
            .filter(|(_, slot)| slot.origin == Origin::Dynamic)
            .filter_map(|(name, slot)| Some((name.clone(), slot.latest()?.version.clone())))
            .collect()
    }

    /// The last accepted SotW `version_info` (delta: `system_version_info`) of a kind.
    pub fn version(&self, kind: Kind) -> &str {
        &self.versions[kind.index()]
    }

    /// The slots of a kind, by name (for `/config_dump` and `/clusters`).
    pub fn slots(&self, kind: Kind) -> &BTreeMap<String, Slot> {
        &self.slots[kind.index()]
    }

    /// The earliest instant a warming resource or initialization times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let warming = [Kind::Listener, Kind::Cluster]
            .into_iter()
            .flat_map(|kind| self.slots[kind.index()].values())
            .filter_map(|slot| slot.warming.as_ref()?.1);
        let init = self.init_deadline.filter(|_| !self.initial_fetch_done());
        warming.chain(init).min()
    }

    fn initial_fetch_done(&self) -> bool {
        [Kind::Listener, Kind::Cluster]
            .into_iter()
            .all(|kind| !self.subscribed[kind.index()] || self.received[kind.index()])
    }

    /// Whether the first complete config has arrived: the first LDS and CDS responses (or
    /// their initial fetch timeout) and nothing still warming.
    pub fn initialized(&self, now: Instant) -> bool {
        let fetched = self.initial_fetch_done()
            || self.init_timed_out
            || self.init_deadline.is_some_and(|deadline| deadline <= now);
        let warming = [Kind::Listener, Kind::Cluster]
            .into_iter()
            .flat_map(|kind| self.slots[kind.index()].values())
            .any(|slot| slot.warming.is_some());
        fetched && !warming
    }

    /// Increases whenever the active set changes.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The active resources, for [`crate::snapshot::ConfigStore::apply`].
    pub fn resources(&self) -> Resources {
        let mut out = Resources::default();
        for kind in Kind::ALL {
            for (name, slot) in &self.slots[kind.index()] {
                let Some(entry) = &slot.active else { continue };
                match &entry.domain {
                    Domain::Listener(l) => {
                        out.listeners.insert(name.clone(), Arc::clone(l));
                    }
                    Domain::Route(r) => {
                        out.routes.insert(name.clone(), Arc::clone(r));
                    }
                    Domain::Cluster(c) => {
                        out.clusters.insert(name.clone(), Arc::clone(c));
                    }
                    Domain::Endpoint(e) => {
                        out.load_assignments.insert(name.clone(), Arc::clone(e));
                    }
                }
            }
        }
        out
    }
}

/// The kind of a validated value.
pub fn domain_kind(domain: &Domain) -> Kind {
    match domain {
        Domain::Listener(_) => Kind::Listener,
        Domain::Route(_) => Kind::Route,
        Domain::Cluster(_) => Kind::Cluster,
        Domain::Endpoint(_) => Kind::Endpoint,
    }
}
