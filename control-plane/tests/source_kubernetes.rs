//! The Kubernetes source against a scripted API server, the way kube-rs tests itself: a
//! `tower_test::mock` service behind `kube::Client::new` answers list and watch requests with
//! the objects of testdata/mesh, then watch events (ADDED, MODIFIED, DELETED), a failed watch,
//! and a 410 Gone that forces a relist. The model must equal the directory source's.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_control::model::Model;
use ferry_control::source::dir::model_from_dir;
use ferry_control::source::kubernetes::watch_kubernetes;
use ferry_control::source::object::Kind;
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, timeout};
use tower_test::mock;

const FQDN: &str = ".default.svc.cluster.local";

fn mesh_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/mesh")
}

/// Every document of testdata/mesh that a watcher would list, by resource plural.
fn mesh_objects(dir: &Path) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    let mut out: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    for kind in Kind::ALL {
        out.insert(kind.plural(), BTreeMap::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("testdata/mesh")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).expect("yaml");
            let Some(kind) = value["kind"].as_str().and_then(Kind::from_kind_str) else {
                continue;
            };
            out.entry(kind.plural())
                .or_default()
                .insert(key(&value), value);
        }
    }
    out
}

fn key(value: &Value) -> String {
    let ns = value["metadata"]["namespace"].as_str().unwrap_or("default");
    format!(
        "{ns}/{}",
        value["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// What the test tells the API server to do with the next watch request of a resource.
enum Script {
    /// Answer with these watch events (`ADDED`, `MODIFIED`, `DELETED`), then end the stream.
    Events(Vec<(&'static str, Value)>),
    /// Answer with an HTTP error.
    Fail(StatusCode),
    /// Answer the held list requests of the resource (not a watch script).
    ReleaseList,
    /// Drop these objects without telling anyone, then answer with a 410 Gone watch event: the
    /// watcher must relist to find out.
    Gone(Vec<String>),
}

type SendResponse = mock::SendResponse<Response<Body>>;

/// A scripted API server: lists answer with the current objects; watches wait for a script.
struct ApiServer {
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    scripts: BTreeMap<String, VecDeque<Script>>,
    pending: BTreeMap<String, Vec<SendResponse>>,
    lists: Arc<Mutex<BTreeMap<String, usize>>>,
    version: u64,
    /// Resources whose next lists fail (HTTP 500), with how many times.
    failing_lists: BTreeMap<String, usize>,
    /// Resources whose lists are held until a [`Script::ReleaseList`].
    held_lists: BTreeMap<String, Vec<SendResponse>>,
}

impl ApiServer {
    async fn serve(
        mut self,
        mut handle: mock::Handle<Request<Body>, Response<Body>>,
        mut commands: mpsc::UnboundedReceiver<(&'static str, Script)>,
    ) {
        loop {
            tokio::select! {
                request = handle.next_request() => {
                    let Some((request, send)) = request else { return };
                    let plural = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
                    if request.uri().query().unwrap_or_default().contains("watch=true") {
                        self.pending.entry(plural.clone()).or_default().push(send);
                        self.flush(&plural);
                    } else {
                        *self.lists.lock().expect("lock").entry(plural.clone()).or_default() += 1;
                        if let Some(held) = self.held_lists.get_mut(&plural) {
                            held.push(send);
                        } else if let Some(n) = self.failing_lists.get_mut(&plural).filter(|n| **n > 0) {
                            *n -= 1;
                            send.send_response(status(StatusCode::INTERNAL_SERVER_ERROR));
                        } else {
                            send.send_response(self.list(&plural));
                        }
                    }
                }
                command = commands.recv() => {
                    let Some((plural, script)) = command else { return };
                    if let Script::ReleaseList = script {
                        for send in self.held_lists.remove(plural).unwrap_or_default() {
                            send.send_response(self.list(plural));
                        }
                        continue;
                    }
                    self.scripts.entry(plural.to_owned()).or_default().push_back(script);
                    self.flush(plural);
                }
            }
        }
    }

    fn list(&mut self, plural: &str) -> Response<Body> {
        self.version += 1;
        let items: Vec<Value> = self
            .objects
            .get(plural)
            .into_iter()
            .flat_map(|o| o.values().cloned())
            .collect();
        let body =
            json!({"metadata": {"resourceVersion": self.version.to_string()}, "items": items});
        ok(body.to_string())
    }

    /// Answers a waiting watch with the next script, if both are there.
    fn flush(&mut self, plural: &str) {
        let Some(send) = self.pending.get_mut(plural).and_then(Vec::pop) else {
            return;
        };
        let Some(script) = self.scripts.get_mut(plural).and_then(VecDeque::pop_front) else {
            self.pending
                .entry(plural.to_owned())
                .or_default()
                .push(send);
            return;
        };
        let objects = self.objects.entry(leak(plural)).or_default();
        let response = match script {
            Script::Events(events) => {
                let mut lines = String::new();
                for (kind, mut object) in events {
                    self.version += 1;
                    object["metadata"]["resourceVersion"] = json!(self.version.to_string());
                    match kind {
                        "DELETED" => objects.remove(&key(&object)),
                        _ => objects.insert(key(&object), object.clone()),
                    };
                    lines.push_str(&json!({"type": kind, "object": object}).to_string());
                    lines.push('\n');
                }
                ok(lines)
            }
            Script::Fail(code) => status(code),
            Script::ReleaseList => return,
            Script::Gone(keys) => {
                for key in keys {
                    objects.remove(&key);
                }
                let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
                ok(format!("{event}\n"))
            }
        };
        send.send_response(response);
    }
}

fn leak(plural: &str) -> &'static str {
    Kind::ALL
        .iter()
        .map(|k| k.plural())
        .find(|p| *p == plural)
        .unwrap_or_else(|| panic!("unexpected resource {plural}"))
}

fn status(code: StatusCode) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "scripted failure", "reason": "InternalError", "code": code.as_u16()});
    let mut response = ok(body.to_string());
    *response.status_mut() = code;
    response
}

fn ok(body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .expect("response")
}

async fn wait_for(
    models: &mut watch::Receiver<Arc<Model>>,
    what: &str,
    f: impl Fn(&Model) -> bool,
) {
    let waited = timeout(Duration::from_secs(60), models.wait_for(|m| f(m)))
        .await
        .map(|r| r.is_ok());
    assert_eq!(
        waited,
        Ok(true),
        "no model with {what}: {:?}",
        models.borrow().services.keys()
    );
}

/// The model without origins: the directory says `file#index`, Kubernetes `namespace/name`.
fn without_origins(model: &Model) -> Model {
    let mut model = model.clone();
    model
        .virtual_services
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model
        .destination_rules
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model.sidecars.iter_mut().for_each(|c| c.origin.clear());
    model
        .peer_authentications
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model
        .authorization_policies
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model
        .service_entries
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model
        .workload_entries
        .iter_mut()
        .for_each(|c| c.origin.clear());
    model
}

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 8080}]}})
}

type Commands = mpsc::UnboundedSender<(&'static str, Script)>;

/// Starts the scripted API server on testdata/mesh; returns a client of it, the command
/// channel and the list request counts per resource.
fn start_api_server(
    failing_lists: BTreeMap<String, usize>,
    held_lists: BTreeMap<String, Vec<SendResponse>>,
) -> (Client, Commands, Arc<Mutex<BTreeMap<String, usize>>>) {
    let (service_mock, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (commands, command_rx) = mpsc::unbounded_channel();
    let lists = Arc::new(Mutex::new(BTreeMap::new()));
    let server = ApiServer {
        objects: mesh_objects(&mesh_dir()),
        scripts: BTreeMap::new(),
        pending: BTreeMap::new(),
        lists: lists.clone(),
        version: 100,
        failing_lists,
        held_lists,
    };
    tokio::spawn(server.serve(handle, command_rx));
    (Client::new(service_mock, "default"), commands, lists)
}

#[tokio::test(start_paused = true)]
async fn nothing_is_published_before_every_kind_is_listed() {
    let failing = BTreeMap::from([("virtualservices".to_owned(), 2)]);
    let held = BTreeMap::from([("sidecars".to_owned(), Vec::new())]);
    let (client, commands, lists) = start_api_server(failing, held);
    let mut source = tokio::spawn(watch_kubernetes(client));
    // Sidecars are not listed yet: a minute later (paused clock) the source still waits, having
    // retried the failing VirtualService list meanwhile.
    assert!(
        timeout(Duration::from_secs(60), &mut source).await.is_err(),
        "the source must wait for the sidecars list"
    );
    assert_eq!(
        lists.lock().expect("lock")["virtualservices"],
        3,
        "two failures, then success"
    );
    commands
        .send(("sidecars", Script::ReleaseList))
        .expect("server");
    let handle = timeout(Duration::from_secs(60), source)
        .await
        .expect("initial sync after the release")
        .expect("task")
        .expect("source");
    let model = handle.models.borrow().clone();
    assert_eq!(model.sidecars.len(), 1);
    assert_eq!(model.virtual_services.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn kubernetes_source_reaches_the_directory_model_and_follows_watch_events() {
    let (dir_model, dir_errors) = model_from_dir(&mesh_dir()).expect("testdata/mesh");
    assert!(dir_errors.is_empty(), "{dir_errors:?}");

    let (client, commands, lists) = start_api_server(BTreeMap::new(), BTreeMap::new());
    let source = timeout(Duration::from_secs(60), watch_kubernetes(client))
        .await
        .expect("initial sync in time")
        .expect("initial sync");
    let mut models = source.models.clone();
    let first = without_origins(&models.borrow_and_update());
    assert_eq!(
        first,
        without_origins(&dir_model),
        "same objects, same model"
    );
    assert_eq!(
        first.virtual_services.len(),
        2,
        "Istio kinds are watched too"
    );
    assert_eq!(
        models.borrow().virtual_services[0].origin,
        "default/ratings"
    );
    assert!(source.errors.borrow().is_empty());
    assert!(
        lists.lock().expect("lock").values().all(|n| *n == 1),
        "one list per kind"
    );

    // Watch events: add, modify, delete.
    let mut reviews = mesh_objects(&mesh_dir())["services"]["default/reviews"].clone();
    reviews["spec"]["clusterIP"] = json!("10.96.9.9");
    let ratings = mesh_objects(&mesh_dir())["services"]["default/ratings"].clone();
    let events = vec![
        ("ADDED", service("extra", "10.96.1.1")),
        ("MODIFIED", reviews),
        ("DELETED", ratings),
    ];
    commands
        .send(("services", Script::Events(events)))
        .expect("server");
    wait_for(&mut models, "the three events", |m| {
        m.services.contains_key(&format!("extra{FQDN}"))
            && !m.services.contains_key(&format!("ratings{FQDN}"))
            && m.services[&format!("reviews{FQDN}")].addresses
                == ["10.96.9.9".parse::<std::net::IpAddr>().expect("ip")]
    })
    .await;
    let after_events = models.borrow_and_update().clone();

    // A failed watch: the watcher backs off and watches again; nothing is dropped meanwhile.
    commands
        .send(("services", Script::Fail(StatusCode::INTERNAL_SERVER_ERROR)))
        .expect("server");
    commands
        .send((
            "services",
            Script::Events(vec![("ADDED", service("extra2", "10.96.1.2"))]),
        ))
        .expect("server");
    wait_for(&mut models, "extra2", |m| {
        m.services.contains_key(&format!("extra2{FQDN}"))
    })
    .await;
    assert_eq!(
        models.borrow().services.len(),
        after_events.services.len() + 1
    );
    assert_eq!(
        lists.lock().expect("lock")["services"],
        1,
        "a failed watch does not relist"
    );

    // 410 Gone: `extra` vanished while we were not looking; only a relist can tell.
    commands
        .send(("services", Script::Gone(vec!["default/extra".into()])))
        .expect("server");
    wait_for(&mut models, "extra gone after relist", |m| {
        !m.services.contains_key(&format!("extra{FQDN}"))
    })
    .await;
    assert_eq!(lists.lock().expect("lock")["services"], 2, "410 relists");
    let relisted = models.borrow().clone();
    assert!(relisted.services.contains_key(&format!("extra2{FQDN}")));
    assert!(relisted.services.contains_key(&format!("reviews{FQDN}")));
    assert_eq!(relisted.services.len(), after_events.services.len());

    // Istio kinds follow their watches too: the canary moves to 50/50.
    let mut vs = mesh_objects(&mesh_dir())["virtualservices"]["default/reviews"].clone();
    vs["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    vs["spec"]["http"][0]["route"][1]["weight"] = json!(50);
    commands
        .send(("virtualservices", Script::Events(vec![("MODIFIED", vs)])))
        .expect("server");
    wait_for(&mut models, "the 50/50 split", |m| {
        m.virtual_services
            .iter()
            .find(|c| c.name == "reviews")
            .is_some_and(|c| c.spec.http[0].route[0].weight == Some(50))
    })
    .await;
    let relisted = models.borrow().clone();

    // The directory source holding the same objects builds the same model.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = String::new();
    for objects in mesh_objects(&mesh_dir()).values() {
        for object in objects.values() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let replaced = match object["kind"].as_str() {
                Some("Service") => matches!(name, "ratings" | "reviews"),
                Some("VirtualService") => name == "reviews",
                _ => false,
            };
            if replaced {
                continue;
            }
            all.push_str(&format!("---\n{object}\n"));
        }
    }
    let mut reviews = mesh_objects(&mesh_dir())["services"]["default/reviews"].clone();
    reviews["spec"]["clusterIP"] = json!("10.96.9.9");
    let mut vs = mesh_objects(&mesh_dir())["virtualservices"]["default/reviews"].clone();
    vs["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    vs["spec"]["http"][0]["route"][1]["weight"] = json!(50);
    all.push_str(&format!("---\n{vs}\n"));
    all.push_str(&format!(
        "---\n{reviews}\n---\n{}\n",
        service("extra2", "10.96.1.2")
    ));
    std::fs::write(dir.path().join("all.yaml"), all).expect("write");
    let (same, errors) = model_from_dir(dir.path()).expect("dir");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(without_origins(&relisted), without_origins(&same));
}
