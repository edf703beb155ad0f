//! Istio's Sidecar rules beyond the schema: a non-empty configuration, `namespace/host` egress
//! hosts, unique ports, a catch-all egress listener only last, default endpoints, and the egress
//! proxy only with ALLOW_ANY.

use std::collections::BTreeSet;

use crate::api::Sidecar;
use crate::api::sidecar::OutboundTrafficMode;

use super::destination_rule::connection_pool;
use super::rules::{Report, check_host};
use super::virtual_service::destination;

/// Checks a Sidecar spec.
pub(crate) fn check(r: &mut Report, sc: &Sidecar) {
    r.check(
        sc.egress.is_empty()
            && sc.ingress.is_empty()
            && sc.outbound_traffic_policy.is_none()
            && sc.inbound_connection_pool.is_none(),
        "spec",
        "empty Sidecar: set at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
    );
    r.label_selector("spec.workloadSelector", &sc.workload_selector);
    let mut ports = BTreeSet::new();
    for (i, e) in sc.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        match &e.port {
            Some(p) => {
                r.port(format!("{f}.port.number"), p.number);
                r.check(
                    !ports.insert(p.number),
                    format!("{f}.port.number"),
                    format!("duplicate egress listener for port {}", p.number),
                );
            }
            None => r.check(
                i + 1 != sc.egress.len(),
                format!("{f}.port"),
                "the egress listener without a port must be the last one",
            ),
        }
        r.check(
            e.hosts.is_empty(),
            format!("{f}.hosts"),
            "at least one host is required",
        );
        for (j, h) in e.hosts.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            match h.split_once('/') {
                None => r.push(&hf, format!("{h:?} must be of the form namespace/dnsName")),
                Some((ns, name)) => {
                    r.check(
                        ns.is_empty(),
                        &hf,
                        "namespace must not be empty (use '*', '.' or '~')",
                    );
                    if let Err(reason) = check_host(name) {
                        r.push(&hf, reason);
                    }
                }
            }
        }
    }
    let mut ports = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        match &ing.port {
            None => r.push(format!("{f}.port"), "port is required"),
            Some(p) => {
                r.port(format!("{f}.port.number"), p.number);
                r.check(
                    !ports.insert(p.number),
                    format!("{f}.port.number"),
                    format!("duplicate ingress listener for port {}", p.number),
                );
            }
        }
        if let Some(ep) = &ing.default_endpoint {
            r.check(
                !default_endpoint_ok(ep),
                format!("{f}.defaultEndpoint"),
                format!("{ep:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path"),
            );
        }
        if let Some(cp) = &ing.connection_pool {
            connection_pool(r, &format!("{f}.connectionPool"), cp);
        }
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        connection_pool(r, "spec.inboundConnectionPool", cp);
    }
    if let Some(otp) = &sc.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        r.check(
            otp.mode != Some(OutboundTrafficMode::AllowAny),
            "spec.outboundTrafficPolicy.egressProxy",
            "egressProxy can only be set with mode ALLOW_ANY",
        );
        destination(r, "spec.outboundTrafficPolicy.egressProxy", proxy);
    }
}

fn default_endpoint_ok(ep: &str) -> bool {
    if let Some(path) = ep.strip_prefix("unix://") {
        return path.starts_with('/') || path.starts_with('@');
    }
    let Some((host, port)) = ep.rsplit_once(':') else {
        return false;
    };
    matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]")
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}
