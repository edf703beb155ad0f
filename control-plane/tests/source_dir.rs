//! The directory source on a real temporary directory: the initial model, a new model after a
//! file edit, and a broken edit refused (the object's last accepted version keeps serving) while
//! the rest of its file applies. The watch channel
//! is polled with a timeout; nothing sleeps.

use std::path::Path;
use std::sync::Arc;

use ferry_control::model::Model;
use ferry_control::source::dir::{DirError, watch_dir};
use tokio::sync::watch;
use tokio::time::{Duration, timeout};

const FQDN: &str = ".default.svc.cluster.local";

fn copy_mesh(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/mesh");
    for entry in std::fs::read_dir(from).expect("testdata/mesh") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn service_yaml(name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{clusterIP: 10.96.1.1, ports: [{{name: http, port: {port}}}]}}\n"
    )
}

async fn wait_for(
    models: &mut watch::Receiver<Arc<Model>>,
    what: &str,
    f: impl Fn(&Model) -> bool,
) {
    let waited = timeout(Duration::from_secs(20), models.wait_for(|m| f(m)))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => {}
        Ok(false) => panic!("source stopped while waiting for {what}"),
        Err(_) => panic!(
            "no model with {what} within 20s: {:?}",
            models.borrow().services.keys()
        ),
    }
}

#[tokio::test]
async fn publishes_a_new_model_after_edits_and_skips_broken_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_mesh(dir.path());
    let handle = watch_dir(dir.path()).await.expect("watch starts");
    let mut models = handle.models.clone();
    let initial = models.borrow_and_update().services.len();
    assert_eq!(
        initial, 8,
        "initial read is complete: 4 Kubernetes services, 4 ServiceEntry hosts"
    );
    assert!(
        handle.errors.borrow().is_empty(),
        "{:?}",
        handle.errors.borrow()
    );

    // A new file.
    let extra = dir.path().join("extra.yaml");
    std::fs::write(&extra, service_yaml("extra", 8080)).expect("write");
    wait_for(&mut models, "extra", |m| {
        m.services.contains_key(&format!("extra{FQDN}"))
    })
    .await;

    // The same file, now holding a broken edit of `extra` and a new good object: the good one
    // applies, the edit is refused and `extra` keeps serving as last accepted.
    let text = format!(
        "{}---\n{}",
        service_yaml("extra", 70000),
        service_yaml("extra2", 8081)
    );
    std::fs::write(&extra, text).expect("write");
    wait_for(&mut models, "extra2", |m| {
        m.services.contains_key(&format!("extra2{FQDN}"))
    })
    .await;
    let kept = models.borrow().services[&format!("extra{FQDN}")].ports[0].port;
    assert_eq!(kept, 8080, "the last accepted version of extra");
    let errors = handle.errors.borrow().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].origin, "extra.yaml#0");
    assert_eq!(errors[0].kind, "Service");
    assert_eq!(errors[0].name, "default/extra");
    assert_eq!(errors[0].field, "spec.ports[0].port");
    assert!(
        models
            .borrow()
            .services
            .contains_key(&format!("reviews{FQDN}"))
    );

    // Deleting the file removes its objects and its errors.
    std::fs::remove_file(&extra).expect("remove");
    wait_for(&mut models, "no extra nor extra2", |m| {
        !m.services.contains_key(&format!("extra2{FQDN}"))
            && !m.services.contains_key(&format!("extra{FQDN}"))
    })
    .await;
    assert!(handle.errors.borrow().is_empty());
    assert_eq!(models.borrow().services.len(), initial);
}

#[tokio::test]
async fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = watch_dir(dir.path().join("nope"))
        .await
        .expect_err("missing dir");
    assert!(matches!(err, DirError::Io { .. }), "{err}");
}

/// A Service annotated with `networking.istio.io/exportTo` and a ServiceEntry with `exportTo`,
/// both in namespace shop.
fn exported_yaml(service_export: &str, entry_export: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ledger\n  namespace: shop\n  \
         annotations: {{networking.istio.io/exportTo: {service_export:?}}}\n\
         spec: {{clusterIP: 10.96.1.1, ports: [{{name: http, port: 8080}}]}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: rates, namespace: shop}}\n\
         spec: {{hosts: [rates.example.com], exportTo: [{entry_export:?}], resolution: DNS, \
         ports: [{{number: 443, name: tls, protocol: TLS}}]}}\n"
    )
}

/// The outbound clusters a sidecar in namespace `web` gets from `model`.
fn outbound_clusters_in_web(model: &Model) -> Vec<String> {
    use ferry_control::model::proxy::ProxyNode;
    use ferry_control::translate::{Options, generate};
    let proxy = ProxyNode {
        id: "sidecar~10.0.9.9~client.web~web.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ips: vec!["10.0.9.9".parse().expect("ip")],
        pod: "client".into(),
        namespace: "web".into(),
        labels: Default::default(),
        service_account: "client".into(),
    };
    let out = generate(model, &proxy, &Options::default());
    let mut names: Vec<String> = out
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn export_to_of_services_and_service_entries_follows_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, exported_yaml(".", "web")).expect("write");
    let handle = watch_dir(dir.path()).await.expect("watch starts");
    let mut models = handle.models.clone();
    assert!(
        handle.errors.borrow().is_empty(),
        "{:?}",
        handle.errors.borrow()
    );
    assert_eq!(
        outbound_clusters_in_web(&models.borrow_and_update()),
        ["outbound|443||rates.example.com"],
        "the Service is exported to its own namespace only, the entry to web"
    );

    // Swap them: the Service to web (by name), the entry to its own namespace.
    std::fs::write(&file, exported_yaml("web", ".")).expect("write");
    wait_for(&mut models, "ledger exported to web", |m| {
        m.services
            .get("ledger.shop.svc.cluster.local")
            .is_some_and(|s| s.export_to == ["web"])
    })
    .await;
    assert_eq!(
        outbound_clusters_in_web(&models.borrow()),
        ["outbound|8080||ledger.shop.svc.cluster.local"]
    );

    // An annotation Istio would not accept is refused with its message; the last accepted
    // version keeps serving.
    std::fs::write(&file, exported_yaml("~, web", ".")).expect("write");
    timeout(Duration::from_secs(20), async {
        let mut errors = handle.errors.clone();
        errors
            .wait_for(|e| !e.is_empty())
            .await
            .expect("source runs");
    })
    .await
    .expect("the refused annotation is reported within 20s");
    let errors = handle.errors.borrow().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].name, "shop/ledger");
    assert_eq!(
        errors[0].field,
        "metadata.annotations[networking.istio.io/exportTo]"
    );
    assert_eq!(
        errors[0].reason,
        "cannot export service entry to no one (~) and someone"
    );
    assert_eq!(
        outbound_clusters_in_web(&models.borrow()),
        ["outbound|8080||ledger.shop.svc.cluster.local"]
    );
}
