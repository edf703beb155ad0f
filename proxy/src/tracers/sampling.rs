//! The sampling decision, in Envoy's order (`ConnectionManagerUtility::mutateTracingRequestHeader`):
//! a reason an earlier hop packed into `x-request-id` stands; otherwise `x-client-trace-id` under
//! `client_sampling`, then `x-envoy-force-trace` from an internal caller, then `random_sampling`;
//! `overall_sampling` caps the result. With `use_request_id_for_trace_sampling` (Envoy's default)
//! the random and overall draws are the request id's number modulo 10,000 ([`super::request_id`]),
//! so every hop decides alike; a request without a usable id is not traced, as in Envoy. A
//! caller's own decision (`x-b3-sampled`) then wins, as in Envoy's Zipkin tracer. The random
//! source is a parameter so tests are deterministic.

use rand::Rng;

use super::config::TracingConfig;
use super::request_id::FromRequestId;

/// Why a request is traced or not: one of Envoy's `http.<stat_prefix>.tracing.*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `service_forced`: an internal caller sent `x-envoy-force-trace`.
    ServiceForced,
    /// `client_enabled`: `x-client-trace-id` under `client_sampling`.
    ClientEnabled,
    /// `random_sampling`.
    RandomSampling,
    /// `not_traceable`: none of the above (or `overall_sampling` said no).
    NotTraceable,
}

/// What the sampler needs from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// `x-envoy-force-trace` from an internal caller.
    pub force: bool,
    /// `x-client-trace-id` present.
    pub client_trace_id: bool,
    /// The caller's decision (`x-b3-sampled`, `b3`).
    pub incoming: Option<bool>,
}

/// The outcome: whether the span is reported, and the counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The span is sampled (reported, and `x-b3-sampled: 1` goes upstream).
    pub sampled: bool,
    /// Envoy's tracing reason.
    pub reason: Reason,
}

fn hit<R: Rng + ?Sized>(percent: f64, rng: &mut R) -> bool {
    percent >= 100.0 || (percent > 0.0 && rng.random_range(0.0..100.0) < percent)
}

/// Envoy's `featureEnabled(percent, value)`: the percentage in ten-thousandths (rounded, as
/// Envoy converts the HCM's `Percent`) against `value` modulo 10,000.
fn hit_value(percent: f64, value: u64) -> bool {
    let numerator = (percent * 100.0).round().clamp(0.0, 10_000.0) as u64;
    value % 10_000 < numerator
}

/// Decides whether a request is traced. `request_id`: what `x-request-id` says when
/// `use_request_id_for_trace_sampling` is on (`None`: off, the draws are random).
pub fn decide<R: Rng + ?Sized>(
    config: &TracingConfig,
    signals: Signals,
    request_id: Option<FromRequestId>,
    rng: &mut R,
) -> Decision {
    let reason = match request_id {
        Some(FromRequestId { value: None, .. }) => Reason::NotTraceable,
        Some(FromRequestId {
            value: Some(value),
            reason,
        }) => {
            let value = value % 10_000;
            let mut reason = match reason {
                Reason::NotTraceable => fresh_reason(config, signals, Some(value), rng),
                packed => packed,
            };
            if reason != Reason::NotTraceable && !hit_value(config.overall_sampling, value) {
                reason = Reason::NotTraceable;
            }
            reason
        }
        None => {
            let reason = fresh_reason(config, signals, None, rng);
            if reason != Reason::NotTraceable && !hit(config.overall_sampling, rng) {
                Reason::NotTraceable
            } else {
                reason
            }
        }
    };
    let sampled = match signals.incoming {
        Some(sampled) => sampled,
        None => reason != Reason::NotTraceable,
    };
    Decision { sampled, reason }
}

/// The reason for a request no earlier hop decided: client, then forced, then random sampling
/// (drawn from the request id's `value` when given, as Envoy does; `client_sampling` is always a
/// random draw in Envoy).
fn fresh_reason<R: Rng + ?Sized>(
    config: &TracingConfig,
    signals: Signals,
    value: Option<u64>,
    rng: &mut R,
) -> Reason {
    let random = match value {
        Some(value) => hit_value(config.random_sampling, value),
        None => hit(config.random_sampling, rng),
    };
    if signals.client_trace_id && hit(config.client_sampling, rng) {
        Reason::ClientEnabled
    } else if signals.force {
        Reason::ServiceForced
    } else if random {
        Reason::RandomSampling
    } else {
        Reason::NotTraceable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn config(client: f64, random: f64, overall: f64) -> TracingConfig {
        use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
        use xds_proto::envoy::r#type::v3::Percent;
        let provider = super::super::tests::zipkin_provider();
        let t = Tracing {
            client_sampling: Some(Percent { value: client }),
            random_sampling: Some(Percent { value: random }),
            overall_sampling: Some(Percent { value: overall }),
            provider: Some(provider),
            ..Default::default()
        };
        TracingConfig::from_proto(&t).unwrap()
    }

    fn rate(config: &TracingConfig, signals: Signals) -> usize {
        let mut rng = StdRng::seed_from_u64(7);
        (0..10_000)
            .filter(|_| decide(config, signals, None, &mut rng).sampled)
            .count()
    }

    #[test]
    fn random_sampling_samples_its_percentage() {
        let c = config(100.0, 1.0, 100.0);
        let n = rate(&c, Signals::default());
        assert!((50..=150).contains(&n), "{n} of 10000 at 1%");
        assert_eq!(rate(&config(100.0, 0.0, 100.0), Signals::default()), 0);
        assert_eq!(
            rate(&config(100.0, 100.0, 100.0), Signals::default()),
            10_000
        );
    }

    #[test]
    fn client_trace_id_forces_under_client_sampling() {
        let signals = Signals {
            client_trace_id: true,
            ..Signals::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let d = decide(&config(100.0, 0.0, 100.0), signals, None, &mut rng);
        assert_eq!(
            d,
            Decision {
                sampled: true,
                reason: Reason::ClientEnabled
            }
        );
        assert_eq!(rate(&config(0.0, 0.0, 100.0), signals), 0);
    }

    #[test]
    fn force_trace_wins_and_overall_sampling_caps() {
        let signals = Signals {
            force: true,
            ..Signals::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let d = decide(&config(0.0, 0.0, 100.0), signals, None, &mut rng);
        assert_eq!(d.reason, Reason::ServiceForced);
        assert!(d.sampled);
        assert_eq!(rate(&config(100.0, 100.0, 0.0), signals), 0);
    }

    #[test]
    fn incoming_decision_is_honoured() {
        let yes = Signals {
            incoming: Some(true),
            ..Signals::default()
        };
        let no = Signals {
            incoming: Some(false),
            ..Signals::default()
        };
        assert_eq!(rate(&config(100.0, 0.0, 100.0), yes), 10_000);
        assert_eq!(rate(&config(100.0, 100.0, 100.0), no), 0);
    }

    fn from_id(value: Option<u64>, reason: Reason) -> Option<FromRequestId> {
        Some(FromRequestId { value, reason })
    }

    #[test]
    fn request_id_sampling_is_a_function_of_the_id() {
        let half = config(100.0, 50.0, 100.0);
        let mut rng = StdRng::seed_from_u64(3);
        let fresh = |value| from_id(Some(value), Reason::NotTraceable);
        // 0x1388 = 5000: the id's number modulo 10,000 against 50% = 5000 ten-thousandths.
        for (value, sampled) in [
            (4_999, true),
            (5_000, false),
            (14_999, true),
            (0x1388, false),
        ] {
            for _ in 0..20 {
                let d = decide(&half, Signals::default(), fresh(value), &mut rng);
                assert_eq!(d.sampled, sampled, "{value}");
            }
        }
        let d = decide(&half, Signals::default(), fresh(1), &mut rng);
        assert_eq!(d.reason, Reason::RandomSampling);
        // 0.01% is one ten-thousandth: only values ending in 0000 hit.
        let tiny = config(100.0, 0.01, 100.0);
        assert!(decide(&tiny, Signals::default(), fresh(20_000), &mut rng).sampled);
        assert!(!decide(&tiny, Signals::default(), fresh(20_001), &mut rng).sampled);
    }

    #[test]
    fn a_packed_reason_stands_unless_overall_sampling_vetoes_it() {
        let mut rng = StdRng::seed_from_u64(4);
        let none = config(0.0, 0.0, 100.0);
        for reason in [
            Reason::RandomSampling,
            Reason::ServiceForced,
            Reason::ClientEnabled,
        ] {
            let d = decide(
                &none,
                Signals::default(),
                from_id(Some(7), reason),
                &mut rng,
            );
            assert_eq!(
                d,
                Decision {
                    sampled: true,
                    reason
                },
                "{reason:?}"
            );
        }
        // `overall_sampling` draws from the id too: 50% keeps values below 5000.
        let capped = config(100.0, 100.0, 50.0);
        for (value, kept) in [
            (6_000, Reason::NotTraceable),
            (4_000, Reason::RandomSampling),
        ] {
            let packed = from_id(Some(value), Reason::RandomSampling);
            let d = decide(&capped, Signals::default(), packed, &mut rng);
            assert_eq!(d.reason, kept, "{value}");
        }
    }

    #[test]
    fn without_a_usable_id_nothing_is_traced_and_client_comes_before_force() {
        let mut rng = StdRng::seed_from_u64(5);
        let all = config(100.0, 100.0, 100.0);
        let both = Signals {
            force: true,
            client_trace_id: true,
            incoming: None,
        };
        let d = decide(&all, both, from_id(None, Reason::NotTraceable), &mut rng);
        assert_eq!(d.reason, Reason::NotTraceable);
        assert!(!d.sampled);
        let d = decide(&all, both, from_id(Some(1), Reason::NotTraceable), &mut rng);
        assert_eq!(d.reason, Reason::ClientEnabled);
    }
}
