//! Packing and unpacking `google.protobuf.Any`, the envelope of every xDS resource and of every
//! typed extension config (`typed_config`).

use prost::{Message, Name};

use crate::google::protobuf::Any;

/// An `Any` did not hold the message it was expected to.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The type URL names another message.
    #[error("expected {expected}, got {actual}")]
    WrongType {
        /// The type URL the caller asked for.
        expected: String,
        /// The type URL the `Any` carries.
        actual: String,
    },
    /// The bytes do not decode as the named message.
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        /// The type URL being decoded.
        type_url: String,
        /// The protobuf decoder's reason.
        source: prost::DecodeError,
    },
}

/// Wraps a message in an `Any` with Envoy's `type.googleapis.com/` type URL.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Unwraps an `Any` holding an `M`; any other type URL is an error, never a silent default.
pub fn unpack<M: Message + Name + Default>(any: &Any) -> Result<M, UnpackError> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(UnpackError::WrongType {
            expected,
            actual: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: expected,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::config::cluster::v3::Cluster;
    use crate::envoy::config::listener::v3::Listener;

    #[test]
    fn round_trip_and_wrong_type() {
        let cluster = Cluster {
            name: "outbound|9080||reviews".into(),
            ..Default::default()
        };
        let any = pack(&cluster);
        assert_eq!(any.type_url, crate::type_url::CLUSTER);
        assert_eq!(unpack::<Cluster>(&any).unwrap(), cluster);
        let err = unpack::<Listener>(&any).unwrap_err();
        assert!(
            err.to_string()
                .contains("envoy.config.listener.v3.Listener"),
            "{err}"
        );
    }
}
