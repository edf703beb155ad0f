//! The one error shape every bad object turns into, whether it failed to parse, failed Istio's
//! rules or referred to something it cannot use: which object (origin, kind, namespace/name),
//! which field, and why. The debug endpoint and the log show exactly this.

use std::fmt;

use super::Origin;

/// A problem with one object. The object is skipped; everything else keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub struct ModelError {
    /// Where the object came from: `dir/file.yaml#2` or `namespace/name`.
    pub origin: Origin,
    /// The object's kind (`VirtualService`), empty when the document had none.
    pub kind: String,
    /// `namespace/name` (or `name` for cluster-scoped kinds), empty when unknown.
    pub name: String,
    /// The field path (`spec.ports[0].targetPort`), empty for the object as a whole.
    pub field: String,
    /// Why it is refused, lower-case.
    pub reason: String,
}

impl ModelError {
    /// An error about a whole document or object that has no identity yet.
    pub fn document(origin: impl Into<Origin>, reason: impl Into<String>) -> Self {
        ModelError {
            origin: origin.into(),
            kind: String::new(),
            name: String::new(),
            field: String::new(),
            reason: reason.into(),
        }
    }

    /// Sets the kind and `namespace/name`.
    pub fn object(mut self, kind: impl Into<String>, name: impl Into<String>) -> Self {
        self.kind = kind.into();
        self.name = name.into();
        self
    }

    /// Sets the field path.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

/// `FILE#DOC KIND NAMESPACE/NAME: FIELD: REASON`, leaving out what is unknown.
impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if !self.kind.is_empty() {
            write!(f, " {}", self.kind)?;
        }
        if !self.name.is_empty() {
            write!(f, " {}", self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_object_field_and_reason() {
        let err = ModelError::document("mesh/a.yaml#1", "port out of range")
            .object("Service", "default/reviews")
            .field("spec.ports[0].port");
        assert_eq!(
            err.to_string(),
            "mesh/a.yaml#1 Service default/reviews: spec.ports[0].port: port out of range"
        );
        assert_eq!(
            ModelError::document("a.yaml#0", "not a mapping").to_string(),
            "a.yaml#0: not a mapping"
        );
    }
}
