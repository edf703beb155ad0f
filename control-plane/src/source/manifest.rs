//! Multi-document manifests (YAML or JSON, as users `kubectl apply` them) into store objects.
//! Each document stands alone: a broken one is reported with its file and index and skipped,
//! the others of the same file still apply (Istio's per-object semantics). Kinds Ferry does not
//! read (Deployment, ConfigMap, ...) are ignored, not errors, so whole application manifests can
//! live in the directory.

use serde::Deserialize;
use serde_json::Value;

use super::object::{IstioObject, Kind, Object, ObjectKey, Resource};
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
/// `origin#INDEX` (0-based). Empty documents are left out.
pub fn parse_documents(text: &str, origin: &str) -> Vec<Result<Document, ModelError>> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin}#{index}");
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.push(parse_value(value, &doc_origin)),
            Err(err) => {
                out.push(Err(ModelError::document(
                    doc_origin,
                    format!("invalid YAML: {err}"),
                )));
                // The YAML parser cannot resynchronise after a syntax error.
                break;
            }
        }
    }
    out
}

/// Turns one decoded document (or one object from the API server) into a store object.
pub fn parse_value(value: Value, origin: &str) -> Result<Document, ModelError> {
    let Value::Object(map) = &value else {
        return Err(ModelError::document(origin, "document is not a mapping"));
    };
    let text = |field: &str| map.get(field).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind_str) = (text("apiVersion").to_owned(), text("kind").to_owned());
    if api_version.is_empty() || kind_str.is_empty() {
        return Err(ModelError::document(origin, "missing apiVersion or kind"));
    }
    let meta = map.get("metadata");
    let meta_str = |field: &str| {
        meta.and_then(|m| m.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = meta_str("name");
    let group = api_version.split_once('/').map_or("", |(group, _)| group);
    let Some(kind) = Kind::from_kind_str(&kind_str) else {
        if group.ends_with(".istio.io") {
            return Err(ModelError::document(
                origin,
                format!("unsupported Istio kind {kind_str} ({api_version})"),
            )
            .object(&kind_str, &name));
        }
        return Ok(Document::Ignored(format!(
            "{origin}: {api_version} {kind_str} {name} is not read by ferry-control"
        )));
    };
    let namespace = match kind {
        Kind::Namespace => String::new(),
        _ => Some(meta_str("namespace"))
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
    };
    let display_name = if namespace.is_empty() {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    };
    let error =
        |reason: String| ModelError::document(origin, reason).object(kind.as_str(), &display_name);
    if name.is_empty() {
        return Err(error("missing metadata.name".to_owned()).field("metadata.name"));
    }
    check_api_version(kind, &api_version).map_err(|reason| error(reason).field("apiVersion"))?;
    let resource = match kind {
        Kind::Namespace => Resource::Namespace(Box::new(decode(value, &error)?)),
        Kind::Service => Resource::Service(Box::new(decode(value, &error)?)),
        Kind::EndpointSlice => Resource::EndpointSlice(Box::new(decode(value, &error)?)),
        Kind::Pod => Resource::Pod(Box::new(decode(value, &error)?)),
        _ => {
            let labels = meta
                .and_then(|m| m.get("labels"))
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|err| {
                    error(format!("labels must be strings: {err}")).field("metadata.labels")
                })?
                .unwrap_or_default();
            let spec = map.get("spec").cloned().unwrap_or(Value::Null);
            Resource::Istio(Box::new(IstioObject {
                api_version,
                labels,
                spec,
            }))
        }
    };
    Ok(Document::Object(Box::new(Object {
        key: ObjectKey {
            kind,
            namespace,
            name,
        },
        origin: origin.to_owned(),
        resource,
    })))
}

fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    error: &impl Fn(String) -> ModelError,
) -> Result<T, ModelError> {
    serde_json::from_value(value).map_err(|err| error(err.to_string()))
}

fn check_api_version(kind: Kind, api_version: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Namespace | Kind::Service | Kind::Pod => api_version == "v1",
        Kind::EndpointSlice => api_version == "discovery.k8s.io/v1",
        _ => api_version.split_once('/').is_some_and(|(group, version)| {
            Some(group) == kind.istio_group() && kind.istio_versions().contains(&version)
        }),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{kind} is not served as {api_version}"))
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
        assert_eq!(vs.istio().map(|i| i.labels.len()), Some(1));
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
        let errs: Vec<String> = docs
            .into_iter()
            .map(|d| d.expect_err("each document is bad").to_string())
            .collect();
        assert_eq!(
            errs[0],
            "t.yaml#0 VirtualService default/r: apiVersion: VirtualService is not served as networking.istio.io/v2"
        );
        assert!(
            errs[1].contains("unsupported Istio kind Gateway2"),
            "{}",
            errs[1]
        );
        assert!(errs[2].contains("metadata.name"), "{}", errs[2]);
        assert_eq!(errs[3], "t.yaml#3: document is not a mapping");
        assert!(
            errs[4].starts_with("t.yaml#4 Pod default/p: "),
            "{}",
            errs[4]
        );
    }

    #[test]
    fn broken_yaml_is_reported_not_panicked() {
        let docs = objects("apiVersion: v1\nkind: [\n");
        assert_eq!(docs.len(), 1);
        assert!(docs[0].as_ref().is_err());
    }
}
