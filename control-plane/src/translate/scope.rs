//! What one proxy may see: the services exported to its namespace (`exportTo`) that its
//! `Sidecar` egress hosts select (all of them when no `Sidecar` applies), the VirtualServices and DestinationRules that apply to those services,
//! and the workload ports it serves itself. Scoping is what keeps a sidecar's config (and memory)
//! proportional to what it talks to rather than to the size of the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::api::{DestinationRule, Sidecar, VirtualService};
use crate::model::proxy::ProxyNode;
use crate::model::visibility::is_visible;
use crate::model::{Config, Endpoint, Model, Service, ServicePort};

use super::{Options, TranslateError, names, traffic_policy};

/// Istio's root namespace: a `Sidecar` there without a selector is the mesh-wide default.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One port this proxy's workload serves: the service, the port and the endpoint that is us.
#[derive(Debug, Clone, Copy)]
pub struct InboundTarget<'a> {
    /// The service the workload backs.
    pub service: &'a Service,
    /// The service port.
    pub port: &'a ServicePort,
    /// The endpoint entry that is this workload.
    pub endpoint: &'a Endpoint,
    /// The port the application listens on.
    pub target_port: u16,
}

/// What happens to traffic for destinations the proxy does not know
/// (Sidecar `outboundTrafficPolicy.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Pass it through to the original destination (Istio's default).
    AllowAny,
    /// Drop it (BlackHoleCluster).
    RegistryOnly,
}

/// The translation's view of the model for one proxy.
#[derive(Debug)]
pub struct Scope<'a> {
    /// The whole model.
    pub model: &'a Model,
    /// The proxy being generated for.
    pub proxy: &'a ProxyNode,
    /// Generation options.
    pub options: &'a Options,
    /// Unknown destinations.
    pub outbound_policy: OutboundPolicy,
    services: Vec<&'a Service>,
    egress: Option<Vec<(String, String)>>,
    destination_rules: Vec<&'a Config<DestinationRule>>,
    errors: Vec<TranslateError>,
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl<'a> Scope<'a> {
    /// Computes the scope of `proxy`.
    pub fn new(model: &'a Model, proxy: &'a ProxyNode, options: &'a Options) -> Self {
        let mut errors = Vec::new();
        let mut outbound_policy = OutboundPolicy::AllowAny;
        let egress = match select_sidecar(model, proxy) {
            Some(sidecar) => match sidecar_egress(sidecar, &proxy.namespace) {
                Ok((hosts, policy)) => {
                    outbound_policy = policy;
                    Some(hosts)
                }
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            None => None,
        };
        let services = model
            .services
            .values()
            .filter(|s| is_visible(&s.export_to, &s.namespace, &proxy.namespace))
            .filter(|s| match &egress {
                None => true,
                Some(hosts) => hosts.iter().any(|(ns, host)| {
                    ns_matches(ns, &s.namespace) && names::host_matches(host, &s.hostname)
                }),
            })
            .collect();
        let mut destination_rules = Vec::new();
        for rule in &model.destination_rules {
            if let Some(selector) = &rule.spec.workload_selector
                && (rule.namespace != proxy.namespace
                    || !labels_match(&selector.match_labels, &proxy.labels))
            {
                continue;
            }
            if !is_visible(&rule.spec.export_to, &rule.namespace, &proxy.namespace) {
                continue;
            }
            match traffic_policy::unsupported(rule) {
                Some(e) => errors.push(e),
                None => destination_rules.push(rule),
            }
        }
        Self {
            model,
            proxy,
            options,
            outbound_policy,
            services,
            egress,
            destination_rules,
            errors,
        }
    }

    /// Errors found while scoping (a `Sidecar` or rule that cannot be honoured...).
    pub fn errors(&self) -> Vec<TranslateError> {
        self.errors.clone()
    }

    /// Services visible to this proxy, by host name.
    pub fn services(&self) -> &[&'a Service] {
        &self.services
    }

    /// The visible service named `host`.
    pub fn service(&self, host: &str) -> Option<&'a Service> {
        self.services
            .iter()
            .copied()
            .find(|s| s.hostname.eq_ignore_ascii_case(host))
    }

    /// The DestinationRule for `host`: an exact host beats a wildcard; then the proxy's
    /// namespace, the service's namespace and the root namespace, in that order, as Istio does.
    pub fn destination_rule(&self, service: &Service) -> Option<&'a Config<DestinationRule>> {
        let namespaces = [
            self.proxy.namespace.as_str(),
            service.namespace.as_str(),
            ROOT_NAMESPACE,
        ];
        let host_of = |r: &Config<DestinationRule>| {
            names::resolve_host(self.model, &r.spec.host, &r.namespace)
        };
        let matching: Vec<_> = self
            .destination_rules
            .iter()
            .copied()
            .filter(|r| names::host_matches(&host_of(r), &service.hostname))
            .collect();
        let exact: Vec<_> = matching
            .iter()
            .copied()
            .filter(|r| host_of(r).eq_ignore_ascii_case(&service.hostname))
            .collect();
        let pool = if exact.is_empty() { matching } else { exact };
        namespaces
            .iter()
            .find_map(|ns| pool.iter().copied().find(|r| r.namespace == *ns))
            .or_else(|| pool.first().copied())
    }

    /// The VirtualService routing `service` for sidecars: visible to this proxy, bound to the
    /// `mesh` gateway; an exact host beats a wildcard, then the first in the model wins.
    pub fn virtual_service(&self, service: &Service) -> Option<&'a Config<VirtualService>> {
        let mut wildcard = None;
        for vs in &self.model.virtual_services {
            if !self.virtual_service_visible(vs) {
                continue;
            }
            for host in &vs.spec.hosts {
                let host = names::resolve_host(self.model, host, &vs.namespace);
                if host.eq_ignore_ascii_case(&service.hostname) {
                    return Some(vs);
                }
                if wildcard.is_none()
                    && host.starts_with('*')
                    && names::host_matches(&host, &service.hostname)
                {
                    wildcard = Some(vs);
                }
            }
        }
        wildcard
    }

    fn virtual_service_visible(&self, vs: &Config<VirtualService>) -> bool {
        let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !mesh || !is_visible(&vs.spec.export_to, &vs.namespace, &self.proxy.namespace) {
            return false;
        }
        match &self.egress {
            None => true,
            Some(hosts) => hosts.iter().any(|(ns, _)| ns_matches(ns, &vs.namespace)),
        }
    }

    /// The address listeners bind: the first instance IP in local mode, `0.0.0.0` otherwise.
    pub fn bind_address(&self) -> String {
        match (self.options.local_mode, self.proxy.ips.first()) {
            (true, Some(ip)) => ip.to_string(),
            _ => "0.0.0.0".to_string(),
        }
    }

    /// Whether outbound clusters send Istio mTLS to endpoints labelled `tlsMode=istio`.
    pub fn auto_mtls(&self) -> bool {
        !self.options.local_mode
    }

    /// The ports this proxy's own workload serves: endpoints (of any service in the mesh, scoping
    /// applies to outbound only) whose address is one of the proxy's instance IPs.
    pub fn inbound_targets(&self) -> Vec<InboundTarget<'a>> {
        let ips: Vec<String> = self.proxy.ips.iter().map(IpAddr::to_string).collect();
        let mut out = Vec::new();
        for service in self.model.services.values() {
            for endpoint in service
                .endpoints
                .iter()
                .filter(|e| ips.contains(&e.address))
            {
                for port in &service.ports {
                    if let Some(target_port) = endpoint_port(service, port, endpoint) {
                        out.push(InboundTarget {
                            service,
                            port,
                            endpoint,
                            target_port,
                        });
                    }
                }
            }
        }
        out
    }
}

fn ns_matches(pattern: &str, namespace: &str) -> bool {
    pattern == "*" || pattern == namespace
}

/// The Sidecar that applies to `proxy`: one in its namespace whose selector matches its labels,
/// else one in its namespace without a selector, else the root namespace's default.
fn select_sidecar<'a>(model: &'a Model, proxy: &ProxyNode) -> Option<&'a Config<Sidecar>> {
    let in_ns = || {
        model
            .sidecars
            .iter()
            .filter(|s| s.namespace == proxy.namespace)
    };
    in_ns()
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|w| labels_match(&w.labels, &proxy.labels))
        })
        .or_else(|| in_ns().find(|s| s.spec.workload_selector.is_none()))
        .or_else(|| {
            model
                .sidecars
                .iter()
                .find(|s| s.namespace == ROOT_NAMESPACE && s.spec.workload_selector.is_none())
        })
}

/// A Sidecar's egress hosts as `(namespace pattern, host pattern)` with `.` resolved to the
/// proxy's namespace, and its outbound traffic policy. Fields not implemented refuse the Sidecar.
fn sidecar_egress(
    sidecar: &Config<Sidecar>,
    proxy_namespace: &str,
) -> Result<(Vec<(String, String)>, OutboundPolicy), TranslateError> {
    let object = format!("Sidecar {}/{}", sidecar.namespace, sidecar.name);
    let unsupported = |field: String| {
        TranslateError::new(
            object.clone(),
            field,
            "not implemented by ferry-control yet",
        )
    };
    if !sidecar.spec.ingress.is_empty() {
        return Err(unsupported("spec.ingress".into()));
    }
    if sidecar.spec.inbound_connection_pool.is_some() {
        return Err(unsupported("spec.inboundConnectionPool".into()));
    }
    let mut hosts = Vec::new();
    for (i, egress) in sidecar.spec.egress.iter().enumerate() {
        if egress.port.is_some() || egress.bind.is_some() || egress.capture_mode.is_some() {
            return Err(unsupported(format!(
                "spec.egress[{i}].port/bind/captureMode"
            )));
        }
        for (j, h) in egress.hosts.iter().enumerate() {
            let Some((ns, host)) = h.split_once('/') else {
                return Err(TranslateError::new(
                    object.clone(),
                    format!("spec.egress[{i}].hosts[{j}]"),
                    "expected namespace/host",
                ));
            };
            let ns = match ns {
                "." => proxy_namespace.to_string(),
                "~" => continue,
                other => other.to_string(),
            };
            hosts.push((ns, host.to_string()));
        }
    }
    let mut policy = OutboundPolicy::AllowAny;
    if let Some(p) = &sidecar.spec.outbound_traffic_policy {
        if p.egress_proxy.is_some() {
            return Err(unsupported("spec.outboundTrafficPolicy.egressProxy".into()));
        }
        if p.mode == Some(crate::api::sidecar::OutboundTrafficMode::RegistryOnly) {
            policy = OutboundPolicy::RegistryOnly;
        }
    }
    Ok((hosts, policy))
}

/// The port of `endpoint` that serves `port` of `service`: the endpoint's own port for the port's
/// name, else the port's target port, else the service port.
pub fn endpoint_port(service: &Service, port: &ServicePort, endpoint: &Endpoint) -> Option<u16> {
    if let Some(p) = endpoint.ports.get(&port.name) {
        return Some(*p);
    }
    if service.ports.len() == 1 && endpoint.ports.len() == 1 {
        return endpoint.ports.values().next().copied();
    }
    if endpoint.ports.is_empty() || service.ports.len() == 1 {
        return Some(port.target_port.unwrap_or(port.port));
    }
    // A multi-port service whose endpoint does not list this port does not serve it.
    None
}
