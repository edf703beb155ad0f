//! Route table tests: domain precedence, every matcher, actions and refusals.

use super::*;
use http::{HeaderMap, HeaderValue, Method};
use xds_proto::envoy::config::route::v3::RouteConfiguration;

fn table(yaml: &str) -> RouteTable {
    let pb: RouteConfiguration = xds_proto::json::from_yaml_str(yaml).expect("valid yaml");
    RouteTable::try_from(&pb).expect("accepted")
}

fn refused(yaml: &str) -> InvalidRoute {
    let pb: RouteConfiguration = xds_proto::json::from_yaml_str(yaml).expect("valid yaml");
    RouteTable::try_from(&pb).expect_err("refused")
}

struct Req {
    method: Method,
    authority: String,
    path: String,
    headers: HeaderMap,
}

impl Req {
    fn new(authority: &str, path: &str) -> Self {
        Self {
            method: Method::GET,
            authority: authority.into(),
            path: path.into(),
            headers: HeaderMap::new(),
        }
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            scheme: "http",
            authority: &self.authority,
            path_and_query: &self.path,
            headers: &self.headers,
        }
    }
}

/// The name of the route chosen, or "-" for none.
fn pick(t: &RouteTable, r: &Req) -> String {
    t.route(&r.head())
        .map_or("-".into(), |s| s.route.name.clone())
}

const DOMAINS: &str = r#"
name: "80"
virtual_hosts:
- { name: exact, domains: ["www.example.com", "reviews:9080"], routes: [{ name: exact, match: { prefix: "/" }, direct_response: { status: 200 } }] }
- { name: short, domains: ["*.example.com"], routes: [{ name: short, match: { prefix: "/" }, direct_response: { status: 200 } }] }
- { name: long, domains: ["*.api.example.com"], routes: [{ name: long, match: { prefix: "/" }, direct_response: { status: 200 } }] }
- { name: prefix, domains: ["foo.*"], routes: [{ name: prefix, match: { prefix: "/" }, direct_response: { status: 200 } }] }
- { name: any, domains: ["*"], routes: [{ name: any, match: { prefix: "/" }, direct_response: { status: 200 } }] }
"#;

#[test]
fn domains_follow_envoy_precedence() {
    let t = table(DOMAINS);
    assert_eq!(pick(&t, &Req::new("www.example.com", "/")), "exact");
    assert_eq!(pick(&t, &Req::new("WWW.Example.COM", "/")), "exact");
    assert_eq!(pick(&t, &Req::new("reviews:9080", "/")), "exact");
    assert_eq!(pick(&t, &Req::new("reviews", "/")), "any");
    assert_eq!(pick(&t, &Req::new("a.example.com", "/")), "short");
    assert_eq!(pick(&t, &Req::new("v1.api.example.com", "/")), "long");
    // `*.api.example.com` needs at least one character before the suffix.
    assert_eq!(pick(&t, &Req::new(".api.example.com", "/")), "short");
    assert_eq!(pick(&t, &Req::new("example.com", "/")), "any");
    assert_eq!(pick(&t, &Req::new("foo.bar", "/")), "prefix");
    // A suffix wildcard beats a prefix wildcard.
    assert_eq!(pick(&t, &Req::new("foo.example.com", "/")), "short");
}

#[test]
fn ignore_port_in_host_matching() {
    let t = table(&format!("{DOMAINS}\nignore_port_in_host_matching: true\n"));
    assert_eq!(pick(&t, &Req::new("www.example.com:8080", "/")), "exact");
}

#[test]
fn no_virtual_host_is_no_route() {
    let t = table(
        r#"{ name: r, virtual_hosts: [{ name: a, domains: ["a"], routes: [{ name: a, match: { prefix: "/" }, direct_response: { status: 200 } }] }] }"#,
    );
    assert_eq!(pick(&t, &Req::new("b", "/")), "-");
}

#[test]
fn duplicate_and_bad_wildcards_are_refused() {
    let e = refused(
        r#"{ name: r, virtual_hosts: [{ name: a, domains: ["x"], routes: [] }, { name: b, domains: ["x"], routes: [] }] }"#,
    );
    assert_eq!(e.field, "virtual_hosts[1].domains[0]");
    let e = refused(r#"{ name: r, virtual_hosts: [{ name: a, domains: ["a.*.b"], routes: [] }] }"#);
    assert_eq!(e.field, "virtual_hosts[0].domains[0]");
}

fn routes(routes: &str) -> RouteTable {
    table(&format!(
        "{{ name: r, virtual_hosts: [{{ name: vh, domains: ['*'], routes: [{routes}] }}] }}"
    ))
}

#[test]
fn path_matchers() {
    let t = routes(
        r#"
        { name: exact, match: { path: "/exact" }, direct_response: { status: 200 } },
        { name: sep, match: { path_separated_prefix: "/api" }, direct_response: { status: 200 } },
        { name: regex, match: { safe_regex: { regex: "/r/[0-9]+" } }, direct_response: { status: 200 } },
        { name: ci, match: { prefix: "/CI", case_sensitive: false }, direct_response: { status: 200 } },
        { name: prefix, match: { prefix: "/p" }, direct_response: { status: 200 } }
        "#,
    );
    assert_eq!(pick(&t, &Req::new("h", "/exact")), "exact");
    assert_eq!(pick(&t, &Req::new("h", "/exact?x=1")), "exact");
    assert_eq!(pick(&t, &Req::new("h", "/exactly")), "-");
    assert_eq!(pick(&t, &Req::new("h", "/api")), "sep");
    assert_eq!(pick(&t, &Req::new("h", "/api/v1")), "sep");
    assert_eq!(pick(&t, &Req::new("h", "/apiv1")), "-");
    assert_eq!(pick(&t, &Req::new("h", "/r/123")), "regex");
    assert_eq!(pick(&t, &Req::new("h", "/r/123?q")), "regex");
    // Full match: a trailing character breaks it.
    assert_eq!(pick(&t, &Req::new("h", "/r/123x")), "-");
    assert_eq!(pick(&t, &Req::new("h", "/ci/x")), "ci");
    assert_eq!(pick(&t, &Req::new("h", "/pq")), "prefix");
    assert_eq!(pick(&t, &Req::new("h", "/P")), "-");
}

#[test]
fn header_matchers() {
    let t = routes(
        r#"
        { name: exact, match: { prefix: "/", headers: [{ name: x-a, string_match: { exact: "v" } }] }, direct_response: { status: 200 } },
        { name: prefix, match: { prefix: "/", headers: [{ name: x-b, string_match: { prefix: "pre" } }] }, direct_response: { status: 200 } },
        { name: suffix, match: { prefix: "/", headers: [{ name: x-c, string_match: { suffix: "fix", ignore_case: true } }] }, direct_response: { status: 200 } },
        { name: contains, match: { prefix: "/", headers: [{ name: x-d, contains_match: "mid" }] }, direct_response: { status: 200 } },
        { name: regex, match: { prefix: "/", headers: [{ name: x-e, safe_regex_match: { regex: "v[0-9]" } }] }, direct_response: { status: 200 } },
        { name: present, match: { prefix: "/", headers: [{ name: x-f, present_match: true }] }, direct_response: { status: 200 } },
        { name: method, match: { prefix: "/", headers: [{ name: ":method", exact_match: "POST" }] }, direct_response: { status: 200 } },
        { name: inverted, match: { prefix: "/", headers: [{ name: x-g, exact_match: "no", invert_match: true }] }, direct_response: { status: 200 } },
        { name: fallback, match: { prefix: "/" }, direct_response: { status: 200 } }
        "#,
    );
    let p = |r: Req| pick(&t, &r);
    assert_eq!(p(Req::new("h", "/").header("x-a", "v")), "exact");
    assert_eq!(p(Req::new("h", "/").header("x-a", "vv")), "fallback");
    assert_eq!(p(Req::new("h", "/").header("x-b", "prefix")), "prefix");
    assert_eq!(p(Req::new("h", "/").header("x-c", "SufFIX")), "suffix");
    assert_eq!(p(Req::new("h", "/").header("x-d", "amidb")), "contains");
    assert_eq!(p(Req::new("h", "/").header("x-e", "v1")), "regex");
    assert_eq!(p(Req::new("h", "/").header("x-e", "v12")), "fallback");
    assert_eq!(p(Req::new("h", "/").header("x-f", "")), "present");
    let mut post = Req::new("h", "/");
    post.method = Method::POST;
    assert_eq!(p(post), "method");
    assert_eq!(p(Req::new("h", "/").header("x-g", "yes")), "inverted");
    assert_eq!(p(Req::new("h", "/").header("x-g", "no")), "fallback");
    // An absent header never matches a value matcher, even inverted.
    assert_eq!(p(Req::new("h", "/")), "fallback");
    // Several values are joined with ','.
    assert_eq!(
        p(Req::new("h", "/").header("x-b", "pre").header("x-b", "two")),
        "prefix"
    );
}

#[test]
fn present_match_false_means_absent() {
    let t = routes(
        r#"{ name: absent, match: { prefix: "/", headers: [{ name: x-f, present_match: false }] }, direct_response: { status: 200 } }"#,
    );
    assert_eq!(pick(&t, &Req::new("h", "/")), "absent");
    assert_eq!(pick(&t, &Req::new("h", "/").header("x-f", "1")), "-");
}

#[test]
fn query_parameter_matchers() {
    let t = routes(
        r#"
        { name: exact, match: { prefix: "/", query_parameters: [{ name: v, string_match: { exact: "a b" } }] }, direct_response: { status: 200 } },
        { name: present, match: { prefix: "/", query_parameters: [{ name: debug, present_match: true }] }, direct_response: { status: 200 } }
        "#,
    );
    assert_eq!(pick(&t, &Req::new("h", "/x?v=a%20b")), "exact");
    assert_eq!(pick(&t, &Req::new("h", "/x?v=a+b&z=1")), "exact");
    assert_eq!(pick(&t, &Req::new("h", "/x?v=c")), "-");
    assert_eq!(pick(&t, &Req::new("h", "/x?debug")), "present");
    assert_eq!(pick(&t, &Req::new("h", "/x")), "-");
}

#[test]
fn forward_actions() {
    let t = routes(
        r#"
        { name: w, match: { prefix: "/w" }, route: { weighted_clusters: { clusters: [{ name: a, weight: 80 }, { name: b, weight: 20 }, { name: z, weight: 0 }] }, timeout: 0s } },
        { name: c, match: { prefix: "/c" }, route: { cluster: c, prefix_rewrite: "/new", host_rewrite_literal: "h.example", timeout: 3s,
          hash_policy: [{ header: { header_name: X-User } }, { connection_properties: { source_ip: true } }] } }
        "#,
    );
    let vh = &t.virtual_hosts[0];
    let Action::Forward(w) = &vh.routes[0].action else {
        panic!("forward")
    };
    let ClusterSpecifier::Weighted { clusters, total } = &w.cluster else {
        panic!("weighted")
    };
    assert_eq!(*total, 100);
    assert_eq!(
        clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(w.timeout, None);
    let Action::Forward(c) = &vh.routes[1].action else {
        panic!("forward")
    };
    assert_eq!(c.timeout, Some(Duration::from_secs(3)));
    assert_eq!(c.prefix_rewrite.as_deref(), Some("/new"));
    assert_eq!(c.host_rewrite.as_deref(), Some("h.example"));
    let a = Req::new("h", "/c").header("x-user", "alice");
    let b = Req::new("h", "/c").header("x-user", "bob");
    assert_eq!(
        c.request_hash(&a.head(), None),
        c.request_hash(&a.head(), None)
    );
    assert_ne!(
        c.request_hash(&a.head(), None),
        c.request_hash(&b.head(), None)
    );
    assert!(c.request_hash(&Req::new("h", "/c").head(), None).is_none());
}

#[test]
fn default_timeout_is_fifteen_seconds() {
    let t = routes(r#"{ name: c, match: { prefix: "/" }, route: { cluster: c } }"#);
    let Action::Forward(c) = &t.virtual_hosts[0].routes[0].action else {
        panic!("forward")
    };
    assert_eq!(c.timeout, Some(Duration::from_secs(15)));
}

#[test]
fn istio_max_stream_duration_bounds_the_response_timeout() {
    // What ferry-control and Istio emit for a VirtualService `timeout: 2s`.
    let t = routes(
        r#"{ name: c, match: { prefix: "/" }, route: { cluster: c, timeout: 2s,
            max_stream_duration: { max_stream_duration: 2s, grpc_timeout_header_max: 2s } } }"#,
    );
    let Action::Forward(c) = &t.virtual_hosts[0].routes[0].action else {
        panic!("forward")
    };
    let mut headers = HeaderMap::new();
    assert_eq!(c.response_timeout(&headers), Some(Duration::from_secs(2)));
    headers.insert("grpc-timeout", HeaderValue::from_static("500m"));
    assert_eq!(
        c.response_timeout(&headers),
        Some(Duration::from_millis(500))
    );
    headers.insert("grpc-timeout", HeaderValue::from_static("10S"));
    assert_eq!(c.response_timeout(&headers), Some(Duration::from_secs(2)));
    // A longer stream limit leaves the shorter route timeout in charge, and vice versa.
    let t = routes(
        r#"{ name: c, match: { prefix: "/" }, route: { cluster: c, timeout: 0s,
            max_stream_duration: { max_stream_duration: 3s, grpc_timeout_header_offset: 1s } } }"#,
    );
    let Action::Forward(c) = &t.virtual_hosts[0].routes[0].action else {
        panic!("forward")
    };
    assert_eq!(
        c.response_timeout(&HeaderMap::new()),
        Some(Duration::from_secs(3))
    );
    // Istio's "no timeout": everything zero.
    let t = routes(
        r#"{ name: c, match: { prefix: "/" }, route: { cluster: c, timeout: 0s,
            max_stream_duration: { max_stream_duration: 0s, grpc_timeout_header_max: 0s } } }"#,
    );
    let Action::Forward(c) = &t.virtual_hosts[0].routes[0].action else {
        panic!("forward")
    };
    assert_eq!(c.response_timeout(&HeaderMap::new()), None);
}

#[test]
fn total_weight_must_match() {
    let e = refused(
        r#"{ name: r, virtual_hosts: [{ name: vh, domains: ['*'], routes: [{ match: { prefix: "/" }, route: { weighted_clusters: { total_weight: 50, clusters: [{ name: a, weight: 80 }] } } }] }] }"#,
    );
    assert_eq!(
        e.field,
        "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight"
    );
}

#[test]
fn redirects_build_location() {
    let t = routes(
        r#"
        { name: https, match: { prefix: "/s" }, redirect: { https_redirect: true } },
        { name: host, match: { prefix: "/h" }, redirect: { host_redirect: "new.example", port_redirect: 8443, response_code: FOUND } },
        { name: path, match: { prefix: "/p" }, redirect: { path_redirect: "/other", strip_query: true } },
        { name: prefix, match: { prefix: "/old/" }, redirect: { prefix_rewrite: "/new/" } },
        { name: regex, match: { prefix: "/re" }, redirect: { regex_rewrite: { pattern: { regex: "^/re/(.*)$" }, substitution: "/x/\\1" } } }
        "#,
    );
    let loc = |path: &str| {
        let r = Req::new("example.com:80", path);
        let s = t.route(&r.head()).expect("route");
        let Action::Redirect(rd) = &s.route.action else {
            panic!("redirect")
        };
        (
            rd.location(&r.head(), s.route.matcher.path.matched_prefix()),
            rd.status.as_u16(),
        )
    };
    assert_eq!(loc("/s?a=1"), ("https://example.com/s?a=1".into(), 301));
    assert_eq!(loc("/h"), ("http://new.example:8443/h".into(), 302));
    assert_eq!(loc("/p?a=1"), ("http://example.com/other".into(), 301));
    assert_eq!(loc("/old/x"), ("http://example.com/new/x".into(), 301));
    assert_eq!(loc("/re/abc"), ("http://example.com/x/abc".into(), 301));
}

#[test]
fn direct_response_body() {
    let t = routes(
        r#"{ match: { prefix: "/" }, direct_response: { status: 418, body: { inline_string: "teapot" } } }"#,
    );
    let Action::DirectResponse(d) = &t.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(d.status.as_u16(), 418);
    assert_eq!(&d.body[..], b"teapot");
}

#[test]
fn header_mutation_levels_apply_route_then_vhost_then_config() {
    let t = table(
        r#"
        name: r
        request_headers_to_add: [{ header: { key: x-level, value: config }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }]
        virtual_hosts:
        - name: vh
          domains: ['*']
          request_headers_to_add: [{ header: { key: x-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }, { header: { key: x-vh, value: "1" } }]
          routes:
          - match: { prefix: "/" }
            request_headers_to_add: [{ header: { key: x-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }]
            request_headers_to_remove: [x-secret]
            direct_response: { status: 200 }
        "#,
    );
    let r = Req::new("h", "/").header("x-secret", "s");
    let s = t.route(&r.head()).expect("route");
    let mut headers = r.headers.clone();
    t.mutate_request(&s, None, &mut headers);
    assert_eq!(headers["x-level"], "config");
    assert_eq!(headers["x-vh"], "1");
    assert!(headers.get("x-secret").is_none());
}

#[test]
fn unimplemented_fields_are_refused_by_name() {
    let base = |route: &str| {
        format!("{{ name: r, virtual_hosts: [{{ name: vh, domains: ['*'], routes: [{route}] }}] }}")
    };
    let cases = [
        (
            r#"{ match: { prefix: "/" }, route: { cluster_header: x-cluster } }"#,
            "route.cluster_header",
        ),
        (
            r#"{ match: { prefix: "/" }, route: { cluster: c, retry_policy: { retry_on: "when-the-moon-is-full" } } }"#,
            "route.retry_policy.retry_on",
        ),
        (
            r#"{ match: { prefix: "/", runtime_fraction: { default_value: { numerator: 1 } } }, route: { cluster: c } }"#,
            "match.runtime_fraction",
        ),
        (
            r#"{ match: { safe_regex: { regex: "/x" } }, route: { cluster: c, prefix_rewrite: "/y" } }"#,
            "route.prefix_rewrite",
        ),
        (
            r#"{ match: { safe_regex: { regex: "(" } }, route: { cluster: c } }"#,
            "match.safe_regex.regex",
        ),
    ];
    for (route, field) in cases {
        let e = refused(&base(route));
        assert_eq!(
            e.field,
            format!("virtual_hosts[0].routes[0].{field}"),
            "{e}"
        );
        assert_eq!(e.name, "r");
    }
}
