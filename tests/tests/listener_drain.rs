//! A listener update drains the connections the old listener accepted, as Envoy does: keep-alive
//! clients (HTTP/1.1 and h2c, each a real pooling client) move to a new connection and see the
//! new inline route_config, a request in flight across the update completes, and no request
//! fails. Without the drain, a pooled connection would keep the old route_config forever.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferry_proxy::app::{self, Running};
use ferry_proxy::listener::Listener;
use ferry_proxy::snapshot::Resources;
use ferry_tests::bootstrap;
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::upstream::Upstream;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

/// The `http` listener on 127.0.0.1:0: `/` answers `version` directly, `/gated` goes to the
/// gated upstream.
fn listener_yaml(version: &str) -> String {
    let routes = format!(
        r#"[
        {{ match: {{ prefix: /gated }}, route: {{ cluster: gated }} }},
        {{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: {{ inline_string: "{version}" }} }} }}]"#
    );
    bootstrap::http_listener("http", &routes)
}

fn bootstrap(version: &str, gated: SocketAddr) -> Bootstrap {
    let yaml = bootstrap::static_resources(
        &[listener_yaml(version)],
        &[bootstrap::static_cluster("gated", gated)],
    );
    xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses")
}

/// Swaps in the listener answering `version` (the cluster set stays).
fn update(proxy: &Running, version: &str) {
    replace_listener(proxy, &listener_yaml(version));
}

/// Swaps in the listener of the YAML fragment `listener`.
fn replace_listener(proxy: &Running, listener: &str) {
    let current = proxy.store.load();
    let yaml = format!("listeners:{listener}");
    let holder: xds_proto::envoy::config::bootstrap::v3::bootstrap::StaticResources =
        xds_proto::json::from_yaml_str(&yaml).expect("listener parses");
    let listener = Listener::try_from(&holder.listeners[0]).expect("listener valid");
    let mut resources: Resources = current.resources.clone();
    resources
        .listeners
        .insert(listener.name.clone(), Arc::new(listener));
    proxy.store.apply(resources);
}

type Pooled = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client: HTTP/1.1 pool or one multiplexed h2c connection.
fn client(http2: bool) -> Pooled {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

struct Answer {
    status: StatusCode,
    body: String,
    connection_close: bool,
}

async fn get(client: &Pooled, addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let uri = format!("http://{addr}{path}");
    let response = client
        .get(uri.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let connection_close = response
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v == "close");
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        connection_close,
    })
}

/// Requests `/` until it answers `want`; every answer on the way must be a success.
async fn until_version(client: &Pooled, addr: SocketAddr, want: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            let answer = get(client, addr, "/").await.expect("no request fails");
            assert_eq!(answer.status, StatusCode::OK);
            let done = answer.body == want;
            answers.push(answer);
            if done {
                return;
            }
        }
    })
    .await;
    let seen: Vec<&str> = answers.iter().map(|a| a.body.as_str()).collect();
    assert!(outcome.is_ok(), "never saw {want}; answers: {seen:?}");
    answers
}

#[tokio::test]
async fn keep_alive_clients_move_to_an_updated_listener_without_failures() {
    let (gated, gate) = Upstream::gated("gated").await.expect("gated upstream");
    let proxy = app::start(bootstrap("v1", gated.addr))
        .await
        .expect("proxy starts");
    let addr = proxy.listener_addr("http").expect("bound");
    let accepted = proxy.stats.counter(format!(
        "listener.{}_{}.downstream_cx_total",
        addr.ip(),
        addr.port()
    ));

    let mut version = 1;
    for http2 in [false, true] {
        let client = client(http2);
        let old = format!("v{version}");
        assert_eq!(get(&client, addr, "/").await.expect("first").body, old);

        // The same listener re-sent (a new object, equal by value) drains nothing.
        let connections = accepted.get();
        update(&proxy, &old);
        let again = get(&client, addr, "/").await.expect("same listener");
        assert_eq!(again.body, old);
        assert!(
            !again.connection_close,
            "an unchanged listener keeps its connections"
        );
        assert_eq!(
            accepted.get(),
            connections,
            "no reconnect for an unchanged listener"
        );

        // An idle pooled connection across the update: the client is moved off it.
        version += 1;
        let new = format!("v{version}");
        update(&proxy, &new);
        let answers = until_version(&client, addr, &new).await;
        assert!(
            accepted.get() > connections,
            "http2={http2}: the client reconnected"
        );
        if !http2 {
            // Served by the retired connection until the client reconnects: each says so.
            for answer in answers.iter().filter(|a| a.body == old) {
                assert!(answer.connection_close, "a retired h1 answer closes");
            }
        }
        // The same client keeps seeing the new route on its new connection.
        for _ in 0..3 {
            assert_eq!(get(&client, addr, "/").await.expect("again").body, new);
        }

        // A request in flight across the next update completes on its old connection.
        let in_flight = {
            let client = client.clone();
            tokio::spawn(async move { get(&client, addr, "/gated").await })
        };
        let arrived = gate.arrived();
        poll_until("the request reaches the upstream", PATIENCE, || async {
            (gate.arrived() > arrived).then_some(())
        })
        .await;
        version += 1;
        let newer = format!("v{version}");
        update(&proxy, &newer);
        until_version(&client, addr, &newer).await;
        gate.open();
        let finished = in_flight
            .await
            .expect("task")
            .expect("the in-flight request completes");
        assert_eq!(finished.status, StatusCode::OK);
        assert_eq!(finished.body, "released");
        if !http2 {
            assert!(
                finished.connection_close,
                "the retired h1 connection closes after its in-flight response"
            );
        }
        // The next protocol's in-flight request needs a closed gate again.
        gate.close();
    }
}

/// A listener re-sent unchanged retires nothing; a retired HTTP/1.1 connection that sends
/// nothing more is closed after the HCM's `drain_timeout`, so an idle client does not pin the
/// old listener forever.
#[tokio::test]
async fn an_idle_retired_http1_connection_closes_after_the_drain_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gated, _gate) = Upstream::gated("gated").await.expect("gated upstream");
    let with_timeout = |version: &str| {
        listener_yaml(version).replace(
            "stat_prefix: http",
            "stat_prefix: http\n          drain_timeout: 0.1s",
        )
    };
    let yaml = bootstrap::static_resources(
        &[with_timeout("v1")],
        &[bootstrap::static_cluster("gated", gated.addr)],
    );
    let proxy = app::start(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses"))
        .await
        .expect("proxy starts");
    let addr = proxy.listener_addr("http").expect("bound");

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 4096];
    // One request on the connection; returns the response head and body as text.
    async fn exchange(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .expect("request");
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).ends_with("v1") {
            let n = stream.read(buf).await.expect("response");
            assert_ne!(n, 0, "closed before the response");
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).to_ascii_lowercase()
    }
    exchange(&mut stream, &mut buf).await;

    // The same listener re-sent (a new object, equal by value) retires nothing.
    replace_listener(&proxy, &with_timeout("v1"));
    let again = exchange(&mut stream, &mut buf).await;
    assert!(
        !again.contains("connection: close"),
        "an unchanged listener keeps its connections: {again}"
    );

    replace_listener(&proxy, &with_timeout("v2"));

    let closed = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("the retired idle connection is closed");
    assert_eq!(closed.expect("clean close"), 0, "nothing more was sent");
}

/// The `tcp` listener on 127.0.0.1:0: a `tcp_proxy` to the `echo` cluster.
fn tcp_listener_yaml(stat_prefix: &str) -> String {
    format!(
        r#"
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {stat_prefix}, cluster: echo }}"#
    )
}

/// Removes the listener `name` from the proxy's config.
fn remove_listener(proxy: &Running, name: &str) {
    let mut resources: Resources = proxy.store.load().resources.clone();
    resources.listeners.remove(name);
    proxy.store.apply(resources);
}

/// Sends `text` through the proxied connection and reads it back from the echo upstream.
async fn echo(stream: &mut tokio::net::TcpStream, text: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(text.as_bytes()).await.expect("send");
    let mut back = vec![0u8; text.len()];
    stream
        .read_exact(&mut back)
        .await
        .unwrap_or_else(|e| panic!("{text:?} echoed: {e}"));
    assert_eq!(String::from_utf8_lossy(&back), text);
}

/// Waits until the proxy closes the connection (EOF or reset).
async fn until_closed(stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: never closed"));
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "{what}: unexpected bytes {read:?}"
    );
}

/// Envoy drains a `tcp_proxy` connection with its listener: an update of another listener leaves
/// it alone, while an update or removal of its own listener closes it once the drain time
/// (`--drain-time`) is over. Without the drain, the connection would keep the old listener's
/// config forever.
#[tokio::test]
async fn tcp_proxy_connections_close_when_their_listener_drain_time_ends() {
    use tokio::time::{Duration, Instant};
    let echo_upstream = Upstream::tcp_echo("echo").await.expect("echo upstream");
    let yaml = bootstrap::static_resources(
        &[tcp_listener_yaml("v1"), listener_yaml("v1")],
        &[bootstrap::static_cluster("echo", echo_upstream.addr)],
    );
    let proxy = app::start(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses"))
        .await
        .expect("proxy starts");
    let addr = proxy.listener_addr("tcp").expect("bound");

    // With no drain time, a connection the next updates wrongly drained would close at once.
    proxy.listeners.set_drain_time(Duration::ZERO);
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    echo(&mut first, "one").await;
    // Other listeners change: `http` is updated, `other` added (once it is bound, the manager
    // has applied both updates).
    update(&proxy, "v2");
    replace_listener(&proxy, &bootstrap::http_listener("other", "[]"));
    poll_until("the other listener bound", PATIENCE, || async {
        proxy.listener_addr("other")
    })
    .await;
    echo(&mut first, "two").await;
    echo(&mut first, "three").await;

    // Its own listener changes: the connection is closed when the drain time ends.
    let drain_time = Duration::from_millis(300);
    proxy.listeners.set_drain_time(drain_time);
    let changed = Instant::now();
    replace_listener(&proxy, &tcp_listener_yaml("v2"));
    until_closed(&mut first, "the connection of the changed listener").await;
    assert!(
        changed.elapsed() >= drain_time,
        "closed before the drain time"
    );

    // A connection to the new config, then the listener is removed.
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    echo(&mut second, "four").await;
    let removed = Instant::now();
    remove_listener(&proxy, "tcp");
    until_closed(&mut second, "the connection of the removed listener").await;
    assert!(
        removed.elapsed() >= drain_time,
        "closed before the drain time"
    );
}

/// Shutting down drains `tcp_proxy` connections too: they are closed when the shutdown's drain
/// time ends (not the listeners' drain time set before), so the proxy goes idle and exits.
#[tokio::test]
async fn shutdown_closes_tcp_proxy_connections_when_its_drain_time_ends() {
    use tokio::time::{Duration, Instant};
    let echo_upstream = Upstream::tcp_echo("echo").await.expect("echo upstream");
    let yaml = bootstrap::static_resources(
        &[tcp_listener_yaml("v1")],
        &[bootstrap::static_cluster("echo", echo_upstream.addr)],
    );
    let proxy = app::start(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses"))
        .await
        .expect("proxy starts");
    proxy.listeners.set_drain_time(Duration::from_secs(3600));
    let mut stream = tokio::net::TcpStream::connect(proxy.listener_addr("tcp").expect("bound"))
        .await
        .expect("connect");
    echo(&mut stream, "one").await;
    let listeners = proxy.listeners.clone();
    let drain_time = Duration::from_millis(300);
    let started = Instant::now();
    proxy.shutdown(drain_time).await;
    until_closed(&mut stream, "the tcp_proxy connection at shutdown").await;
    assert!(
        started.elapsed() >= drain_time,
        "closed before the drain time"
    );
    tokio::time::timeout(PATIENCE, listeners.wait_idle())
        .await
        .expect("no connection left");
}
