//! `ferry-control crds`: CustomResourceDefinitions (apiextensions.k8s.io/v1) for the Istio kinds
//! ferry-control reads, generated from the Rust types' JSON schemas, so the CRDs accept exactly
//! what the parser accepts. One CRD per kind, every version Istio serves (v1 stored).

use std::io::{self, Write};

use kube::core::schema::{OptionalEnum, StructuralSchemaRewriter};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::api::{
    AuthorizationPolicy, DestinationRule, PeerAuthentication, ServiceEntry, Sidecar,
    VirtualService, WorkloadEntry,
};

/// Names of one CRD.
struct Kind {
    kind: &'static str,
    group: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    versions: &'static [&'static str],
    spec_description: &'static str,
    schema: fn() -> Value,
}

const NETWORKING_VERSIONS: &[&str] = &["v1", "v1alpha3", "v1beta1"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

fn kinds() -> [Kind; 7] {
    let net = |kind, plural, short_names, spec_description, schema| Kind {
        kind,
        group: "networking.istio.io",
        plural,
        short_names,
        versions: NETWORKING_VERSIONS,
        spec_description,
        schema,
    };
    let sec = |kind, plural, short_names, spec_description, schema| Kind {
        kind,
        group: "security.istio.io",
        plural,
        short_names,
        versions: SECURITY_VERSIONS,
        spec_description,
        schema,
    };
    [
        net(
            "DestinationRule",
            "destinationrules",
            &["dr"],
            "Load balancing, connection pools, outlier detection and TLS for a host.",
            schema_of::<DestinationRule>,
        ),
        net(
            "ServiceEntry",
            "serviceentries",
            &["se"],
            "Adds a service to the mesh's registry.",
            schema_of::<ServiceEntry>,
        ),
        net(
            "Sidecar",
            "sidecars",
            &[],
            "Scopes and configures a workload's sidecar.",
            schema_of::<Sidecar>,
        ),
        net(
            "VirtualService",
            "virtualservices",
            &["vs"],
            "Routing rules for a set of hosts.",
            schema_of::<VirtualService>,
        ),
        net(
            "WorkloadEntry",
            "workloadentries",
            &["we"],
            "A non-Kubernetes workload.",
            schema_of::<WorkloadEntry>,
        ),
        sec(
            "AuthorizationPolicy",
            "authorizationpolicies",
            &["ap"],
            "Access control for workloads.",
            schema_of::<AuthorizationPolicy>,
        ),
        sec(
            "PeerAuthentication",
            "peerauthentications",
            &["pa"],
            "Peer (mTLS) authentication for workloads.",
            schema_of::<PeerAuthentication>,
        ),
    ]
}

/// The structural OpenAPI v3 schema of a spec type, as Kubernetes requires it: inlined, no
/// `$ref`, no `additionalProperties: false`, enums as string enums.
fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let generator = settings
        .with_transform(OptionalEnum)
        .with_transform(StructuralSchemaRewriter)
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    structural(&mut value);
    value
}

/// Cleans a generated schema into what apiextensions/v1 accepts and Istio's CRDs look like.
fn structural(value: &mut Value) {
    let Value::Object(map) = value else { return };
    for key in [
        "$schema",
        "title",
        "definitions",
        "$defs",
        "nullable",
        "default",
    ] {
        map.remove(key);
    }
    // Unsigned formats are not OpenAPI formats: express them as ranges, as Istio does.
    match map.get("format").and_then(Value::as_str) {
        Some("uint32") => {
            map.remove("format");
            map.insert("minimum".into(), json!(0));
            map.insert("maximum".into(), json!(4_294_967_295u64));
        }
        Some("uint64" | "uint") => {
            map.remove("format");
            map.insert("minimum".into(), json!(0));
        }
        Some("uint8" | "uint16" | "int8" | "int16") => {
            map.remove("format");
        }
        _ => {}
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }
    for v in map.values_mut() {
        match v {
            Value::Object(_) => structural(v),
            Value::Array(items) => items.iter_mut().for_each(structural),
            _ => {}
        }
    }
}

/// The CRDs, one JSON value per kind, in a stable order.
pub fn crds() -> Vec<Value> {
    kinds().iter().map(crd).collect()
}

fn crd(k: &Kind) -> Value {
    let mut spec = (k.schema)();
    if let Value::Object(m) = &mut spec {
        m.insert("description".into(), json!(k.spec_description));
    }
    let versions: Vec<Value> = k
        .versions
        .iter()
        .map(|v| {
            json!({
                "name": v,
                "served": true,
                "storage": *v == "v1",
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": spec,
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
                "subresources": {"status": {}},
            })
        })
        .collect();
    let category = k.group.replace('.', "-");
    let mut names = Map::new();
    names.insert("categories".into(), json!(["istio-io", category]));
    names.insert("kind".into(), json!(k.kind));
    names.insert("listKind".into(), json!(format!("{}List", k.kind)));
    names.insert("plural".into(), json!(k.plural));
    if !k.short_names.is_empty() {
        names.insert("shortNames".into(), json!(k.short_names));
    }
    names.insert("singular".into(), json!(k.kind.to_lowercase()));
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", k.plural, k.group),
            "labels": {"app.kubernetes.io/part-of": "ferry"},
        },
        "spec": {
            "group": k.group,
            "names": names,
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// The CRDs as a multi-document YAML stream, what `ferry-control crds` prints and
/// `manifests/crds.yaml` holds.
pub fn crds_yaml() -> String {
    let mut out = String::from("# Generated by `ferry-control crds`; do not edit.\n");
    for c in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&c).unwrap_or_default());
    }
    out
}

/// Runs `ferry-control crds`: prints the CRDs.
pub fn run(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(crds_yaml().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    #[test]
    fn checked_in_crds_match_the_generated_ones() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
        let checked_in = std::fs::read_to_string(path).expect("manifests/crds.yaml");
        assert!(
            checked_in == crds_yaml(),
            "manifests/crds.yaml is stale: run `cargo run -p ferry-control -- crds > manifests/crds.yaml`"
        );
    }

    #[test]
    fn crds_are_valid_apiextensions_v1_with_istio_versions() {
        let crds = crds();
        assert_eq!(crds.len(), 7);
        for c in crds {
            let crd: CustomResourceDefinition = serde_json::from_value(c).expect("CRD shape");
            let versions: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
            let storage: Vec<_> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.as_str())
                .collect();
            assert_eq!(storage, ["v1"], "{}", crd.spec.names.kind);
            assert!(crd.spec.versions.iter().all(|v| v.served));
            if crd.spec.group == "security.istio.io" {
                assert_eq!(versions, ["v1", "v1beta1"]);
            } else {
                assert_eq!(versions, ["v1", "v1alpha3", "v1beta1"]);
            }
        }
    }

    #[test]
    fn schemas_are_structural() {
        fn walk(v: &Value, path: &str) {
            let Value::Object(m) = v else { return };
            for bad in ["$ref", "anyOf", "oneOf", "allOf", "nullable", "$defs"] {
                assert!(!m.contains_key(bad), "{bad} at {path}");
            }
            if let Some(props) = m.get("properties").and_then(Value::as_object) {
                assert_eq!(m.get("type"), Some(&json!("object")), "{path}");
                assert!(!m.contains_key("additionalProperties"), "{path}");
                for (k, p) in props {
                    assert!(
                        p.get("type").is_some()
                            || p.get("x-kubernetes-preserve-unknown-fields").is_some(),
                        "{path}.{k} has no type"
                    );
                    walk(p, &format!("{path}.{k}"));
                }
            }
            if let Some(items) = m.get("items") {
                walk(items, &format!("{path}[]"));
            }
            if let Some(ap) = m.get("additionalProperties") {
                walk(ap, &format!("{path}{{}}"));
            }
        }
        for c in crds() {
            walk(&c["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "");
        }
    }

    #[test]
    fn virtual_service_schema_has_istio_fields() {
        let vs = schema_of::<VirtualService>();
        let http = &vs["properties"]["http"]["items"]["properties"];
        for f in [
            "match",
            "route",
            "redirect",
            "directResponse",
            "delegate",
            "rewrite",
            "timeout",
            "retries",
            "fault",
            "mirror",
            "mirrors",
            "mirrorPercent",
            "mirror_percent",
            "mirrorPercentage",
            "corsPolicy",
            "headers",
            "name",
        ] {
            assert!(http.get(f).is_some(), "http.{f}");
        }
        assert_eq!(
            http["route"]["items"]["properties"]["weight"]["format"],
            json!("int32")
        );
        assert_eq!(http["timeout"]["type"], json!("string"));
    }
}
