//! Istio's ServiceEntry and WorkloadEntry rules beyond the schema: hosts (no bare `*`, no
//! wildcards with DNS resolution), addresses, unique port names and numbers, protocols,
//! resolution vs endpoints, endpoint addresses and port names.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::api::service_entry::{Location, Resolution};
use crate::api::{ServiceEntry, WorkloadEntry};

use super::rules::{Report, check_host, is_ip_or_cidr};

/// Protocols Istio accepts on a port (case-insensitive).
const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "HTTP2",
    "HTTP_PROXY",
    "GRPC",
    "GRPC-WEB",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
    "UNSUPPORTED",
];

/// Checks a ServiceEntry spec.
pub(crate) fn check_service_entry(r: &mut Report, se: &ServiceEntry) {
    let resolution = se.resolution.unwrap_or(Resolution::None);
    r.check(
        se.hosts.is_empty(),
        "spec.hosts",
        "at least one host is required",
    );
    for (i, h) in se.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        r.check(h == "*", &f, "hostname cannot be wildcard '*'");
        r.host(&f, h);
        r.check(
            h.starts_with("*.")
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && se.endpoints.is_empty(),
            &f,
            "wildcard hosts cannot be resolved with DNS unless endpoints are given",
        );
    }
    for (i, a) in se.addresses.iter().enumerate() {
        let f = format!("spec.addresses[{i}]");
        r.ip_or_cidr(&f, a);
        r.check(
            a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static),
            &f,
            "CIDR addresses are allowed only with NONE or STATIC resolution",
        );
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        r.port(format!("{f}.number"), p.number);
        r.check(
            !numbers.insert(p.number),
            format!("{f}.number"),
            format!("port number {} cannot be duplicated", p.number),
        );
        if p.name.is_empty() {
            r.push(format!("{f}.name"), "port name is required");
        } else {
            r.check(
                !names.insert(p.name.as_str()),
                format!("{f}.name"),
                format!("port name {:?} cannot be duplicated", p.name),
            );
        }
        if let Some(proto) = &p.protocol {
            r.check(
                !PROTOCOLS.iter().any(|k| k.eq_ignore_ascii_case(proto)),
                format!("{f}.protocol"),
                format!(
                    "unknown protocol {proto:?} (expected one of {})",
                    PROTOCOLS.join(", ")
                ),
            );
        }
        if let Some(t) = p.target_port {
            r.port(format!("{f}.targetPort"), t);
        }
    }
    r.check(
        se.workload_selector.is_some() && !se.endpoints.is_empty(),
        "spec",
        "only one of workloadSelector or endpoints may be set",
    );
    r.check(
        se.workload_selector.is_some() && se.location != Some(Location::MeshInternal),
        "spec.workloadSelector",
        "workloadSelector requires location MESH_INTERNAL",
    );
    r.label_selector("spec.workloadSelector", &se.workload_selector);
    match resolution {
        Resolution::None => r.check(
            !se.endpoints.is_empty(),
            "spec.endpoints",
            "NONE resolution cannot have endpoints",
        ),
        Resolution::DnsRoundRobin => r.check(
            se.endpoints.len() > 1,
            "spec.endpoints",
            "DNS_ROUND_ROBIN resolution cannot have more than one endpoint",
        ),
        Resolution::Static => r.check(
            se.endpoints.is_empty() && se.workload_selector.is_none(),
            "spec.endpoints",
            "STATIC resolution needs endpoints or a workloadSelector",
        ),
        Resolution::Dns | Resolution::DynamicDns => {}
    }
    for (i, ep) in se.endpoints.iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        workload(r, &f, ep);
        if let Some(addr) = &ep.address {
            r.check(
                resolution == Resolution::Static
                    && !addr.starts_with("unix://")
                    && addr.parse::<IpAddr>().is_err(),
                format!("{f}.address"),
                format!("STATIC resolution needs IP endpoints, {addr:?} is not an IP address"),
            );
        }
        for name in ep.ports.keys() {
            r.check(
                !names.contains(name.as_str()),
                format!("{f}.ports[{name}]"),
                format!("endpoint port {name:?} is not a port name of the ServiceEntry"),
            );
        }
    }
}

/// Checks a WorkloadEntry spec.
pub(crate) fn check_workload_entry(r: &mut Report, we: &WorkloadEntry) {
    workload(r, "spec", we);
}

fn workload(r: &mut Report, f: &str, we: &WorkloadEntry) {
    match &we.address {
        None if we.network.is_none() => r.push(format!("{f}.address"), "address is required"),
        None => {}
        Some(addr) if addr.starts_with("unix://") => {
            let path = &addr["unix://".len()..];
            r.check(
                !(path.starts_with('/') || path.starts_with('@')) || path.ends_with('/'),
                format!("{f}.address"),
                "unix socket must be an absolute path or abstract socket, not a directory",
            );
            r.check(
                !we.ports.is_empty(),
                format!("{f}.ports"),
                "unix socket endpoints cannot have ports",
            );
        }
        Some(addr) => {
            if !is_ip_or_cidr(addr)
                && let Err(reason) = check_host(addr)
            {
                r.push(format!("{f}.address"), reason);
            }
            r.check(
                addr.contains('/'),
                format!("{f}.address"),
                "address must not be a CIDR block",
            );
        }
    }
    for (name, port) in &we.ports {
        r.port(format!("{f}.ports[{name}]"), *port);
    }
    for k in we.labels.keys() {
        r.check(
            k.is_empty(),
            format!("{f}.labels"),
            "label key must not be empty",
        );
    }
}
