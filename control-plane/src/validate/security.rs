//! Istio's PeerAuthentication and AuthorizationPolicy rules beyond the schema: port-level mTLS
//! needs a selector and port keys; CUSTOM needs a provider and only CUSTOM may have one;
//! selector and targetRefs are exclusive; sources and operations are non-empty, IP blocks and
//! ports parse, conditions name an attribute and values.

use crate::api::authorization_policy::Action;
use crate::api::{AuthorizationPolicy, PeerAuthentication};

use super::rules::Report;

/// Attribute names (or prefixes, ending in `[` or `.`) a `when` condition may use.
const CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "experimental.envoy.filters.",
];

/// Checks a PeerAuthentication spec.
pub(crate) fn check_peer_authentication(r: &mut Report, pa: &PeerAuthentication) {
    r.workload_selector("spec.selector", &pa.selector);
    let has_selector = pa
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    r.check(
        !pa.port_level_mtls.is_empty() && !has_selector,
        "spec.portLevelMtls",
        "portLevelMtls requires a selector with matchLabels",
    );
    for port in pa.port_level_mtls.keys() {
        r.check(
            !port.parse::<u16>().is_ok_and(|p| p > 0),
            format!("spec.portLevelMtls[{port}]"),
            format!("{port:?} is not a port number 1-65535"),
        );
    }
}

/// Checks an AuthorizationPolicy spec.
pub(crate) fn check_authorization_policy(r: &mut Report, ap: &AuthorizationPolicy) {
    let action = ap.action.unwrap_or(Action::Allow);
    match (action, &ap.provider) {
        (Action::Custom, None) => r.push("spec.provider", "CUSTOM action requires a provider"),
        (Action::Custom, Some(p)) => r.check(
            p.name.as_deref().unwrap_or_default().is_empty(),
            "spec.provider.name",
            "provider name is required",
        ),
        (_, Some(_)) => r.push(
            "spec.provider",
            format!(
                "provider can only be used with the CUSTOM action, not {}",
                match action {
                    Action::Allow => "ALLOW",
                    Action::Deny => "DENY",
                    Action::Audit => "AUDIT",
                    Action::Custom => "CUSTOM",
                }
            ),
        ),
        (_, None) => {}
    }
    let targets = usize::from(ap.selector.is_some())
        + usize::from(ap.target_ref.is_some())
        + usize::from(!ap.target_refs.is_empty());
    r.check(
        targets > 1,
        "spec",
        "only one of selector, targetRef or targetRefs may be set",
    );
    r.workload_selector("spec.selector", &ap.selector);
    let refs = ap
        .target_ref
        .iter()
        .map(|t| ("spec.targetRef".to_owned(), t))
        .chain(
            ap.target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
        );
    for (f, t) in refs {
        r.check(t.kind.is_empty(), format!("{f}.kind"), "kind is required");
        r.check(t.name.is_empty(), format!("{f}.name"), "name is required");
        r.check(
            t.namespace.as_deref().is_some_and(|ns| !ns.is_empty()),
            format!("{f}.namespace"),
            "cross-namespace references are not supported",
        );
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let ff = format!("{f}.from[{j}].source");
            let Some(s) = &from.source else {
                r.push(ff, "source is required");
                continue;
            };
            let lists = [
                &s.principals,
                &s.not_principals,
                &s.request_principals,
                &s.not_request_principals,
                &s.namespaces,
                &s.not_namespaces,
                &s.ip_blocks,
                &s.not_ip_blocks,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                &s.service_accounts,
                &s.not_service_accounts,
                &s.trust_domains,
                &s.not_trust_domains,
            ];
            r.check(
                lists.iter().all(|l| l.is_empty()),
                &ff,
                "source must not be empty",
            );
            r.check(
                (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
                    && [
                        &s.principals,
                        &s.not_principals,
                        &s.namespaces,
                        &s.not_namespaces,
                    ]
                    .iter()
                    .any(|l| !l.is_empty()),
                &ff,
                "serviceAccounts cannot be used with principals or namespaces",
            );
            for (name, list) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, ip) in list.iter().enumerate() {
                    r.ip_or_cidr(format!("{ff}.{name}[{k}]"), ip);
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tf = format!("{f}.to[{j}].operation");
            let Some(op) = &to.operation else {
                r.push(tf, "operation is required");
                continue;
            };
            let lists = [
                &op.hosts,
                &op.not_hosts,
                &op.ports,
                &op.not_ports,
                &op.methods,
                &op.not_methods,
                &op.paths,
                &op.not_paths,
            ];
            r.check(
                lists.iter().all(|l| l.is_empty()),
                &tf,
                "operation must not be empty",
            );
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, p) in list.iter().enumerate() {
                    r.check(
                        !p.parse::<u16>().is_ok_and(|p| p > 0),
                        format!("{tf}.{name}[{k}]"),
                        format!("{p:?} is not a port number 1-65535"),
                    );
                }
            }
            for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, p) in list.iter().enumerate() {
                    r.check(
                        p.is_empty(),
                        format!("{tf}.{name}[{k}]"),
                        "path must not be empty",
                    );
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let cf = format!("{f}.when[{j}]");
            if c.key.is_empty() {
                r.push(format!("{cf}.key"), "key is required");
            } else {
                let known = CONDITION_KEYS.iter().any(|k| {
                    if k.ends_with('[') {
                        c.key.starts_with(k) && c.key.ends_with(']')
                    } else if k.ends_with('.') {
                        c.key.starts_with(k)
                    } else {
                        c.key == *k
                    }
                });
                r.check(
                    !known,
                    format!("{cf}.key"),
                    format!("unknown attribute {:?}", c.key),
                );
            }
            r.check(
                c.values.is_empty() && c.not_values.is_empty(),
                &cf,
                "at least one of values or notValues is required",
            );
        }
    }
}
