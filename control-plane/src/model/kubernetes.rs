//! Kubernetes Services, EndpointSlices and Pods into model services and endpoints. Endpoints
//! come from the EndpointSlices of a service (`kubernetes.io/service-name` label); a service
//! with a selector but no slice gets the endpoints Kubernetes' endpoints controller would derive
//! from the Pods it selects, which is what a directory of manifests (no controller) needs.
//! The annotation `networking.istio.io/exportTo` limits where a service is visible, as in Istio.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::host::service_fqdn;
use super::service_entry::workload_endpoint;
use super::visibility::{self, EXPORT_TO_ANNOTATION, Exporter};
use super::{Config, Endpoint, ModelError, Protocol, Resolution, Service, ServicePort};
use crate::api::{Manifest, WorkloadEntry};
use crate::source::object::{Kind, Object, ObjectKey};
use crate::source::store::Store;

/// The label EndpointSlices carry naming their service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Builds one model service from a Kubernetes Service object and its endpoints.
pub(super) fn service(
    store: &Store,
    object: &Object,
    svc: &KubeService,
    workload_entries: &[Config<WorkloadEntry>],
) -> Result<Service, ModelError> {
    let ObjectKey {
        namespace, name, ..
    } = &object.key;
    let error = |field: &str, reason: String| {
        ModelError::document(&object.origin, reason)
            .object("Service", format!("{namespace}/{name}"))
            .field(field)
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}]{f}");
        if matches!(port.protocol.as_deref(), Some("UDP" | "SCTP")) {
            // Sidecars proxy TCP only; Istio leaves UDP and SCTP ports alone too.
            continue;
        }
        let number = port_number(port.port).map_err(|r| error(&field(".port"), r))?;
        let target_port = match &port.target_port {
            None => Some(number),
            Some(IntOrString::Int(n)) => {
                Some(port_number(*n).map_err(|r| error(&field(".targetPort"), r))?)
            }
            Some(IntOrString::String(s)) if s.is_empty() => Some(number),
            // A named target port is resolved per pod.
            Some(IntOrString::String(_)) => None,
        };
        let port_name = port.name.clone().unwrap_or_default();
        let protocol = Protocol::from_kubernetes_port(&port_name, port.app_protocol.as_deref());
        ports.push(ServicePort {
            name: port_name,
            port: number,
            target_port,
            protocol,
        });
    }

    let export_to = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
    {
        Some(value) => {
            let export_to = visibility::from_annotation(value);
            let reasons = visibility::check(namespace, &export_to, Exporter::Service);
            if !reasons.is_empty() {
                return Err(error(
                    &format!("metadata.annotations[{EXPORT_TO_ANNOTATION}]"),
                    reasons.join("; "),
                ));
            }
            export_to
        }
        None => Vec::new(),
    };
    let mut service = Service {
        hostname: service_fqdn(name, namespace),
        name: name.clone(),
        namespace: namespace.clone(),
        addresses: Vec::new(),
        ports,
        resolution: Resolution::Static,
        mesh_external: false,
        endpoints: Vec::new(),
        export_to,
    };

    if spec.type_.as_deref() == Some("ExternalName") {
        let Some(external) = spec.external_name.filter(|n| !n.is_empty()) else {
            return Err(error(
                "spec.externalName",
                "ExternalName service without externalName".into(),
            ));
        };
        service.resolution = Resolution::Dns;
        service.mesh_external = true;
        service.endpoints.push(Endpoint {
            address: external,
            ports: service
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.port))
                .collect(),
            ..endpoint_defaults()
        });
        return Ok(service);
    }

    let cluster_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => Vec::new(),
    };
    if cluster_ips.iter().any(|ip| ip == "None") {
        service.resolution = Resolution::Passthrough;
    } else {
        for ip in &cluster_ips {
            let addr = ip
                .parse::<IpAddr>()
                .map_err(|_| error("spec.clusterIP", format!("{ip:?} is not an IP address")))?;
            service.addresses.push(addr);
        }
    }

    let slices: Vec<&EndpointSlice> = store
        .of_kind(Kind::EndpointSlice)
        .filter(|o| &o.key.namespace == namespace)
        .filter_map(|o| match &o.manifest {
            Manifest::EndpointSlice(slice) => Some(slice.as_ref()),
            _ => None,
        })
        .filter(|slice| {
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(name)
        })
        .collect();
    service.endpoints = if !slices.is_empty() {
        endpoints_from_slices(store, namespace, &slices)
    } else {
        match spec.selector.as_ref().filter(|s| !s.is_empty()) {
            Some(selector) => pods_selected(store, namespace, selector)
                .filter_map(|pod| endpoint_from_pod(pod, &service.ports, &spec_ports(svc)))
                .collect(),
            None => Vec::new(),
        }
    };
    // Istio lets a Kubernetes service select WorkloadEntries (VMs) like pods.
    if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        for we in workload_entries
            .iter()
            .filter(|we| &we.namespace == namespace)
        {
            let selected = selector
                .iter()
                .all(|(k, v)| we.spec.labels.get(k) == Some(v));
            if let (true, Some(address)) = (selected, we.spec.address.clone()) {
                service
                    .endpoints
                    .push(workload_endpoint(address, &we.spec, &service.ports));
            }
        }
    }
    service.endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(service)
}

pub(super) fn endpoint_defaults() -> Endpoint {
    Endpoint {
        address: String::new(),
        ports: BTreeMap::new(),
        labels: BTreeMap::new(),
        service_account: None,
        locality: String::new(),
        weight: 1,
        ready: true,
    }
}

fn port_number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {n} is out of range 1-65535"))
}

/// The named target ports of a service, by service port name.
fn spec_ports(svc: &KubeService) -> BTreeMap<String, String> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| match &p.target_port {
            Some(IntOrString::String(target)) if !target.is_empty() => {
                Some((p.name.clone().unwrap_or_default(), target.clone()))
            }
            _ => None,
        })
        .collect()
}

fn endpoints_from_slices(
    store: &Store,
    namespace: &str,
    slices: &[&EndpointSlice],
) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<String, Endpoint> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| !matches!(p.protocol.as_deref(), Some("UDP" | "SCTP")))
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
                    let name = r.name.clone()?;
                    pod_in_store(store, ns, name)
                });
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for address in &ep.addresses {
                let entry = by_address.entry(address.clone()).or_insert_with(|| {
                    let mut endpoint = match pod {
                        Some(pod) => workload_of_pod(pod),
                        None => endpoint_defaults(),
                    };
                    if let (true, Some(zone)) = (endpoint.locality.is_empty(), &ep.zone) {
                        endpoint.locality = format!("/{zone}");
                    }
                    endpoint.address = address.clone();
                    endpoint.ready = ready;
                    endpoint
                });
                entry
                    .ports
                    .extend(ports.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
    }
    by_address.into_values().collect()
}

fn pod_in_store(store: &Store, namespace: String, name: String) -> Option<&Pod> {
    let key = ObjectKey {
        kind: Kind::Pod,
        namespace,
        name,
    };
    match &store.get(&key)?.manifest {
        Manifest::Pod(pod) => Some(pod),
        _ => None,
    }
}

/// The pods in `namespace` whose labels carry every `selector` entry.
pub(super) fn pods_selected<'a>(
    store: &'a Store,
    namespace: &'a str,
    selector: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a Pod> + 'a {
    store
        .of_kind(Kind::Pod)
        .filter(move |o| o.key.namespace == namespace)
        .filter_map(|o| match &o.manifest {
            Manifest::Pod(pod) => Some(pod.as_ref()),
            _ => None,
        })
        .filter(move |pod| {
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
}

/// The pod's IP when it can serve: not terminated, not being deleted, with an IP. A pod without
/// a status phase (a manifest in a directory, never scheduled) counts as running.
pub(super) fn pod_ip(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref().is_some_and(|p| p != "Running") {
        return None;
    }
    status
        .pod_ip
        .clone()
        .or_else(|| status.pod_ips.as_ref()?.first().map(|ip| ip.ip.clone()))
        .filter(|ip| !ip.is_empty())
}

/// Labels, service account, locality and readiness of a pod (no address, no ports).
pub(super) fn workload_of_pod(pod: &Pod) -> Endpoint {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    Endpoint {
        locality: locality_of_labels(&labels),
        labels,
        service_account: Some(service_account),
        ready,
        ..endpoint_defaults()
    }
}

/// `region/zone/subzone` from `istio-locality` (`region.zone.subzone`) or the topology labels.
pub(super) fn locality_of_labels(labels: &BTreeMap<String, String>) -> String {
    if let Some(locality) = labels.get("istio-locality") {
        return locality.replace('.', "/");
    }
    let parts = [
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.istio.io/subzone",
    ]
    .map(|k| labels.get(k).map(String::as_str).unwrap_or_default());
    let used = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts[..used].join("/")
}

/// The endpoint a selected pod gives a service, resolving named target ports against the pod's
/// container ports. A port whose name the pod does not expose is left out, as Kubernetes does.
fn endpoint_from_pod(
    pod: &Pod,
    ports: &[ServicePort],
    named_targets: &BTreeMap<String, String>,
) -> Option<Endpoint> {
    let address = pod_ip(pod)?;
    let mut endpoint = workload_of_pod(pod);
    endpoint.address = address;
    for port in ports {
        let target = match port.target_port {
            Some(n) => Some(n),
            None => named_targets
                .get(&port.name)
                .and_then(|target| container_port(pod, target)),
        };
        if let Some(target) = target {
            endpoint.ports.insert(port.name.clone(), target);
        }
    }
    Some(endpoint)
}

/// The number of the container port named `name`.
pub(super) fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}
