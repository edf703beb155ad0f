//! ServiceEntries into model services: one service per host, with the entry's ports, addresses,
//! resolution and location, and endpoints from its inline `endpoints`, from the WorkloadEntries
//! and Pods its `workloadSelector` selects, or (DNS resolution without endpoints) the host itself
//! as Istio does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::kubernetes::{endpoint_defaults, pod_ip, pods_selected, workload_of_pod};
use super::{Config, Endpoint, ModelError, Protocol, Resolution, Service, ServicePort};
use crate::api::service_entry::{Location, Resolution as ApiResolution};
use crate::api::{ServiceEntry, WorkloadEntry};
use crate::source::store::Store;

/// The services of one ServiceEntry.
pub(super) fn services(
    store: &Store,
    entry: &Config<ServiceEntry>,
    workload_entries: &[Config<WorkloadEntry>],
) -> Result<Vec<Service>, ModelError> {
    let spec = &entry.spec;
    let error = |field: &str, reason: String| {
        ModelError::document(&entry.origin, reason)
            .object(
                "ServiceEntry",
                format!("{}/{}", entry.namespace, entry.name),
            )
            .field(field)
    };
    let resolution = match spec.resolution.unwrap_or(ApiResolution::None) {
        ApiResolution::None => Resolution::Passthrough,
        ApiResolution::Static => Resolution::Static,
        ApiResolution::Dns => Resolution::Dns,
        ApiResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        ApiResolution::DynamicDns => {
            return Err(error(
                "spec.resolution",
                "DYNAMIC_DNS is not supported by ferry-control".into(),
            ));
        }
    };
    let mut addresses = Vec::new();
    for (i, address) in spec.addresses.iter().enumerate() {
        let parsed = address.parse::<IpAddr>().map_err(|_| {
            error(
                &format!("spec.addresses[{i}]"),
                format!("{address:?}: only IP addresses are supported (CIDR ranges are not yet)"),
            )
        })?;
        addresses.push(parsed);
    }
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let number = |n: u32, field: &str| {
            u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                error(
                    &format!("spec.ports[{i}].{field}"),
                    format!("port {n} is out of range 1-65535"),
                )
            })
        };
        let Some(protocol) =
            Protocol::from_istio_name(port.protocol.as_deref().unwrap_or_default())
        else {
            // UDP: sidecars do not proxy it.
            continue;
        };
        ports.push(ServicePort {
            name: port.name.clone(),
            port: number(port.number, "number")?,
            target_port: port
                .target_port
                .map(|t| number(t, "targetPort"))
                .transpose()?,
            protocol,
        });
    }

    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, workload) in spec.endpoints.iter().enumerate() {
        let Some(address) = workload.address.clone().filter(|a| !a.is_empty()) else {
            return Err(error(
                &format!("spec.endpoints[{i}].address"),
                "address is required".into(),
            ));
        };
        endpoints.push(workload_endpoint(address, workload, &ports));
    }
    if let Some(selector) = spec.workload_selector.as_ref() {
        let selects = |labels: &BTreeMap<String, String>| {
            selector
                .labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        for we in workload_entries
            .iter()
            .filter(|we| we.namespace == entry.namespace)
        {
            if let (true, Some(address)) = (selects(&we.spec.labels), we.spec.address.clone()) {
                endpoints.push(workload_endpoint(address, &we.spec, &ports));
            }
        }
        for pod in pods_selected(store, &entry.namespace, &selector.labels) {
            let Some(address) = pod_ip(pod) else { continue };
            let mut endpoint = workload_of_pod(pod);
            endpoint.address = address;
            endpoint.ports = ports
                .iter()
                .map(|p| (p.name.clone(), p.target_port.unwrap_or(p.port)))
                .collect();
            endpoints.push(endpoint);
        }
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));

    let dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    let services = spec
        .hosts
        .iter()
        .map(|host| {
            let endpoints = if dns && endpoints.is_empty() && !host.starts_with('*') {
                // Istio resolves the host itself when a DNS entry lists no endpoints.
                vec![Endpoint {
                    address: host.clone(),
                    ports: ports
                        .iter()
                        .map(|p| (p.name.clone(), p.target_port.unwrap_or(p.port)))
                        .collect(),
                    ..endpoint_defaults()
                }]
            } else {
                endpoints.clone()
            };
            Service {
                hostname: host.clone(),
                name: host.clone(),
                namespace: entry.namespace.clone(),
                addresses: addresses.clone(),
                ports: ports.clone(),
                resolution,
                mesh_external: spec.location != Some(Location::MeshInternal),
                endpoints,
                export_to: spec.export_to.clone(),
            }
        })
        .collect();
    Ok(services)
}

/// An endpoint from a WorkloadEntry (standalone or inline): each service port goes to the
/// entry's port of the same name, else the service's target port, else the port itself.
pub(super) fn workload_endpoint(
    address: String,
    workload: &WorkloadEntry,
    ports: &[ServicePort],
) -> Endpoint {
    Endpoint {
        address,
        ports: ports
            .iter()
            .map(|p| {
                let port = workload
                    .ports
                    .get(&p.name)
                    .and_then(|n| u16::try_from(*n).ok())
                    .or(p.target_port)
                    .unwrap_or(p.port);
                (p.name.clone(), port)
            })
            .collect(),
        labels: workload.labels.clone(),
        service_account: workload.service_account.clone(),
        locality: workload.locality.clone().unwrap_or_default(),
        weight: workload.weight.filter(|w| *w > 0).unwrap_or(1),
        ready: true,
    }
}
