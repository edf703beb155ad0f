//! What the model accepts but the generated config does not carry out yet: PeerAuthentication
//! (mutual TLS) and AuthorizationPolicy objects are parsed and validated like every Istio object,
//! but their translation belongs to the mTLS and authorization work still to come. Serving
//! without them silently would let a user believe a DENY policy or STRICT mTLS is in force, so
//! each such object yields a [`ModelWarning`]: logged once, listed on `/debug/warnings` and
//! counted in `ferry_config_unenforced_objects`.

use std::fmt;

use super::{Model, Origin};
use crate::api::authorization_policy::Action;

/// An accepted object that is not enforced, with why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelWarning {
    /// Where the object came from: `dir/file.yaml#2` or `namespace/name`.
    pub origin: Origin,
    /// The object's kind.
    pub kind: &'static str,
    /// `namespace/name`.
    pub name: String,
    /// Why it is not enforced, lower-case.
    pub reason: String,
}

/// `FILE#DOC KIND NAMESPACE/NAME: REASON`.
impl fmt::Display for ModelWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.origin, self.kind, self.name, self.reason
        )
    }
}

/// Every accepted object of `model` whose intent the generated config does not carry out,
/// sorted.
pub fn warnings(model: &Model) -> Vec<ModelWarning> {
    let mut out: Vec<ModelWarning> = model
        .peer_authentications
        .iter()
        .map(|pa| ModelWarning {
            origin: pa.origin.clone(),
            kind: "PeerAuthentication",
            name: format!("{}/{}", pa.namespace, pa.name),
            reason: "accepted but not enforced: mutual TLS is not implemented yet, so the \
                     workloads it selects keep accepting and sending plain text"
                .to_owned(),
        })
        .collect();
    out.extend(model.authorization_policies.iter().map(|ap| {
        let action = match ap.spec.action {
            None | Some(Action::Allow) => "ALLOW",
            Some(Action::Deny) => "DENY",
            Some(Action::Audit) => "AUDIT",
            Some(Action::Custom) => "CUSTOM",
        };
        ModelWarning {
            origin: ap.origin.clone(),
            kind: "AuthorizationPolicy",
            name: format!("{}/{}", ap.namespace, ap.name),
            reason: format!(
                "accepted but not enforced: authorization is not implemented yet, so this \
                 {action} policy does not change which requests are let through"
            ),
        }
    }));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::dir::model_from_yaml;

    #[test]
    fn security_policies_are_accepted_but_reported_as_not_enforced() {
        let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\nspec: {host: reviews}\n";
        let (model, errors) = model_from_yaml(text, "security.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        let found = warnings(&model);
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "security.yaml#0 PeerAuthentication shop/strict: accepted but not enforced"
            ),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with(
                "security.yaml#1 AuthorizationPolicy shop/deny-all: accepted but not enforced"
            ),
            "{shown:?}"
        );
        assert!(shown[1].contains("DENY policy"), "{shown:?}");
    }

    #[test]
    fn a_model_without_security_policies_has_no_warnings() {
        assert!(warnings(&Model::default()).is_empty());
    }
}
