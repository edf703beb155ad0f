//! A connected proxy's identity, parsed from the xDS `Node` the way Istio's sidecars send it:
//! id `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local` and metadata `NAMESPACE`, `LABELS`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IPS`.
//!
//! The translator keys everything it generates on this identity, so a node that cannot be parsed
//! is refused with an error naming the part that is wrong instead of getting someone else's config.

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds_proto::envoy::config::core::v3::Node;
use xds_proto::google::protobuf::{Struct, value::Kind};

/// Who is asking for config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    /// The node id as sent.
    pub id: String,
    /// `sidecar` or `router`.
    pub kind: String,
    /// Instance IPs; the first is the one listeners bind to in local mode.
    pub ips: Vec<IpAddr>,
    /// Pod (or workload) name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
}

/// Why a node was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNode {
    /// The first request on a stream carried no node.
    #[error("the first request carries no node")]
    Missing,
    /// The id does not have Istio's four `~`-separated parts.
    #[error("node id {id:?}: expected TYPE~IP~POD.NAMESPACE~DOMAIN")]
    IdShape {
        /// The id as sent.
        id: String,
    },
    /// The id's first part is neither `sidecar` nor `router`.
    #[error("node id {id:?}: unknown proxy type {kind:?} (expected sidecar or router)")]
    Kind {
        /// The id as sent.
        id: String,
        /// The type part.
        kind: String,
    },
    /// An IP in the id or in `INSTANCE_IPS` does not parse.
    #[error("node {field}: {value:?} is not an IP address")]
    Ip {
        /// `id` or `metadata.INSTANCE_IPS`.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// A metadata field has the wrong JSON type.
    #[error("node metadata.{field}: expected a string")]
    NotAString {
        /// The field path, e.g. `LABELS.app`.
        field: String,
    },
    /// `LABELS` is not a struct.
    #[error("node metadata.LABELS: expected a struct of strings")]
    Labels,
    /// No namespace in the metadata nor in the id.
    #[error("node id {id:?}: no namespace in metadata.NAMESPACE nor in the id")]
    Namespace {
        /// The id as sent.
        id: String,
    },
}

impl TryFrom<&Node> for ProxyNode {
    type Error = InvalidNode;

    fn try_from(node: &Node) -> Result<Self, InvalidNode> {
        let id = node.id.clone();
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, workload, domain] = parts[..] else {
            return Err(InvalidNode::IdShape { id });
        };
        if kind != "sidecar" && kind != "router" {
            return Err(InvalidNode::Kind {
                kind: kind.to_owned(),
                id,
            });
        }
        let metadata = node.metadata.as_ref();
        let ips = match string_field(metadata, "INSTANCE_IPS")? {
            Some(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|ip| parse_ip("metadata.INSTANCE_IPS", ip.trim()))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![parse_ip("id", ip)?],
        };
        let namespace = match string_field(metadata, "NAMESPACE")? {
            Some(ns) if !ns.is_empty() => ns,
            _ => workload
                .rsplit_once('.')
                .map(|(_, ns)| ns)
                .or_else(|| domain.split('.').next())
                .filter(|ns| !ns.is_empty())
                .ok_or_else(|| InvalidNode::Namespace { id: id.clone() })?
                .to_owned(),
        };
        let pod = workload
            .strip_suffix(&format!(".{namespace}"))
            .unwrap_or(workload)
            .to_owned();
        Ok(ProxyNode {
            kind: kind.to_owned(),
            ips,
            pod,
            namespace,
            labels: labels(metadata)?,
            service_account: string_field(metadata, "SERVICE_ACCOUNT")?.unwrap_or_default(),
            id,
        })
    }
}

impl ProxyNode {
    /// The SPIFFE identity of the workload (`spiffe://cluster.local/ns/NS/sa/SA`), with the
    /// `default` service account when the node did not name one.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        format!("spiffe://{trust_domain}/ns/{}/sa/{sa}", self.namespace)
    }
}

fn parse_ip(field: &'static str, value: &str) -> Result<IpAddr, InvalidNode> {
    value.parse().map_err(|_| InvalidNode::Ip {
        field,
        value: value.to_owned(),
    })
}

fn string_field(metadata: Option<&Struct>, key: &str) -> Result<Option<String>, InvalidNode> {
    match metadata
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(InvalidNode::NotAString {
            field: key.to_owned(),
        }),
    }
}

fn labels(metadata: Option<&Struct>) -> Result<BTreeMap<String, String>, InvalidNode> {
    match metadata
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| v.kind.as_ref())
    {
        None | Some(Kind::NullValue(_)) => Ok(BTreeMap::new()),
        Some(Kind::StructValue(labels)) => labels
            .fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
                _ => Err(InvalidNode::NotAString {
                    field: format!("LABELS.{k}"),
                }),
            })
            .collect(),
        Some(_) => Err(InvalidNode::Labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::google::protobuf::Value;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    fn node(id: &str, fields: Vec<(&str, Value)>) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_istio_sidecar_node() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [
                    ("app".into(), string("reviews")),
                    ("version".into(), string("v1")),
                ]
                .into(),
            })),
        };
        let n = node(
            "sidecar~10.1.0.7~reviews-v1-5d8f.bookinfo~bookinfo.svc.cluster.local",
            vec![
                ("NAMESPACE", string("bookinfo")),
                ("LABELS", labels),
                ("SERVICE_ACCOUNT", string("bookinfo-reviews")),
                ("INSTANCE_IPS", string("10.1.0.7,fd00::7")),
            ],
        );
        let p = ProxyNode::try_from(&n).unwrap();
        assert_eq!(p.kind, "sidecar");
        assert_eq!(p.pod, "reviews-v1-5d8f");
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.labels["version"], "v1");
        assert_eq!(
            p.spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn namespace_and_ip_fall_back_to_the_id() {
        let p = ProxyNode::try_from(&node(
            "sidecar~127.0.0.2~app.default~default.svc.cluster.local",
            vec![],
        ))
        .unwrap();
        assert_eq!((p.pod.as_str(), p.namespace.as_str()), ("app", "default"));
        assert_eq!(p.ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn malformed_nodes_are_refused_with_the_reason() {
        let cases = [
            ("sidecar~10.0.0.1~app.default", vec![], "expected TYPE~IP"),
            ("gateway~10.0.0.1~a.b~b.svc", vec![], "unknown proxy type"),
            ("sidecar~not-an-ip~a.b~b.svc", vec![], "not an IP"),
            (
                "sidecar~10.0.0.1~a.b~b.svc",
                vec![("INSTANCE_IPS", string("10.0.0.1,x"))],
                "INSTANCE_IPS",
            ),
            (
                "sidecar~10.0.0.1~a.b~b.svc",
                vec![("LABELS", string("app=x"))],
                "LABELS",
            ),
            (
                "sidecar~10.0.0.1~a.b~b.svc",
                vec![(
                    "NAMESPACE",
                    Value {
                        kind: Some(Kind::NumberValue(1.0)),
                    },
                )],
                "NAMESPACE",
            ),
        ];
        for (id, fields, want) in cases {
            let err = ProxyNode::try_from(&node(id, fields)).unwrap_err();
            assert!(err.to_string().contains(want), "{id}: {err}");
        }
    }
}
