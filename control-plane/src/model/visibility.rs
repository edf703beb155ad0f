//! Istio's `exportTo`: which namespaces see a rule or a service. One definition serves every
//! kind that has it (VirtualService, DestinationRule, ServiceEntry and the Kubernetes Service
//! annotation `networking.istio.io/exportTo`), for both the validation webhook's rules
//! ([`check`], with Istio's messages) and what a proxy in a namespace may see ([`is_visible`]).
//! An empty list means Istio's default, `defaultServiceExportTo: *` and its equivalents for
//! rules: everywhere.

use std::collections::BTreeSet;

/// The Kubernetes Service annotation that sets a service's `exportTo` (comma-separated).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// `.`: the owner's namespace only.
const PRIVATE: &str = ".";
/// `*`: every namespace.
const PUBLIC: &str = "*";
/// `~`: no namespace (services only).
const NONE: &str = "~";

/// What carries the `exportTo`, because Istio's rules differ per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// A VirtualService, or a DestinationRule without a workload selector.
    Rule,
    /// A DestinationRule with a workload selector: only its own namespace.
    RuleWithSelector,
    /// A ServiceEntry or a Kubernetes Service: `~` (nobody) is allowed.
    Service,
}

/// Istio's `validateExportTo`: every reason `export_to`, on an object in `namespace`, is
/// refused, with Istio's own messages. Empty when it is valid.
pub fn check(namespace: &str, export_to: &[String], exporter: Exporter) -> Vec<String> {
    let mut errors = Vec::new();
    if export_to.is_empty() {
        return errors;
    }
    let mut set = BTreeSet::new();
    for entry in export_to {
        // `.` is the owner's namespace, so `[., NS]` is a duplicate.
        let key = if entry == PRIVATE { namespace } else { entry };
        if set.contains(key) {
            errors.push(if key != entry {
                format!("duplicate entries in exportTo: . and current namespace {namespace}")
            } else {
                format!("duplicate entries in exportTo for entry {entry}")
            });
        } else if exporter == Exporter::Service && entry == NONE {
            set.insert(key);
        } else {
            match validate_entry(key) {
                Ok(()) => {
                    set.insert(key);
                }
                Err(e) => errors.push(e.into()),
            }
        }
    }
    if exporter == Exporter::RuleWithSelector && !set.is_empty() {
        if !set.contains(namespace) {
            errors.push(
                "destination rule with workload selector cannot have exportTo beyond current namespace"
                    .into(),
            );
        } else if set.len() > 1 {
            errors.push(
                "destination rule with workload selector cannot have multiple entries in exportTo"
                    .into(),
            );
        }
    }
    if set.contains(PUBLIC) && export_to.len() > 1 {
        errors.push(
            "cannot have both public (*) and non-public exportTo values for a resource".into(),
        );
    }
    if set.contains(NONE) && export_to.len() > 1 {
        errors.push("cannot export service entry to no one (~) and someone".into());
    }
    errors
}

/// Istio's `visibility.Instance.Validate` for one entry (with `.` already resolved).
fn validate_entry(entry: &str) -> Result<(), &'static str> {
    match entry {
        PRIVATE | PUBLIC => Ok(()),
        NONE => Err("exportTo ~ (none) is not allowed for Istio configuration objects"),
        ns if crate::validate::is_dns1123_label(ns) => Ok(()),
        _ => Err("only .,*,~, or a valid DNS 1123 label is allowed as exportTo entry"),
    }
}

/// Whether an object of `owner_namespace` exported to `export_to` is visible in `namespace`:
/// `*`, `.` (its own namespace) or the namespace by name; `~` matches nothing; empty is `*`.
pub fn is_visible(export_to: &[String], owner_namespace: &str, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| {
            e == PUBLIC || e == namespace || (e == PRIVATE && owner_namespace == namespace)
        })
}

/// The `exportTo` of a Kubernetes Service's annotation value: comma-separated, each trimmed,
/// as Istio's Kubernetes controller reads it. Empty entries are dropped.
pub fn from_annotation(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn visibility_follows_dot_star_tilde_and_names() {
        let visible = |e: &[&str], ns| is_visible(&list(e), "shop", ns);
        assert!(visible(&[], "web"), "empty is Istio's default *");
        assert!(visible(&["*"], "web"));
        assert!(visible(&["."], "shop"));
        assert!(!visible(&["."], "web"));
        assert!(visible(&["web", "other"], "web"));
        assert!(
            !visible(&["web"], "shop"),
            "naming others hides it from its own namespace"
        );
        assert!(!visible(&["~"], "shop"));
        assert!(!visible(&["~"], "web"));
    }

    #[test]
    fn istio_messages_for_invalid_values() {
        let errors = |e: &[&str], exporter| check("shop", &list(e), exporter);
        assert!(errors(&[".", "web"], Exporter::Rule).is_empty());
        assert!(errors(&["~"], Exporter::Service).is_empty());
        assert_eq!(
            errors(&["~", "web"], Exporter::Service),
            ["cannot export service entry to no one (~) and someone"]
        );
        assert_eq!(
            errors(&["~"], Exporter::Rule),
            ["exportTo ~ (none) is not allowed for Istio configuration objects"]
        );
        assert_eq!(
            errors(&["*", "web"], Exporter::Service),
            ["cannot have both public (*) and non-public exportTo values for a resource"]
        );
        assert_eq!(
            errors(&["shop", "."], Exporter::Service),
            ["duplicate entries in exportTo: . and current namespace shop"]
        );
        assert_eq!(
            errors(&["web", "web"], Exporter::Rule),
            ["duplicate entries in exportTo for entry web"]
        );
        assert_eq!(
            errors(&["Web_1"], Exporter::Service),
            ["only .,*,~, or a valid DNS 1123 label is allowed as exportTo entry"]
        );
        assert_eq!(
            errors(&["web"], Exporter::RuleWithSelector),
            [
                "destination rule with workload selector cannot have exportTo beyond current namespace"
            ]
        );
        assert_eq!(
            errors(&[".", "web"], Exporter::RuleWithSelector),
            ["destination rule with workload selector cannot have multiple entries in exportTo"]
        );
        assert!(errors(&["."], Exporter::RuleWithSelector).is_empty());
    }

    #[test]
    fn annotation_is_comma_separated_and_trimmed() {
        assert_eq!(from_annotation(" ., web ,"), list(&[".", "web"]));
        assert!(from_annotation("").is_empty());
    }
}
