//! The sampling decision, in Envoy's order: `x-envoy-force-trace` from an internal caller,
//! then `x-client-trace-id` under `client_sampling`, then `random_sampling`; `overall_sampling`
//! caps the result. A caller's own decision (`x-b3-sampled`) then wins, as in Envoy's Zipkin
//! tracer. The random source is a parameter so tests are deterministic.

use rand::Rng;

use super::config::TracingConfig;

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

/// Decides whether a request is traced.
pub fn decide<R: Rng + ?Sized>(config: &TracingConfig, signals: Signals, rng: &mut R) -> Decision {
    let mut reason = if signals.force {
        Reason::ServiceForced
    } else if signals.client_trace_id && hit(config.client_sampling, rng) {
        Reason::ClientEnabled
    } else if hit(config.random_sampling, rng) {
        Reason::RandomSampling
    } else {
        Reason::NotTraceable
    };
    if reason != Reason::NotTraceable && !hit(config.overall_sampling, rng) {
        reason = Reason::NotTraceable;
    }
    let sampled = match signals.incoming {
        Some(sampled) => sampled,
        None => reason != Reason::NotTraceable,
    };
    Decision { sampled, reason }
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
            .filter(|_| decide(config, signals, &mut rng).sampled)
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
        let d = decide(&config(100.0, 0.0, 100.0), signals, &mut rng);
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
        let d = decide(&config(0.0, 0.0, 100.0), signals, &mut rng);
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
}
