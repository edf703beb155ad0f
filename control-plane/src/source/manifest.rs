//! Manifests into store objects, through the API's parser ([`crate::api::manifest::from_value`]
//! for every document of a YAML file and for every object from the Kubernetes API), so both
//! sources read objects exactly alike. Each document stands alone: a broken one is reported with its
//! file and index and skipped, the others of the same file still apply (Istio's per-object
//! semantics). Kinds Ferry does not read (Deployment, ConfigMap, ...) are ignored, not errors,
//! so whole application manifests can live in the directory.

use serde::Deserialize;
use serde_json::Value;

use super::object::{Kind, Object, ObjectKey};
use crate::api::{self, Manifest, ManifestError};
use crate::model::ModelError;

/// What one document turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// An object Ferry reads.
    Object(Box<Object>),
    /// A kind Ferry does not read; the message says which.
    Ignored(String),
}

/// Parses every document of `text`; `origin` is the file name, each document's origin becomes
/// `origin#INDEX` (0-based). Empty documents are left out. A `v1` `List` (what `kubectl get -o
/// yaml` writes) stands for its items, each with origin `origin#INDEX.items[I]`. YAML merge keys
/// (`<<:`) are applied.
pub fn parse_documents(text: &str, origin: &str) -> Vec<Result<Document, ModelError>> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin}#{index}");
        let value = serde_yaml_ng::Value::deserialize(de)
            .and_then(|mut v| v.apply_merge().map(|()| v))
            .map_err(|e| format!("invalid YAML: {e}"))
            .and_then(|v| serde_json::to_value(v).map_err(|e| format!("unsupported YAML: {e}")));
        match value {
            Ok(Value::Null) => {}
            Ok(Value::Object(mut map)) if is_list(&map) => {
                let items = match map.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                for (i, item) in items.into_iter().enumerate() {
                    out.push(parse_value(item, &format!("{doc_origin}.items[{i}]")));
                }
            }
            Ok(value) => out.push(parse_value(value, &doc_origin)),
            Err(reason) => {
                out.push(Err(ModelError::document(doc_origin, reason)));
                // The YAML parser cannot resynchronise after a syntax error.
                break;
            }
        }
    }
    out
}

fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    map.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && map.get("kind").and_then(Value::as_str) == Some("List")
}

/// Turns one object from the Kubernetes API (or one decoded document) into a store object.
pub fn parse_value(value: Value, origin: &str) -> Result<Document, ModelError> {
    let manifest = api::manifest::from_value(value, origin).map_err(ModelError::from)?;
    to_document(manifest, origin)
}

fn to_document(manifest: Manifest, origin: &str) -> Result<Document, ModelError> {
    if let Manifest::Ignored(ignored) = &manifest {
        return Ok(Document::Ignored(format!(
            "{origin}: {} {} {}: {}",
            ignored.api_version, ignored.kind, ignored.name, ignored.reason
        )));
    }
    let Some(kind) = Kind::from_kind_str(manifest.kind()) else {
        // The API parser only returns the kinds listed in `Kind` besides `Ignored`.
        return Ok(Document::Ignored(format!(
            "{origin}: {} is not read",
            manifest.kind()
        )));
    };
    let meta = manifest.metadata();
    let name = meta.and_then(|m| m.name.clone()).unwrap_or_default();
    let namespace = match kind {
        Kind::Namespace => String::new(),
        _ => meta
            .and_then(|m| m.namespace.clone())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
    };
    if name.is_empty() {
        return Err(ModelError::document(origin, "name is required")
            .object(kind.as_str(), manifest.display_name())
            .field("metadata.name"));
    }
    Ok(Document::Object(Box::new(Object {
        key: ObjectKey {
            kind,
            namespace,
            name,
        },
        origin: origin.to_owned(),
        manifest,
    })))
}

impl From<ManifestError> for ModelError {
    fn from(err: ManifestError) -> Self {
        let known = |s: String| {
            if s == "-" || s == "." {
                String::new()
            } else {
                s
            }
        };
        ModelError {
            origin: err.origin,
            kind: known(err.kind),
            name: known(err.name),
            field: known(err.field),
            reason: err.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str) -> Vec<Result<Document, ModelError>> {
        parse_documents(text, "t.yaml")
    }

    #[test]
    fn parses_kubernetes_and_istio_kinds_and_ignores_others() {
        let docs = objects(
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 9080}]}\n\
             ---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n\
             ---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n\
             metadata: {name: r, namespace: prod, labels: {a: b}}\nspec: {hosts: [reviews]}\n",
        );
        assert_eq!(docs.len(), 3);
        let Ok(Document::Object(svc)) = &docs[0] else {
            panic!("{docs:?}")
        };
        assert_eq!(svc.key.namespace, "default");
        assert_eq!(svc.origin, "t.yaml#0");
        assert!(matches!(docs[1], Ok(Document::Ignored(_))));
        let Ok(Document::Object(vs)) = &docs[2] else {
            panic!("{docs:?}")
        };
        assert_eq!(vs.key.to_string(), "VirtualService prod/r");
        assert_eq!(vs.origin, "t.yaml#3");
    }

    #[test]
    fn bad_documents_are_errors_with_identity() {
        let docs = objects(
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: r}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: Gateway2\nmetadata: {name: g}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n\
             ---\n- a list\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
        );
        let errs: Vec<ModelError> = docs
            .into_iter()
            .map(|d| d.expect_err("each document is bad"))
            .collect();
        assert_eq!(errs[0].origin, "t.yaml#0");
        assert_eq!(errs[0].field, "apiVersion");
        assert_eq!(errs[0].kind, "VirtualService");
        assert!(errs[1].reason.contains("Gateway2"), "{}", errs[1]);
        assert_eq!(errs[2].field, "metadata.name", "{}", errs[2]);
        assert_eq!(errs[3].to_string(), "t.yaml#3: document is not a mapping");
        assert!(
            errs[4].to_string().starts_with("t.yaml#4 Pod default/p"),
            "{}",
            errs[4]
        );
    }

    #[test]
    fn a_list_stands_for_its_items() {
        let docs = objects(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {}}\n\
             - {apiVersion: v1, kind: Service, metadata: {name: b, namespace: x}, spec: {}}\n",
        );
        let keys: Vec<String> = docs
            .iter()
            .map(|d| match d {
                Ok(Document::Object(o)) => format!("{} {}", o.origin, o.key),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "t.yaml#0.items[0] Service default/a",
                "t.yaml#0.items[1] Service x/b"
            ]
        );
    }

    #[test]
    fn broken_yaml_is_reported_not_panicked() {
        let docs = objects("apiVersion: v1\nkind: [\n");
        assert_eq!(docs.len(), 1);
        assert!(docs[0].as_ref().is_err());
    }
}
