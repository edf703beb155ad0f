//! The store every source feeds: the current objects keyed by (kind, namespace, name), changed
//! only by events. A relist arrives as one `Replace` so the store never holds a half-listed kind
//! and the model built from it never loses objects between a watch error and the relist.

use std::collections::BTreeMap;

use super::object::{Kind, Object, ObjectKey};

/// A change to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An object was added or modified.
    Apply(Box<Object>),
    /// An object was deleted.
    Delete(ObjectKey),
    /// The complete current list of one kind (initial list or relist): objects of that kind not
    /// in it are deleted.
    Replace {
        /// The kind listed.
        kind: Kind,
        /// Every object of that kind.
        objects: Vec<Object>,
    },
}

/// The objects known to a source, in a stable order (kind, namespace, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Object>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `objects`; a later object with the same key replaces an earlier one.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut store = Store::new();
        for object in objects {
            store.apply(Event::Apply(Box::new(object)));
        }
        store
    }

    /// Applies one event; returns whether anything changed.
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Apply(object) => {
                if self.objects.get(&object.key) == Some(&object) {
                    return false;
                }
                self.objects.insert(object.key.clone(), *object);
                true
            }
            Event::Delete(key) => self.objects.remove(&key).is_some(),
            Event::Replace { kind, objects } => {
                let listed: BTreeMap<ObjectKey, Object> = objects
                    .into_iter()
                    .filter(|o| o.key.kind == kind)
                    .map(|o| (o.key.clone(), o))
                    .collect();
                let before = self.objects.len();
                self.objects
                    .retain(|key, _| key.kind != kind || listed.contains_key(key));
                let mut changed = self.objects.len() != before;
                for (key, object) in listed {
                    if self.objects.get(&key) != Some(&object) {
                        self.objects.insert(key, object);
                        changed = true;
                    }
                }
                changed
            }
        }
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Every object of one kind, ordered by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> + '_ {
        self.objects
            .range(kind_start(kind)..)
            .take_while(move |(key, _)| key.kind == kind)
            .map(|(_, object)| object)
    }

    /// Every object.
    pub fn iter(&self) -> impl Iterator<Item = &Object> + '_ {
        self.objects.values()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn kind_start(kind: Kind) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: String::new(),
        name: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{self, Manifest};

    fn object(kind: Kind, ns: &str, name: &str, spec: serde_json::Value) -> Object {
        let mut vs = api::Object::<api::VirtualService>::default();
        vs.spec.hosts = spec
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        Object {
            key: ObjectKey {
                kind,
                namespace: ns.into(),
                name: name.into(),
            },
            origin: format!("{ns}/{name}"),
            manifest: Manifest::VirtualService(vs),
        }
    }

    #[test]
    fn apply_delete_and_replace() {
        let mut store = Store::new();
        let a = object(Kind::VirtualService, "default", "a", serde_json::json!({}));
        assert!(store.apply(Event::Apply(Box::new(a.clone()))));
        assert!(
            !store.apply(Event::Apply(Box::new(a.clone()))),
            "same object is no change"
        );
        let b = object(Kind::VirtualService, "default", "b", serde_json::json!({}));
        let d = object(Kind::DestinationRule, "default", "a", serde_json::json!({}));
        store.apply(Event::Apply(Box::new(b.clone())));
        store.apply(Event::Apply(Box::new(d.clone())));
        assert_eq!(store.of_kind(Kind::VirtualService).count(), 2);

        // A relist holding only a changed `b` deletes `a` and leaves other kinds alone.
        let b2 = object(
            Kind::VirtualService,
            "default",
            "b",
            serde_json::json!({"x": 1}),
        );
        assert!(store.apply(Event::Replace {
            kind: Kind::VirtualService,
            objects: vec![b2.clone()],
        }));
        let names: Vec<_> = store
            .of_kind(Kind::VirtualService)
            .map(|o| &o.key.name)
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(store.get(&b2.key), Some(&b2));
        assert_eq!(store.get(&d.key), Some(&d));
        assert!(!store.apply(Event::Replace {
            kind: Kind::VirtualService,
            objects: vec![b2.clone()],
        }));
        assert!(store.apply(Event::Delete(d.key.clone())));
        assert!(!store.apply(Event::Delete(d.key)));
        assert_eq!(store.len(), 1);
    }
}
