//! Istio's DestinationRule rules beyond the schema: host, subset names (unique DNS-1123 labels),
//! load balancer exclusivity (simple vs consistentHash, one hash key, ring hash vs maglev),
//! locality settings, connection pool and outlier detection ranges, TLS mode requirements,
//! port-level settings and tunnels.

use std::collections::BTreeSet;

use crate::api::DestinationRule;
use crate::api::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};

use super::rules::{Report, is_dns1123_label};

/// Checks a DestinationRule spec.
pub(crate) fn check(r: &mut Report, dr: &DestinationRule) {
    r.host("spec.host", &dr.host);
    r.workload_selector("spec.workloadSelector", &dr.workload_selector);
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(r, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            r.push(format!("{f}.name"), "subset name is required");
        } else if !is_dns1123_label(&s.name) {
            r.push(
                format!("{f}.name"),
                format!("subset name {:?} must be a DNS-1123 label", s.name),
            );
        } else if !names.insert(s.name.as_str()) {
            r.push(
                format!("{f}.name"),
                format!("duplicate subset name {:?}", s.name),
            );
        }
        for k in s.labels.keys() {
            r.check(
                k.is_empty(),
                format!("{f}.labels"),
                "label key must not be empty",
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(r, &format!("{f}.trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(r: &mut Report, f: &str, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        load_balancer(r, &format!("{f}.loadBalancer"), lb);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(r, &format!("{f}.connectionPool"), cp);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(r, &format!("{f}.outlierDetection"), od);
    }
    if let Some(tls) = &tp.tls {
        client_tls(r, &format!("{f}.tls"), tls);
    }
    let mut ports = BTreeSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        match p.port {
            None => r.push(format!("{pf}.port"), "port is required"),
            Some(port) => {
                r.port(format!("{pf}.port.number"), port.number);
                r.check(
                    !ports.insert(port.number),
                    format!("{pf}.port.number"),
                    format!("duplicate port-level settings for port {}", port.number),
                );
            }
        }
        if let Some(lb) = &p.load_balancer {
            load_balancer(r, &format!("{pf}.loadBalancer"), lb);
        }
        if let Some(cp) = &p.connection_pool {
            connection_pool(r, &format!("{pf}.connectionPool"), cp);
        }
        if let Some(od) = &p.outlier_detection {
            outlier_detection(r, &format!("{pf}.outlierDetection"), od);
        }
        if let Some(tls) = &p.tls {
            client_tls(r, &format!("{pf}.tls"), tls);
        }
    }
    if let Some(t) = &tp.tunnel {
        let tf = format!("{f}.tunnel");
        r.host(format!("{tf}.targetHost"), &t.target_host);
        r.port(format!("{tf}.targetPort"), t.target_port);
        if let Some(p) = &t.protocol {
            r.check(
                !matches!(p.as_str(), "CONNECT" | "POST"),
                format!("{tf}.protocol"),
                format!("tunnel protocol {p:?} must be CONNECT or POST"),
            );
        }
    }
    if let Some(b) = &tp.retry_budget
        && let Some(p) = b.percent
    {
        r.percent(format!("{f}.retryBudget.percent"), p);
    }
}

fn load_balancer(r: &mut Report, f: &str, lb: &LoadBalancerSettings) {
    r.check(
        lb.simple.is_some() && lb.consistent_hash.is_some(),
        f,
        "only one of simple or consistentHash may be set",
    );
    if let Some(ch) = &lb.consistent_hash {
        let cf = format!("{f}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ];
        r.check(
            keys.iter().filter(|k| **k).count() != 1,
            &cf,
            "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
        );
        r.check(
            ch.ring_hash.is_some() && ch.maglev.is_some(),
            &cf,
            "only one of ringHash or maglev may be set",
        );
        r.check(
            ch.maglev.is_some() && ch.minimum_ring_size.is_some(),
            format!("{cf}.minimumRingSize"),
            "minimumRingSize cannot be used with maglev",
        );
        if let Some(c) = &ch.http_cookie {
            r.check(
                c.name.is_empty(),
                format!("{cf}.httpCookie.name"),
                "cookie name is required",
            );
            for (i, a) in c.attributes.iter().enumerate() {
                r.check(
                    a.name.is_empty(),
                    format!("{cf}.httpCookie.attributes[{i}].name"),
                    "attribute name is required",
                );
            }
        }
        if let Some(name) = &ch.http_header_name {
            r.header_name(format!("{cf}.httpHeaderName"), name);
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        let lf = format!("{f}.localityLbSetting");
        r.check(
            !l.distribute.is_empty() && !l.failover.is_empty(),
            &lf,
            "only one of distribute or failover may be set",
        );
        for (i, d) in l.distribute.iter().enumerate() {
            let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            r.check(
                total != 100,
                format!("{lf}.distribute[{i}].to"),
                format!("weights add up to {total}, must be 100"),
            );
        }
        for (i, fo) in l.failover.iter().enumerate() {
            r.check(
                fo.from.is_some() && fo.from == fo.to,
                format!("{lf}.failover[{i}]"),
                "failover from and to must be different regions",
            );
        }
    }
    r.duration(format!("{f}.warmupDurationSecs"), &lb.warmup_duration_secs);
    if let Some(w) = &lb.warmup {
        let wf = format!("{f}.warmup");
        match &w.duration {
            None => r.push(format!("{wf}.duration"), "duration is required"),
            Some(_) => r.duration(format!("{wf}.duration"), &w.duration),
        }
        if let Some(p) = w.minimum_percent {
            r.percent(format!("{wf}.minimumPercent"), p);
        }
        if let Some(a) = w.aggression {
            r.check(
                a < 1.0,
                format!("{wf}.aggression"),
                "aggression must be at least 1",
            );
        }
    }
}

/// Checks connection pool settings (also Sidecar's inbound connection pools).
pub(crate) fn connection_pool(r: &mut Report, f: &str, cp: &ConnectionPoolSettings) {
    if let Some(t) = &cp.tcp {
        let tf = format!("{f}.tcp");
        non_negative(r, &format!("{tf}.maxConnections"), t.max_connections);
        r.duration(format!("{tf}.connectTimeout"), &t.connect_timeout);
        r.duration(
            format!("{tf}.maxConnectionDuration"),
            &t.max_connection_duration,
        );
        if let Some(k) = &t.tcp_keepalive {
            r.duration(format!("{tf}.tcpKeepalive.time"), &k.time);
            r.duration(format!("{tf}.tcpKeepalive.interval"), &k.interval);
        }
    }
    if let Some(h) = &cp.http {
        let hf = format!("{f}.http");
        non_negative(
            r,
            &format!("{hf}.http1MaxPendingRequests"),
            h.http1_max_pending_requests,
        );
        non_negative(r, &format!("{hf}.http2MaxRequests"), h.http2_max_requests);
        non_negative(
            r,
            &format!("{hf}.maxRequestsPerConnection"),
            h.max_requests_per_connection,
        );
        non_negative(r, &format!("{hf}.maxRetries"), h.max_retries);
        non_negative(
            r,
            &format!("{hf}.maxConcurrentStreams"),
            h.max_concurrent_streams,
        );
        r.duration(format!("{hf}.idleTimeout"), &h.idle_timeout);
        if let Some(k) = &h.http2_keep_alive {
            r.duration(format!("{hf}.http2KeepAlive.interval"), &k.interval);
            r.duration(format!("{hf}.http2KeepAlive.timeout"), &k.timeout);
        }
    }
}

fn outlier_detection(r: &mut Report, f: &str, od: &OutlierDetection) {
    non_negative(r, &format!("{f}.consecutiveErrors"), od.consecutive_errors);
    r.duration(format!("{f}.interval"), &od.interval);
    r.duration(format!("{f}.baseEjectionTime"), &od.base_ejection_time);
    for (name, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(p) = v {
            r.check(
                !(0..=100).contains(&p),
                format!("{f}.{name}"),
                format!("percentage {p} is out of range 0-100"),
            );
        }
    }
    for (i, c) in od.outlier_detection_http_error_codes.iter().enumerate() {
        r.check(
            !(100..=599).contains(c),
            format!("{f}.outlierDetectionHttpErrorCodes[{i}]"),
            format!("{c} is not an HTTP status code"),
        );
    }
}

fn client_tls(r: &mut Report, f: &str, tls: &ClientTlsSettings) {
    match tls.mode {
        Some(ClientTlsMode::Mutual) if tls.credential_name.is_none() => {
            r.check(
                tls.client_certificate.is_none(),
                format!("{f}.clientCertificate"),
                "clientCertificate is required for MUTUAL (or set credentialName)",
            );
            r.check(
                tls.private_key.is_none(),
                format!("{f}.privateKey"),
                "privateKey is required for MUTUAL (or set credentialName)",
            );
        }
        Some(ClientTlsMode::IstioMutual) => {
            let files = tls.client_certificate.is_some()
                || tls.private_key.is_some()
                || tls.ca_certificates.is_some()
                || tls.credential_name.is_some();
            r.check(
                files,
                f,
                "ISTIO_MUTUAL uses Istio's certificates: clientCertificate, privateKey, caCertificates and credentialName must not be set",
            );
        }
        _ => {}
    }
}

fn non_negative(r: &mut Report, f: &str, v: Option<i32>) {
    if let Some(v) = v {
        r.check(v < 0, f, format!("{v} must not be negative"));
    }
}
