//! Listener validation and filter chain selection.

use super::*;
use crate::http_connection_manager::Codec;

fn listener(yaml: &str) -> Result<Listener, InvalidListener> {
    let pb: listener_pb::Listener = xds_proto::json::from_yaml_str(yaml).expect("valid yaml");
    Listener::try_from(&pb)
}

const HCM: &str = "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "http_filters: [{ name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]";
const TCP: &str =
    "'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

fn outbound() -> String {
    format!(
        r#"
name: virtualOutbound
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
use_original_dst: true
listener_filters:
- {{ name: envoy.filters.listener.tls_inspector, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }} }}
- {{ name: envoy.filters.listener.http_inspector, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }} }}
filter_chains:
- name: http
  filter_chain_match: {{ destination_port: 9080, application_protocols: [http/1.1, h2c] }}
  filters: [{{ name: envoy.filters.network.http_connection_manager, typed_config: {{ {HCM}, stat_prefix: out, codec_type: AUTO, rds: {{ route_config_name: "9080", config_source: {{ ads: {{}} }} }}, {ROUTER} }} }}]
- name: tcp
  filter_chain_match: {{ destination_port: 9080 }}
  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: t, cluster: "outbound|9080||reviews" }} }}]
- name: subnet
  filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 10.0.0.0, prefix_len: 8 }}, {{ address_prefix: 10.1.0.0, prefix_len: 16 }}] }}
  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: t, cluster: subnet }} }}]
default_filter_chain:
  name: PassthroughFilterChain
  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: PassthroughCluster, cluster: PassthroughCluster }} }}]
"#
    )
}

fn chain_name(l: &Listener, dest: &str, alpn: &[&str]) -> String {
    let info = ConnectionInfo {
        destination: Some(dest.parse().expect("address")),
        transport_protocol: "raw_buffer",
        application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        server_name: None,
    };
    l.select_chain(&info).map_or("-".into(), |c| c.name.clone())
}

#[test]
fn istio_style_outbound_listener() {
    let l = listener(&outbound()).expect("accepted");
    assert!(l.use_original_dst && l.bind_to_port && l.tls_inspector && l.http_inspector);
    assert_eq!(l.rds_names(), ["9080"]);
    let NetworkFilter::Http(hcm) = &l.filter_chains[0].filter else {
        panic!("hcm")
    };
    assert_eq!(hcm.codec, Codec::Auto);
    assert_eq!(chain_name(&l, "1.2.3.4:9080", &["http/1.1"]), "http");
    assert_eq!(chain_name(&l, "1.2.3.4:9080", &[]), "tcp");
    assert_eq!(chain_name(&l, "10.1.2.3:80", &[]), "subnet");
    assert_eq!(chain_name(&l, "1.2.3.4:80", &[]), "PassthroughFilterChain");
}

#[test]
fn unknown_filters_are_refused_by_name() {
    let with_filter = outbound().replace(
        "filters: [{ name: envoy.filters.network.tcp_proxy, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: subnet } }]",
        "filters: [{ name: envoy.filters.network.echo, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo } }]",
    );
    let e = listener(&with_filter).expect_err("refused");
    assert_eq!(e.field, "filter_chains[2].filters[0].typed_config");
    assert!(e.reason.contains("envoy.filters.network.echo"), "{e}");

    let fault = outbound().replace(
        "http_filters: [",
        "http_filters: [{ name: envoy.filters.http.fault, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: { http_status: 503, percentage: { numerator: 100 } } } }, ",
    );
    let e = listener(&fault).expect_err("refused");
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    );
}

#[test]
fn istio_style_hcm_with_inert_fault_and_cors_is_accepted() {
    let istio = outbound().replace(
        "http_filters: [",
        "normalize_path: true, stream_idle_timeout: 0s, use_remote_address: false, http_filters: [{ name: envoy.filters.http.fault, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault } }, { name: envoy.filters.http.cors, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors } }, ",
    );
    let l = listener(&istio).expect("accepted");
    let NetworkFilter::Http(hcm) = &l.filter_chains[0].filter else {
        panic!("hcm")
    };
    assert!(hcm.normalize_path);
}

#[test]
fn inline_route_errors_name_the_route_field() {
    let yaml = format!(
        r#"
name: l
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
filter_chains:
- filters: [{{ name: hcm, typed_config: {{ {HCM}, stat_prefix: s, route_config: {{ name: r, virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster_header: x }} }}] }}] }}, {ROUTER} }} }}]
"#
    );
    let e = listener(&yaml).expect_err("refused");
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster_header"
    );
}

#[test]
fn duplicate_chain_matches_are_refused() {
    let yaml = format!(
        r#"
name: l
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
filter_chains:
- filters: [{{ name: t, typed_config: {{ {TCP}, stat_prefix: t, cluster: a }} }}]
- filters: [{{ name: t, typed_config: {{ {TCP}, stat_prefix: t, cluster: b }} }}]
"#
    );
    let e = listener(&yaml).expect_err("refused");
    assert_eq!(e.field, "filter_chains[1].filter_chain_match");
}

fn sni_listener() -> Listener {
    let chain = |name: &str, names: &str| {
        format!(
            "- name: {name}\n  filter_chain_match: {{ server_names: {names} }}\n  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: t, cluster: {name} }} }}]\n"
        )
    };
    let yaml = format!(
        "name: sni\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 443 }} }}\nfilter_chains:\n{}{}{}{}- name: none\n  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: t, cluster: none }} }}]\n",
        chain("exact", "[api.example.com, Other.Example.com]"),
        chain("wide", "['*.example.com']"),
        chain("narrow", "['*.eu.example.com']"),
        chain("other", "[a.other.io]"),
    );
    listener(&yaml).expect("accepted")
}

fn sni_chain(l: &Listener, sni: Option<&str>) -> String {
    let info = ConnectionInfo {
        destination: Some("1.2.3.4:443".parse().expect("address")),
        transport_protocol: "tls",
        application_protocols: Vec::new(),
        server_name: sni.map(str::to_owned),
    };
    l.select_chain(&info).map_or("-".into(), |c| c.name.clone())
}

#[test]
fn server_names_follow_envoy_precedence() {
    let l = sni_listener();
    assert_eq!(sni_chain(&l, Some("api.example.com")), "exact");
    assert_eq!(sni_chain(&l, Some("other.example.com")), "exact");
    assert_eq!(sni_chain(&l, Some("www.example.com")), "wide");
    assert_eq!(sni_chain(&l, Some("a.b.example.com")), "wide");
    assert_eq!(sni_chain(&l, Some("api.eu.example.com")), "narrow");
    assert_eq!(sni_chain(&l, Some("example.com")), "none");
    assert_eq!(sni_chain(&l, Some("unknown.io")), "none");
    assert_eq!(sni_chain(&l, None), "none");
}

#[test]
fn partial_wildcards_are_refused() {
    for bad in ["'*'", "'w*.example.com'", "'*.*.example.com'"] {
        let yaml = format!(
            "name: sni\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 443 }} }}\nfilter_chains:\n- filter_chain_match: {{ server_names: [{bad}] }}\n  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ {TCP}, stat_prefix: t, cluster: c }} }}]\n"
        );
        let err = listener(&yaml).expect_err(bad);
        assert!(err.to_string().contains("server_names[0]"), "{err}");
    }
}
