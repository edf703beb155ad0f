//! Manifests from the wild (`testdata/good`): Bookinfo's rules, canary, fault, mirror, retries,
//! circuit breaking, ServiceEntries, security policies, Sidecars, and one manifest per kind with
//! every field Istio's schema has. They parse in every served API version, validate, and survive
//! a serialize/parse round trip.

use std::path::{Path, PathBuf};

use ferry_control::api::{Document, Manifest, parse_documents};

fn good(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/good")
        .join(name)
}

fn files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(good(""))
        .expect("testdata/good")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn parse_ok(text: &str, origin: &str) -> Vec<Document> {
    parse_documents(text, origin)
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn is_istio(m: &Manifest) -> bool {
    matches!(
        m,
        Manifest::VirtualService(_)
            | Manifest::DestinationRule(_)
            | Manifest::ServiceEntry(_)
            | Manifest::WorkloadEntry(_)
            | Manifest::Sidecar(_)
            | Manifest::PeerAuthentication(_)
            | Manifest::AuthorizationPolicy(_)
    )
}

/// The same text with every Istio apiVersion set to `version` of its group.
fn with_version(text: &str, networking: &str, security: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("apiVersion: networking.istio.io/") {
                format!("apiVersion: networking.istio.io/{networking}")
            } else if l.starts_with("apiVersion: security.istio.io/") {
                format!("apiVersion: security.istio.io/{security}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn spec_json(m: &Manifest) -> serde_json::Value {
    match m {
        Manifest::VirtualService(o) => serde_json::to_value(&o.spec),
        Manifest::DestinationRule(o) => serde_json::to_value(&o.spec),
        Manifest::ServiceEntry(o) => serde_json::to_value(&o.spec),
        Manifest::WorkloadEntry(o) => serde_json::to_value(&o.spec),
        Manifest::Sidecar(o) => serde_json::to_value(&o.spec),
        Manifest::PeerAuthentication(o) => serde_json::to_value(&o.spec),
        Manifest::AuthorizationPolicy(o) => serde_json::to_value(&o.spec),
        _ => Ok(serde_json::Value::Null),
    }
    .expect("serialize")
}

#[test]
fn every_good_manifest_parses_in_every_served_version() {
    let mut istio = 0;
    for file in files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let name = file.display().to_string();
        let baseline = parse_ok(&text, &name);
        for (net, sec) in [
            ("v1", "v1"),
            ("v1beta1", "v1beta1"),
            ("v1alpha3", "v1beta1"),
        ] {
            let docs = parse_ok(&with_version(&text, net, sec), &name);
            assert_eq!(docs.len(), baseline.len(), "{name} {net}");
            for (a, b) in docs.iter().zip(&baseline) {
                assert_eq!(a.manifest.kind(), b.manifest.kind());
                assert_eq!(
                    spec_json(&a.manifest),
                    spec_json(&b.manifest),
                    "{name} {net}"
                );
            }
        }
        istio += baseline.iter().filter(|d| is_istio(&d.manifest)).count();
    }
    assert!(istio >= 40, "only {istio} Istio objects");
}

#[test]
fn istio_objects_round_trip_through_yaml() {
    for file in files() {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in parse_ok(&text, &file.display().to_string()) {
            let yaml = match &doc.manifest {
                Manifest::VirtualService(o) => serde_yaml_ng::to_string(o),
                Manifest::DestinationRule(o) => serde_yaml_ng::to_string(o),
                Manifest::ServiceEntry(o) => serde_yaml_ng::to_string(o),
                Manifest::WorkloadEntry(o) => serde_yaml_ng::to_string(o),
                Manifest::Sidecar(o) => serde_yaml_ng::to_string(o),
                Manifest::PeerAuthentication(o) => serde_yaml_ng::to_string(o),
                Manifest::AuthorizationPolicy(o) => serde_yaml_ng::to_string(o),
                _ => continue,
            }
            .expect("serialize");
            let again = parse_ok(&yaml, "round-trip");
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].manifest, doc.manifest, "{}\n{yaml}", doc.origin);
        }
    }
}

#[test]
fn all_fields_manifests_cover_every_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for file in files() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        if !name.starts_with("all-fields-") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in parse_ok(&text, &name) {
            kinds.insert(doc.manifest.kind().to_owned());
        }
    }
    let want = [
        "AuthorizationPolicy",
        "DestinationRule",
        "PeerAuthentication",
        "ServiceEntry",
        "Sidecar",
        "VirtualService",
        "WorkloadEntry",
    ];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn all_fields_virtual_service_reads_into_the_types() {
    let text = std::fs::read_to_string(good("all-fields-virtual-service.yaml")).expect("read");
    let docs = parse_ok(&text, "vs");
    let Manifest::VirtualService(vs) = &docs[0].manifest else {
        panic!()
    };
    let http = &vs.spec.http[0];
    assert_eq!(http.route[0].weight, Some(80));
    assert_eq!(http.timeout.map(|t| t.get().as_secs()), Some(10));
    assert_eq!(http.retries.as_ref().and_then(|r| r.attempts), Some(3));
    assert_eq!(http.mirror_percent, Some(50));
    assert_eq!(http.mirror_percent_snake, Some(50));
    assert!(http.match_[0].headers["x-present"].kind() == ferry_control::api::MatchKind::Any);
    assert_eq!(vs.namespace(), "shop");
}
