//! ferry-proxy's lifecycle on real sockets: config swaps under continuous traffic fail nothing
//! and apply to the next request; removing a listener stops accepting while its in-flight
//! request finishes; shutdown drains in-flight requests before returning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ferry_proxy::app::{self, Running};
use ferry_proxy::cluster::ClusterConfig;
use ferry_proxy::listener::Listener;
use ferry_proxy::snapshot::Resources;
use ferry_tests::net::{self, Protocol, Reply};
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::upstream::Upstream;
use http::{Method, StatusCode};
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

const HCM: &str = "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "http_filters: [{ name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]";

fn cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]"#,
        addr.port()
    )
}

/// Listeners named in `listeners` on 127.0.0.1:0, each routing everything to `target`.
fn bootstrap(listeners: &[&str], target: &str, clusters: &[String]) -> Bootstrap {
    let listeners: String = listeners
        .iter()
        .map(|name| {
            format!(
                r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          {HCM}
          stat_prefix: {name}
          {ROUTER}
          route_config:
            name: {name}
            virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: {target} }} }}] }}]"#
            )
        })
        .collect();
    let yaml = format!(
        "static_resources:\n  listeners:{listeners}\n  clusters:{}\n",
        clusters.concat()
    );
    xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses")
}

/// The bootstrap's static resources, validated the way the xDS client does.
fn resources(bootstrap: &Bootstrap) -> Resources {
    let statics = bootstrap
        .static_resources
        .as_ref()
        .expect("static resources");
    let mut resources = Resources::default();
    for l in &statics.listeners {
        let l = Listener::try_from(l).expect("listener");
        resources.listeners.insert(l.name.clone(), Arc::new(l));
    }
    for c in &statics.clusters {
        let c = ClusterConfig::try_from(c).expect("cluster");
        resources.clusters.insert(c.name.clone(), Arc::new(c));
    }
    resources
}

async fn get(addr: SocketAddr) -> Result<Reply, net::ClientError> {
    let request = net::request(Method::GET, "app.test", "/", &[]).expect("request");
    net::send(addr, Protocol::Http1, request).await
}

fn instance(reply: &Reply) -> String {
    reply
        .header("x-upstream-instance")
        .unwrap_or("-")
        .to_owned()
}

#[tokio::test]
async fn config_swaps_under_load_fail_nothing() {
    let a = Upstream::echo("a").await.expect("a");
    let b = Upstream::echo("b").await.expect("b");
    let clusters = [cluster("a", a.addr), cluster("b", b.addr)];
    let proxy: Running = app::start(bootstrap(&["http"], "a", &clusters))
        .await
        .expect("starts");
    let addr = proxy.listener_addr("http").expect("bound");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let load = {
        let (stop, failures, seen) = (stop.clone(), failures.clone(), seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get(addr).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        *seen
                            .lock()
                            .expect("lock")
                            .entry(instance(&reply))
                            .or_default() += 1;
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    // Flip the route between the two clusters while requests flow; the listener keeps its
    // socket (same address), so no connection is refused.
    for round in 0..20 {
        let target = if round % 2 == 0 { "b" } else { "a" };
        proxy
            .store
            .apply(resources(&bootstrap(&["http"], target, &clusters)));
        let before = seen.lock().expect("lock").values().sum::<usize>();
        poll_until("requests after a swap", PATIENCE, || {
            let seen = seen.clone();
            async move {
                (seen.lock().expect("lock").values().sum::<usize>() > before + 2).then_some(())
            }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed requests during swaps"
    );
    assert_eq!(
        proxy.listener_addr("http"),
        Some(addr),
        "the socket was kept"
    );
    // The last swap routed to "a"; the next request sees it.
    assert_eq!(instance(&get(addr).await.expect("reply")), "a");
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.contains_key("a") && seen.contains_key("b"), "{seen:?}");
}

#[tokio::test]
async fn removed_listener_drains_and_shutdown_waits_for_in_flight() {
    let (gated, gate) = Upstream::gated("gated").await.expect("gated");
    let clusters = [cluster("gated", gated.addr)];
    let proxy = app::start(bootstrap(&["keep", "remove"], "gated", &clusters))
        .await
        .expect("starts");
    let removed = proxy.listener_addr("remove").expect("bound");
    let kept = proxy.listener_addr("keep").expect("bound");

    // One request in flight on the listener about to be removed.
    let in_flight = tokio::spawn(get(removed));
    poll_until("the request reaches the upstream", PATIENCE, || async {
        (gate.arrived() == 1).then_some(())
    })
    .await;
    proxy
        .store
        .apply(resources(&bootstrap(&["keep"], "gated", &clusters)));
    poll_until("the removed listener stops accepting", PATIENCE, || async {
        tokio::net::TcpStream::connect(removed)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(proxy.listener_addr("remove").is_none());

    // A second in-flight request on the kept listener, then shutdown: neither is cut off.
    let second = tokio::spawn(get(kept));
    poll_until(
        "the second request reaches the upstream",
        PATIENCE,
        || async { (gate.arrived() == 2).then_some(()) },
    )
    .await;
    let listeners = proxy.listeners.clone();
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(60)));
    poll_until("the kept listener stops accepting", PATIENCE, || async {
        tokio::net::TcpStream::connect(kept)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for in-flight requests"
    );
    gate.open();
    for reply in [in_flight.await.expect("task"), second.await.expect("task")] {
        let reply = reply.expect("in-flight request completes");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "released");
    }
    shutdown.await.expect("shutdown completes");
    drop(listeners);
}
