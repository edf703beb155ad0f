//! Reading manifests: multi-document YAML (or JSON values from the Kubernetes API) into typed
//! objects, dispatched on `apiVersion` and `kind`.
//!
//! Istio kinds are accepted in every version Istio serves (networking.istio.io v1, v1beta1,
//! v1alpha3; security.istio.io v1, v1beta1); the Kubernetes kinds the model needs (Namespace,
//! Service, EndpointSlice, Pod) are read with k8s-openapi's types; other Kubernetes kinds are
//! [`Ignored`] with a reason. Any other Istio kind, or a wrong version, is an error, because
//! silently dropping config a user wrote is worse than refusing it. Errors carry the object
//! (file and document index, kind, namespace/name), the field path and the reason.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AuthorizationPolicy, DestinationRule, PeerAuthentication, ServiceEntry, Sidecar,
    VirtualService, WorkloadEntry,
};

/// The Kubernetes envelope around an Istio spec: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(
    serialize = "S: Serialize",
    deserialize = "S: Deserialize<'de> + Default"
))]
pub struct Object<S> {
    /// `group/version`, e.g. `networking.istio.io/v1beta1`.
    pub api_version: String,
    /// The kind, e.g. `VirtualService`.
    pub kind: String,
    /// Name, namespace, labels, annotations, ...
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: S,
    /// Status as written by a cluster; kept only so that `kubectl get -o yaml` output reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

impl<S> Object<S> {
    /// `metadata.name`, empty when absent.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`, `default` when absent, as `kubectl apply` would place it.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// One parsed document of a manifest.
// Istio specs stay unboxed so consumers can match and move them directly; documents are read
// once at config time, never on a request path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// networking.istio.io VirtualService.
    VirtualService(Object<VirtualService>),
    /// networking.istio.io DestinationRule.
    DestinationRule(Object<DestinationRule>),
    /// networking.istio.io ServiceEntry.
    ServiceEntry(Object<ServiceEntry>),
    /// networking.istio.io WorkloadEntry.
    WorkloadEntry(Object<WorkloadEntry>),
    /// networking.istio.io Sidecar.
    Sidecar(Object<Sidecar>),
    /// security.istio.io PeerAuthentication.
    PeerAuthentication(Object<PeerAuthentication>),
    /// security.istio.io AuthorizationPolicy.
    AuthorizationPolicy(Object<AuthorizationPolicy>),
    /// Kubernetes Namespace (core/v1).
    Namespace(Box<Namespace>),
    /// Kubernetes Service (core/v1).
    Service(Box<Service>),
    /// Kubernetes EndpointSlice (discovery.k8s.io/v1).
    EndpointSlice(Box<EndpointSlice>),
    /// Kubernetes Pod (core/v1).
    Pod(Box<Pod>),
    /// A Kubernetes kind the control plane does not read (Deployment, ConfigMap, ...).
    Ignored(Ignored),
}

impl Manifest {
    /// The object's kind, as written in manifests.
    pub fn kind(&self) -> &str {
        match self {
            Manifest::VirtualService(_) => "VirtualService",
            Manifest::DestinationRule(_) => "DestinationRule",
            Manifest::ServiceEntry(_) => "ServiceEntry",
            Manifest::WorkloadEntry(_) => "WorkloadEntry",
            Manifest::Sidecar(_) => "Sidecar",
            Manifest::PeerAuthentication(_) => "PeerAuthentication",
            Manifest::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Manifest::Namespace(_) => "Namespace",
            Manifest::Service(_) => "Service",
            Manifest::EndpointSlice(_) => "EndpointSlice",
            Manifest::Pod(_) => "Pod",
            Manifest::Ignored(i) => &i.kind,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> Option<&ObjectMeta> {
        Some(match self {
            Manifest::VirtualService(o) => &o.metadata,
            Manifest::DestinationRule(o) => &o.metadata,
            Manifest::ServiceEntry(o) => &o.metadata,
            Manifest::WorkloadEntry(o) => &o.metadata,
            Manifest::Sidecar(o) => &o.metadata,
            Manifest::PeerAuthentication(o) => &o.metadata,
            Manifest::AuthorizationPolicy(o) => &o.metadata,
            Manifest::Namespace(o) => &o.metadata,
            Manifest::Service(o) => &o.metadata,
            Manifest::EndpointSlice(o) => &o.metadata,
            Manifest::Pod(o) => &o.metadata,
            Manifest::Ignored(_) => return None,
        })
    }

    /// `namespace/name` (or just `name` for cluster-scoped kinds), for messages.
    pub fn display_name(&self) -> String {
        match self {
            Manifest::Namespace(ns) => ns.metadata.name.clone().unwrap_or_default(),
            Manifest::Ignored(i) => i.name.clone(),
            other => {
                let meta = other.metadata();
                let ns = meta
                    .and_then(|m| m.namespace.as_deref())
                    .unwrap_or("default");
                match meta.and_then(|m| m.name.as_deref()) {
                    Some(name) if !name.is_empty() => format!("{ns}/{name}"),
                    _ => "-".to_owned(),
                }
            }
        }
    }
}

/// A document of a kind the control plane does not read. Not an error: manifests for
/// `kubectl apply` usually mix Deployments and ConfigMaps with the mesh's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// `apiVersion` as written.
    pub api_version: String,
    /// `kind` as written.
    pub kind: String,
    /// `namespace/name` as written.
    pub name: String,
    /// Why it is ignored.
    pub reason: String,
}

/// A parsed document with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `file#index` (index of the document in the file, from 0) or `namespace/name`.
    pub origin: String,
    /// The object.
    pub manifest: Manifest,
}

/// An object that could not be read or did not validate: which object, which field, why.
///
/// Displays as `ORIGIN KIND NAMESPACE/NAME: FIELD: REASON`, the line `ferry-control validate`
/// prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// `file#index` or `namespace/name`.
    pub origin: String,
    /// The kind, `-` when unknown.
    pub kind: String,
    /// `namespace/name` (or `name` for cluster-scoped kinds), `-` when unknown.
    pub name: String,
    /// Path of the offending field, e.g. `spec.http[0].route[1].weight`; `.` for the whole object.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {}: {}",
            self.origin, self.kind, self.name, self.field, self.reason
        )
    }
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
const NETWORKING_KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "WorkloadEntry",
    "Sidecar",
];
const SECURITY_KINDS: &[&str] = &["PeerAuthentication", "AuthorizationPolicy"];

/// Reads every document of a YAML text. `file` names the source in origins (`file#index`).
/// Empty documents are skipped; a document that cannot be read yields an error and the others
/// are still read. YAML merge keys (`<<:`) are applied.
pub fn parse_documents(text: &str, file: &str) -> Vec<Result<Document, ManifestError>> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = format!("{file}#{index}");
        let value = serde_yaml_ng::Value::deserialize(de)
            .map_err(|e| format!("invalid YAML: {e}"))
            .and_then(|mut v| {
                v.apply_merge().map_err(|e| format!("invalid YAML: {e}"))?;
                serde_json::to_value(v).map_err(|e| format!("unsupported YAML: {e}"))
            });
        match value {
            Ok(Value::Null) => {}
            Ok(Value::Object(mut list)) if is_list(&list) => {
                // `kubectl get -o yaml` output: read the items, each with its own origin.
                let items = match list.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                for (i, item) in items.into_iter().enumerate() {
                    let origin = format!("{origin}.items[{i}]");
                    out.push(
                        from_value(item, &origin).map(|manifest| Document { origin, manifest }),
                    );
                }
            }
            Ok(value) => out.push(from_value(value, &origin).map(|manifest| Document {
                origin: origin.clone(),
                manifest,
            })),
            Err(reason) => {
                out.push(Err(error(&origin, "-", "-", ".", reason)));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        }
    }
    out
}

/// A Kubernetes `v1 List` (or `FooList`) wrapper, as `kubectl get -o yaml` writes.
fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    map.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && map
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
        && map.get("items").is_some_and(Value::is_array)
}

/// Reads one object given as a JSON value (a YAML document, or an object from the Kubernetes
/// API). `origin` names it in errors.
pub fn from_value(mut value: Value, origin: &str) -> Result<Manifest, ManifestError> {
    let Some(map) = value.as_object() else {
        return Err(error(
            origin,
            "-",
            "-",
            ".",
            "document is not a mapping".into(),
        ));
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
    let api_version = text("apiVersion").to_owned();
    let kind = text("kind").to_owned();
    let name = display_name(map);
    let err = |field: &str, reason: String| error(origin, or_dash(&kind), &name, field, reason);
    if api_version.is_empty() {
        return Err(err("apiVersion", "required".into()));
    }
    if kind.is_empty() {
        return Err(err("kind", "required".into()));
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    drop_nulls(&mut value);

    let istio = |known: &[&str], versions: &[&str]| -> Result<(), ManifestError> {
        if !known.contains(&kind.as_str()) {
            return Err(err(
                "kind",
                format!(
                    "{kind} of {group} is not supported by ferry-control (supported: {})",
                    known.join(", ")
                ),
            ));
        }
        if !versions.contains(&version) {
            return Err(err(
                "apiVersion",
                format!(
                    "{api_version} is not a served version of {kind} (expected {group}/{})",
                    versions.join(", ")
                ),
            ));
        }
        Ok(())
    };
    match group {
        NETWORKING => istio(NETWORKING_KINDS, NETWORKING_VERSIONS)?,
        SECURITY => istio(SECURITY_KINDS, SECURITY_VERSIONS)?,
        g if g == "istio.io" || g.ends_with(".istio.io") => {
            return Err(err(
                "apiVersion",
                format!("{kind} of {group} is not supported by ferry-control"),
            ));
        }
        _ => {}
    }
    let dispatch = |v: Value| -> Result<Manifest, ManifestError> {
        Ok(match (group, kind.as_str()) {
            (NETWORKING, "VirtualService") => Manifest::VirtualService(typed(v, &err)?),
            (NETWORKING, "DestinationRule") => Manifest::DestinationRule(typed(v, &err)?),
            (NETWORKING, "ServiceEntry") => Manifest::ServiceEntry(typed(v, &err)?),
            (NETWORKING, "WorkloadEntry") => Manifest::WorkloadEntry(typed(v, &err)?),
            (NETWORKING, "Sidecar") => Manifest::Sidecar(typed(v, &err)?),
            (SECURITY, "PeerAuthentication") => Manifest::PeerAuthentication(typed(v, &err)?),
            (SECURITY, "AuthorizationPolicy") => Manifest::AuthorizationPolicy(typed(v, &err)?),
            ("", "Namespace") if version == "v1" => Manifest::Namespace(typed(v, &err)?),
            ("", "Service") if version == "v1" => Manifest::Service(typed(v, &err)?),
            ("", "Pod") if version == "v1" => Manifest::Pod(typed(v, &err)?),
            ("discovery.k8s.io", "EndpointSlice") if version == "v1" => {
                Manifest::EndpointSlice(typed(v, &err)?)
            }
            ("", "Namespace" | "Service" | "Pod") | ("discovery.k8s.io", "EndpointSlice") => {
                return Err(err(
                    "apiVersion",
                    format!("{api_version} is not a supported version of {kind}"),
                ));
            }
            _ => Manifest::Ignored(Ignored {
                api_version: api_version.clone(),
                kind: kind.clone(),
                name: name.clone(),
                reason: format!("{kind} is not read by ferry-control"),
            }),
        })
    };
    dispatch(value)
}

/// Reads a bare `spec` value (as a store that kept the raw JSON holds it) into a typed spec,
/// with the same rules as [`from_value`]: nulls are absent, unknown fields are errors, and the
/// error names the field as `spec.…`. A missing spec (`null`) is the default spec.
pub fn spec_from_value<S: DeserializeOwned + Default>(
    mut spec: Value,
) -> Result<S, crate::validate::FieldError> {
    if spec.is_null() {
        return Ok(S::default());
    }
    drop_nulls(&mut spec);
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        crate::validate::FieldError {
            field: if path == "." {
                "spec".to_owned()
            } else {
                format!("spec.{path}")
            },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Deserializes with the path of the failing field recorded.
fn typed<T: DeserializeOwned>(
    value: Value,
    err: &impl Fn(&str, String) -> ManifestError,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        err(&field, e.into_inner().to_string())
    })
}

/// Kubernetes treats `field: null` as absent; so do we, so that `spec:` with nothing under it
/// and `nullable` fields read like the API server would store them.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn display_name(map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (_, None) => "-".into(),
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) if map.get("kind").and_then(Value::as_str) == Some("Namespace") => {
            name.into()
        }
        (None, Some(name)) => format!("default/{name}"),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn error(origin: &str, kind: &str, name: &str, field: &str, reason: String) -> ManifestError {
    ManifestError {
        origin: origin.into(),
        kind: kind.into(),
        name: name.into(),
        field: field.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Manifest, ManifestError> {
        let mut docs = parse_documents(text, "t.yaml");
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).map(|d| d.manifest)
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = one(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    circuitBreaker: {}\n",
        )
        .unwrap_err();
        assert_eq!(err.kind, "DestinationRule");
        assert_eq!(err.name, "shop/r");
        assert_eq!(err.field, "spec.trafficPolicy.circuitBreaker");
        assert!(
            err.reason.contains("unknown field `circuitBreaker`"),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(
                "t.yaml#0 DestinationRule shop/r: spec.trafficPolicy.circuitBreaker: unknown field"
            ),
            "{err}"
        );
    }

    #[test]
    fn fractional_weight_is_refused_at_its_path() {
        let err = one(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 20.5\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.http[0].route[0].weight");
        assert_eq!(err.name, "default/r");
    }

    #[test]
    fn integer_map_keys_and_nulls_read_like_kubectl() {
        let m = one(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {app: a}}\n  mtls: null\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        )
        .unwrap();
        let Manifest::PeerAuthentication(pa) = m else {
            panic!("{m:?}")
        };
        assert!(pa.spec.port_level_mtls.contains_key("8080"));
        assert_eq!(pa.spec.mtls, None);
    }

    #[test]
    fn versions_and_kinds_are_dispatched() {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let m = one(&format!("apiVersion: networking.istio.io/{v}\nkind: Sidecar\nmetadata: {{name: s}}\nspec: {{}}\n")).unwrap();
            assert_eq!(m.kind(), "Sidecar");
        }
        let err = one("apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: p}\n").unwrap_err();
        assert_eq!(err.field, "apiVersion");
        let err = one("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n")
            .unwrap_err();
        assert!(err.reason.contains("not supported"), "{err}");
        let m = one("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\nspec: {replicas: 1}\n").unwrap();
        assert!(
            matches!(m, Manifest::Ignored(ref i) if i.name == "x/d"),
            "{m:?}"
        );
        let m = one("apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: reviews}\n").unwrap();
        assert_eq!(m.display_name(), "default/reviews");
    }

    #[test]
    fn multi_document_files_keep_going_after_a_bad_document() {
        let docs = parse_documents(
            "---\n# comment only\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\nkind: VirtualService\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "f.yaml",
        );
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(docs[0].as_ref().unwrap().origin, "f.yaml#1");
        assert_eq!(docs[1].as_ref().unwrap_err().field, "apiVersion");
        assert!(docs[2].is_ok());
    }

    #[test]
    fn kubectl_lists_are_read_item_by_item() {
        let docs = parse_documents(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: Sidecar\n  metadata: {name: s}\n  spec: {egress: [{hosts: ['./*']}]}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n",
            "l.yaml",
        );
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].as_ref().unwrap().origin, "l.yaml#0.items[0]");
        assert!(matches!(
            docs[1].as_ref().unwrap().manifest,
            Manifest::Ignored(_)
        ));
    }

    #[test]
    fn bare_specs_read_with_spec_paths() {
        let vs: VirtualService =
            spec_from_value(serde_json::json!({"hosts": ["a"], "http": [{"timeout": null}]}))
                .unwrap();
        assert_eq!(vs.hosts, ["a"]);
        let err = spec_from_value::<DestinationRule>(
            serde_json::json!({"host": "a", "trafficPolicy": {"circuitBreaker": {}}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.trafficPolicy.circuitBreaker");
        let empty: Sidecar = spec_from_value(Value::Null).unwrap();
        assert_eq!(empty, Sidecar::default());
    }

    #[test]
    fn truncated_manifests_never_panic() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: x}\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - headers: {x: {regex: \"a+\"}}\n    route:\n    - destination: {host: a, subset: v1, port: {number: 80}}\n      weight: 100\n    timeout: 1.5s\n    retries: {attempts: 3, perTryTimeout: 100ms}\n";
        for cut in 0..text.len() {
            for doc in parse_documents(&text[..cut], "cut.yaml")
                .into_iter()
                .flatten()
            {
                let _ = crate::validate::check_manifest(&doc.manifest);
            }
        }
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        let docs = parse_documents("a: [unclosed\n", "bad.yaml");
        assert_eq!(docs.len(), 1);
        assert!(
            docs[0]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("invalid YAML")
        );
    }
}
