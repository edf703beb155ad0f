//! Small constructors for the Envoy messages every part of the translation repeats (ADS config
//! sources, socket addresses, durations, typed extension configs), so that each of them is spelt
//! exactly once and exactly as Istio spells it.

use std::time::Duration as StdDuration;

use prost::Name;
use xds_proto::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TransportSocket,
    address, config_source::ConfigSourceSpecifier, socket_address, transport_socket,
};
use xds_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use xds_proto::google::protobuf::{Any, Duration, UInt32Value};

/// Istio's default for everything it leaves "unlimited": circuit breaker thresholds.
pub const MAX_U32: u32 = u32::MAX;

/// `{ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}`: how Istio points EDS and RDS
/// at the ADS stream (an initial fetch timeout of 0 waits for the resource instead of warming
/// without it).
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        initial_fetch_timeout: Some(duration(StdDuration::ZERO)),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A TCP socket address.
pub fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A protobuf duration.
pub fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration of whole seconds.
pub fn seconds(s: u64) -> Duration {
    duration(StdDuration::from_secs(s))
}

/// A `UInt32Value` wrapper.
pub fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// Packs a message into an `Any`.
pub fn any<M: prost::Message + Name>(message: &M) -> Any {
    xds_proto::any::pack(message)
}

/// A transport socket with its typed config.
pub fn transport_socket<M: prost::Message + Name>(name: &str, message: &M) -> TransportSocket {
    TransportSocket {
        name: name.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(message))),
    }
}

/// Istio's percentage (a double, 0-100) as Envoy's fraction: per million, as Istio encodes it.
pub fn percent_per_million(percent: f64) -> FractionalPercent {
    let clamped = percent.clamp(0.0, 100.0);
    FractionalPercent {
        // Bounded by the clamp above: at most 1,000,000.
        numerator: (clamped * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_per_million() {
        assert_eq!(percent_per_million(20.0).numerator, 200_000);
        assert_eq!(percent_per_million(0.5).numerator, 5_000);
        assert_eq!(percent_per_million(250.0).numerator, 1_000_000);
    }

    #[test]
    fn durations() {
        let d = duration(StdDuration::from_millis(1500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
