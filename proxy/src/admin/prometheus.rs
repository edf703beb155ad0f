//! `/stats` and `/stats/prometheus`: Envoy's flat stat names, and their Prometheus form with
//! Envoy's tag extraction (`cluster.NAME.upstream_rq_2xx` becomes
//! `envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="NAME"}`), so
//! Istio's dashboards and queries work unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::Store;

/// `name: value` lines, counters and gauges, sorted by name (Envoy's `/stats`).
pub fn render_text(stats: &Store) -> String {
    let mut all: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in stats.counters() {
        all.insert(name, value.to_string());
    }
    for (name, value) in stats.gauges() {
        all.insert(name, value.to_string());
    }
    let mut out = String::new();
    for (name, value) in all {
        let _ = writeln!(out, "{name}: {value}");
    }
    out
}

/// A stat name split into Prometheus name and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// `envoy_cluster_upstream_rq_total`.
    pub name: String,
    /// Extracted tags, in extraction order.
    pub tags: Vec<(&'static str, String)>,
}

/// Whether `head` ends with a dotted IPv4 address (possibly after a `prefix_`).
fn ends_with_ipv4(head: &str) -> bool {
    let parts: Vec<&str> = head.rsplit('.').take(4).collect();
    if parts.len() < 4 {
        return false;
    }
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let first = parts[3].rsplit('_').next().unwrap_or_default();
    parts[..3].iter().all(|p| numeric(p)) && numeric(first)
}

/// The length of the tag value at the start of `rest`: an `ADDRESS_PORT` (dots allowed, as in
/// `0.0.0.0_15001` or `inbound_0.0.0.0_8080`) or else one dot-free segment.
fn address_len(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b'_' {
            continue;
        }
        let mut j = i + 1;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j > i + 1 && (j == bytes.len() || bytes[j] == b'.') {
            let head = &rest[..i];
            if ends_with_ipv4(head) || head.ends_with(']') {
                return j;
            }
        }
    }
    rest.find('.').unwrap_or(rest.len())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Splits a stat name into its Prometheus name and tags. `clusters` are the known cluster
/// names, so names with dots (`outbound|9080||reviews.default.svc.cluster.local`) are found
/// whole.
pub fn metric(stat: &str, clusters: &[String]) -> Metric {
    let mut tags = Vec::new();
    let mut base = stat.to_owned();
    if let Some(rest) = stat.strip_prefix("cluster.") {
        let known = clusters
            .iter()
            .filter(|c| {
                rest.len() > c.len()
                    && rest.starts_with(c.as_str())
                    && rest.as_bytes()[c.len()] == b'.'
            })
            .max_by_key(|c| c.len());
        let len = known.map_or_else(|| rest.find('.').unwrap_or(rest.len()), String::len);
        if len < rest.len() {
            tags.push(("envoy_cluster_name", rest[..len].to_owned()));
            base = format!("cluster.{}", &rest[len + 1..]);
        }
    } else {
        for (prefix, tag) in [
            ("listener.", "envoy_listener_address"),
            ("http.", "envoy_http_conn_manager_prefix"),
        ] {
            if let Some(rest) = stat.strip_prefix(prefix) {
                let len = address_len(rest);
                if len < rest.len() {
                    tags.push((tag, rest[..len].to_owned()));
                    base = format!("{prefix}{}", &rest[len + 1..]);
                }
            }
        }
    }
    // upstream_rq_2xx -> upstream_rq_xx{class=2}; upstream_rq_200 -> upstream_rq{code=200}.
    if let Some((head, last)) = base.rsplit_once('_') {
        let b = last.as_bytes();
        if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && &b[1..] == b"xx" {
            tags.insert(0, ("envoy_response_code_class", last[..1].to_owned()));
            base = format!("{head}_xx");
        } else if b.len() == 3 && b.iter().all(u8::is_ascii_digit) && head.ends_with("_rq") {
            tags.insert(0, ("envoy_response_code", last.to_owned()));
            base = head.to_owned();
        }
    }
    Metric {
        name: format!("envoy_{}", sanitize(&base)),
        tags,
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of every counter and gauge.
pub fn render_prometheus(stats: &Store, clusters: &[String]) -> String {
    let mut families: BTreeMap<String, (&str, Vec<String>)> = BTreeMap::new();
    let counters = stats
        .counters()
        .into_iter()
        .map(|(n, v)| (n, v.to_string(), "counter"));
    let gauges = stats
        .gauges()
        .into_iter()
        .map(|(n, v)| (n, v.to_string(), "gauge"));
    for (stat, value, kind) in counters.chain(gauges) {
        let Metric { name, tags } = metric(&stat, clusters);
        let labels = if tags.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = tags
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        families
            .entry(name.clone())
            .or_insert_with(|| (kind, Vec::new()))
            .1
            .push(format!("{name}{labels} {value}"));
    }
    let mut out = String::new();
    for (name, (kind, lines)) in families {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(m: &Metric) -> Vec<(&str, &str)> {
        m.tags.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn cluster_names_with_dots_and_response_classes() {
        let clusters = vec!["outbound|9080||reviews.default.svc.cluster.local".to_owned()];
        let m = metric(
            "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_2xx",
            &clusters,
        );
        assert_eq!(m.name, "envoy_cluster_upstream_rq_xx");
        assert_eq!(
            tags(&m),
            [
                ("envoy_response_code_class", "2"),
                (
                    "envoy_cluster_name",
                    "outbound|9080||reviews.default.svc.cluster.local"
                )
            ]
        );
        let m = metric("cluster.backend.upstream_rq_503", &[]);
        assert_eq!(m.name, "envoy_cluster_upstream_rq");
        assert_eq!(
            tags(&m),
            [
                ("envoy_response_code", "503"),
                ("envoy_cluster_name", "backend")
            ]
        );
    }

    #[test]
    fn listener_and_http_prefixes_with_addresses() {
        let m = metric("listener.0.0.0.0_15001.downstream_cx_total", &[]);
        assert_eq!(m.name, "envoy_listener_downstream_cx_total");
        assert_eq!(tags(&m), [("envoy_listener_address", "0.0.0.0_15001")]);
        let m = metric("http.inbound_0.0.0.0_8080.downstream_rq_total", &[]);
        assert_eq!(
            tags(&m),
            [("envoy_http_conn_manager_prefix", "inbound_0.0.0.0_8080")]
        );
        let m = metric("http.admin.downstream_rq_total", &[]);
        assert_eq!(tags(&m), [("envoy_http_conn_manager_prefix", "admin")]);
        let m = metric("listener_manager.lds.update_success", &[]);
        assert_eq!(m.name, "envoy_listener_manager_lds_update_success");
        assert!(m.tags.is_empty());
    }

    #[test]
    fn exposition_groups_families() {
        let stats = Store::default();
        stats.counter("cluster.a.upstream_rq_total").add(3);
        stats.counter("cluster.b.upstream_rq_total").inc();
        stats.gauge("control_plane.connected_state").set(1);
        let text = render_prometheus(&stats, &[]);
        assert_eq!(
            text,
            "# TYPE envoy_cluster_upstream_rq_total counter\n\
             envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 3\n\
             envoy_cluster_upstream_rq_total{envoy_cluster_name=\"b\"} 1\n\
             # TYPE envoy_control_plane_connected_state gauge\n\
             envoy_control_plane_connected_state 1\n"
        );
        assert!(render_text(&stats).contains("cluster.a.upstream_rq_total: 3\n"));
    }
}
