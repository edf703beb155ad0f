//! `circuit_breakers` and `outlier_detection`, validated into domain types with Envoy's
//! defaults filled in.
//!
//! Enforced by [`Cluster`](super::Cluster) through [`crate::circuit_breaker`]: `max_requests`
//! in `Cluster::send`, `max_pending_requests` and `max_connections` in
//! the host pools ([`crate::pool`]), all overflowing with 503 UO and `x-envoy-overloaded`;
//! `max_retries` / `retry_budget` when the router admits a retry; and outlier detection (see
//! [`crate::outlier`]; ejected hosts are avoided by host selection unless the panic threshold
//! is crossed). Routes with `priority: HIGH` use the HIGH thresholds;
//! `per_host_thresholds[].max_connections` is enforced by the pools too.
//!
//! This module holds only the validated configuration; the live counters and guards are
//! [`crate::circuit_breaker`]'s, so there is one implementation of each limit.

use std::time::Duration;

use xds_proto::envoy::config::cluster::v3 as proto;
use xds_proto::google::protobuf::UInt32Value;

use super::InvalidCluster;
use super::config::duration;
use crate::retry::RetryBudget;

/// `circuit_breakers`, all of it enforced (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircuitBreakers {
    /// `thresholds`, one per routing priority (DEFAULT, HIGH).
    pub thresholds: Vec<Thresholds>,
    /// `per_host_thresholds[].max_connections`, the only per-host limit Envoy supports.
    pub per_host_max_connections: Option<u32>,
}

/// One `circuit_breakers.thresholds` entry with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `priority`: false for DEFAULT, true for HIGH.
    pub high_priority: bool,
    /// `max_connections` (default 1024).
    pub max_connections: u32,
    /// `max_pending_requests` (default 1024).
    pub max_pending_requests: u32,
    /// `max_requests` (default 1024).
    pub max_requests: u32,
    /// `max_retries` (default 3).
    pub max_retries: u32,
    /// `retry_budget` (budget percent, default 20; min retry concurrency, default 3; budget
    /// interval, default 0).
    pub retry_budget: Option<RetryBudget>,
}

impl Thresholds {
    /// Envoy's defaults for one priority: 1024 connections, pending and active requests, 3
    /// concurrent retries, no retry budget.
    pub fn envoy_default(high_priority: bool) -> Self {
        Self {
            high_priority,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

impl CircuitBreakers {
    /// Validates `circuit_breakers` of cluster `name`.
    pub(crate) fn parse(cb: &proto::CircuitBreakers, name: &str) -> Result<Self, InvalidCluster> {
        let or = |v: Option<UInt32Value>, default: u32| v.map_or(default, |v| v.value);
        let mut thresholds = Vec::with_capacity(cb.thresholds.len());
        for (i, t) in cb.thresholds.iter().enumerate() {
            if t.max_connection_pools.is_some() {
                return Err(InvalidCluster::not_implemented(
                    name,
                    format!("circuit_breakers.thresholds[{i}].max_connection_pools"),
                ));
            }
            let retry_budget = match &t.retry_budget {
                None => None,
                Some(b) => {
                    let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
                    if !(0.0..=100.0).contains(&percent) {
                        return Err(InvalidCluster::new(
                            name,
                            format!("circuit_breakers.thresholds[{i}].retry_budget.budget_percent"),
                            "must be between 0 and 100",
                        ));
                    }
                    let field =
                        format!("circuit_breakers.thresholds[{i}].retry_budget.budget_interval");
                    let interval = match &b.budget_interval {
                        None => Duration::ZERO,
                        Some(d) => duration(name, &field, d)?,
                    };
                    Some(RetryBudget {
                        percent,
                        min_concurrency: or(b.min_retry_concurrency, 3),
                        interval,
                    })
                }
            };
            let default = Thresholds::envoy_default(t.priority == 1);
            thresholds.push(Thresholds {
                max_connections: or(t.max_connections, default.max_connections),
                max_pending_requests: or(t.max_pending_requests, default.max_pending_requests),
                max_requests: or(t.max_requests, default.max_requests),
                max_retries: or(t.max_retries, default.max_retries),
                retry_budget,
                ..default
            });
        }
        let per_host_max_connections = cb
            .per_host_thresholds
            .first()
            .and_then(|t| t.max_connections);
        Ok(Self {
            thresholds,
            per_host_max_connections: per_host_max_connections.map(|v| v.value),
        })
    }
}

/// `outlier_detection` with Envoy's defaults, run by [`crate::outlier::Detector`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// `consecutive_5xx` (default 5).
    pub consecutive_5xx: u32,
    /// `enforcing_consecutive_5xx` percent (default 100).
    pub enforcing_consecutive_5xx: u32,
    /// `consecutive_gateway_failure` (default 5).
    pub consecutive_gateway_failure: u32,
    /// `enforcing_consecutive_gateway_failure` percent (default 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// `consecutive_local_origin_failure` (default 5).
    pub consecutive_local_origin_failure: u32,
    /// `enforcing_consecutive_local_origin_failure` percent (default 100).
    pub enforcing_consecutive_local_origin_failure: u32,
    /// `split_external_local_origin_errors`.
    pub split_external_local_origin_errors: bool,
    /// `interval` (default 10 s).
    pub interval: Duration,
    /// `base_ejection_time` (default 30 s), multiplied by the number of ejections.
    pub base_ejection_time: Duration,
    /// `max_ejection_time` (default 300 s).
    pub max_ejection_time: Duration,
    /// `max_ejection_percent` (default 10).
    pub max_ejection_percent: u32,
    /// `enforcing_success_rate` percent (default 100; Istio sets 0).
    pub enforcing_success_rate: u32,
    /// `success_rate_minimum_hosts` (default 5).
    pub success_rate_minimum_hosts: u32,
    /// `success_rate_request_volume` (default 100).
    pub success_rate_request_volume: u32,
    /// `success_rate_stdev_factor` (default 1900, i.e. 1.9).
    pub success_rate_stdev_factor: u32,
    /// `failure_percentage_threshold` (default 85).
    pub failure_percentage_threshold: u32,
    /// `enforcing_failure_percentage` (default 0).
    pub enforcing_failure_percentage: u32,
}

impl OutlierDetection {
    /// Validates `outlier_detection` of cluster `name`.
    pub(crate) fn parse(od: &proto::OutlierDetection, name: &str) -> Result<Self, InvalidCluster> {
        let or = |v: Option<UInt32Value>, default: u32| v.map_or(default, |v| v.value);
        let dur = |field: &str, v: &Option<xds_proto::google::protobuf::Duration>, default| {
            v.as_ref().map_or(Ok(default), |d| {
                duration(name, &format!("outlier_detection.{field}"), d)
            })
        };
        if !od.monitors.is_empty() {
            return Err(InvalidCluster::not_implemented(
                name,
                "outlier_detection.monitors",
            ));
        }
        if od.detect_degraded_hosts.is_some_and(|b| b.value) {
            return Err(InvalidCluster::not_implemented(
                name,
                "outlier_detection.detect_degraded_hosts",
            ));
        }
        let percent = |field: &str, v: u32| {
            if v > 100 {
                Err(InvalidCluster::new(
                    name,
                    format!("outlier_detection.{field}"),
                    "must be at most 100",
                ))
            } else {
                Ok(v)
            }
        };
        Ok(Self {
            consecutive_5xx: or(od.consecutive_5xx, 5),
            enforcing_consecutive_5xx: percent(
                "enforcing_consecutive_5xx",
                or(od.enforcing_consecutive_5xx, 100),
            )?,
            consecutive_gateway_failure: or(od.consecutive_gateway_failure, 5),
            enforcing_consecutive_gateway_failure: percent(
                "enforcing_consecutive_gateway_failure",
                or(od.enforcing_consecutive_gateway_failure, 0),
            )?,
            consecutive_local_origin_failure: or(od.consecutive_local_origin_failure, 5),
            enforcing_consecutive_local_origin_failure: percent(
                "enforcing_consecutive_local_origin_failure",
                or(od.enforcing_consecutive_local_origin_failure, 100),
            )?,
            split_external_local_origin_errors: od.split_external_local_origin_errors,
            interval: dur("interval", &od.interval, Duration::from_secs(10))?,
            base_ejection_time: dur(
                "base_ejection_time",
                &od.base_ejection_time,
                Duration::from_secs(30),
            )?,
            max_ejection_time: dur(
                "max_ejection_time",
                &od.max_ejection_time,
                Duration::from_secs(300),
            )?,
            max_ejection_percent: percent("max_ejection_percent", or(od.max_ejection_percent, 10))?,
            enforcing_success_rate: percent(
                "enforcing_success_rate",
                or(od.enforcing_success_rate, 100),
            )?,
            success_rate_minimum_hosts: or(od.success_rate_minimum_hosts, 5),
            success_rate_request_volume: or(od.success_rate_request_volume, 100),
            success_rate_stdev_factor: or(od.success_rate_stdev_factor, 1900),
            failure_percentage_threshold: percent(
                "failure_percentage_threshold",
                or(od.failure_percentage_threshold, 85),
            )?,
            enforcing_failure_percentage: percent(
                "enforcing_failure_percentage",
                or(od.enforcing_failure_percentage, 0),
            )?,
        })
    }
}
