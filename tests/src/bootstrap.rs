//! Bootstrap YAML fragments for proxy tests, so a test states only what it is about (its routes
//! and upstreams) instead of repeating the listener and cluster boilerplate.
//!
//! Fragments are YAML list items meant to follow `listeners:` or `clusters:` in a
//! `static_resources` block; [`static_resources`] puts them together.

use std::net::SocketAddr;

/// A listener `name` on 127.0.0.1:0 whose HTTP connection manager (router filter, stat prefix
/// `name`) has an inline route_config with one virtual host for every domain; `routes` is the
/// virtual host's `routes` as a YAML flow sequence (`[{ match: ..., route: ... }]`).
pub fn http_listener(name: &str, routes: &str) -> String {
    http_listener_with(name, "", routes)
}

/// [`http_listener`] with more virtual host fields: `vhost_fields` are YAML flow-mapping
/// entries, each followed by a comma (`"include_request_attempt_count: true, "`).
pub fn http_listener_with(name: &str, vhost_fields: &str, routes: &str) -> String {
    listener(name, &[], vhost_fields, routes)
}

/// [`http_listener`] whose HTTP connection manager has more fields: each of `hcm_fields` is one
/// YAML `key: value` line (flow style), e.g.
/// `"common_http_protocol_options: { idle_timeout: 1s }"`.
pub fn http_listener_hcm(name: &str, hcm_fields: &[&str], routes: &str) -> String {
    listener(name, hcm_fields, "", routes)
}

fn listener(name: &str, hcm_fields: &[&str], vhost_fields: &str, routes: &str) -> String {
    let hcm_fields: String = hcm_fields
        .iter()
        .map(|f| format!("\n          {f}"))
        .collect();
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{hcm_fields}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
          route_config:
            name: {name}
            virtual_hosts: [{{ name: all, domains: ["*"], {vhost_fields}routes: {routes} }}]"#
    )
}

/// A STATIC cluster `name` with the one endpoint `addr` (HTTP/1.1 upstream).
pub fn static_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: "{}", port_value: {} }} }} }} }}] }}]"#,
        addr.ip(),
        addr.port()
    )
}

/// A STATIC cluster `name` over `endpoints` on `127.0.0.1` (HTTP/1.1 upstreams), connect
/// timeout 1 s, with more cluster `fields` (each a YAML `key: value` line, flow style:
/// `lb_policy: ROUND_ROBIN`, `circuit_breakers: { ... }`).
pub fn static_cluster_over(name: &str, endpoints: &[SocketAddr], fields: &[&str]) -> String {
    let fields: String = fields.iter().map(|f| format!("\n    {f}")).collect();
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{fields}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{lb_endpoints}] }}]"#,
        lb_endpoints = lb_endpoints(endpoints)
    )
}

/// The `lb_endpoints` items (YAML flow, comma-separated) for `endpoints` on `127.0.0.1`.
pub fn lb_endpoints(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(|a| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}",
                a.port()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts ferry-proxy in-process on the bootstrap `yaml`; returns it and the address of its
/// listener `http` (the listener the fragments' tests route through).
pub async fn start_proxy(yaml: &str) -> (ferry_proxy::app::Running, SocketAddr) {
    let bootstrap = xds_proto::json::from_yaml_str(yaml).expect("bootstrap parses");
    let running = ferry_proxy::app::start(bootstrap)
        .await
        .expect("proxy starts");
    let addr = running.listener_addr("http").expect("listener bound");
    (running, addr)
}

/// A `static_resources` bootstrap YAML from listener and cluster fragments.
pub fn static_resources(listeners: &[String], clusters: &[String]) -> String {
    format!(
        "static_resources:\n  listeners:{}\n  clusters:{}\n",
        listeners.concat(),
        if clusters.is_empty() {
            " []".to_owned()
        } else {
            clusters.concat()
        }
    )
}

/// The bootstrap of a sidecar (`app.default`) with no static resources that gets listeners and
/// clusters over ADS from the gRPC server at `uri`, as a test's in-process xDS client uses it.
pub fn ads_sidecar(
    uri: &str,
) -> std::sync::Arc<xds_proto::envoy::config::bootstrap::v3::Bootstrap> {
    let yaml = format!(
        r#"
node: {{ id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app.default }}
dynamic_resources:
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [ {{ google_grpc: {{ target_uri: "{uri}", stat_prefix: ads }} }} ]
"#
    );
    std::sync::Arc::new(xds_proto::json::from_yaml_str(&yaml).expect("ADS bootstrap parses"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

    #[test]
    fn fragments_make_a_bootstrap() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let yaml = static_resources(
            &[http_listener(
                "http",
                "[{ match: { prefix: / }, route: { cluster: c } }]",
            )],
            &[static_cluster("c", addr)],
        );
        let bootstrap: Bootstrap = xds_proto::json::from_yaml_str(&yaml).unwrap();
        let statics = bootstrap.static_resources.unwrap();
        assert_eq!(statics.listeners[0].name, "http");
        assert_eq!(statics.clusters[0].name, "c");
    }
}
