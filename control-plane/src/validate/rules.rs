//! Field-level checks shared by every kind: durations with Istio's 1ms minimum, ports,
//! percentages, RE2 regexes, host names, header names, IPs and CIDRs, label selectors, exportTo.
//! Each check appends to a [`Report`] under the field path it was given.

use std::net::IpAddr;

use crate::api::{Duration, StringMatch, WorkloadLabelSelector, WorkloadSelector};
use crate::model::visibility::{self, Exporter};

use super::FieldError;

/// Collects the errors of one object, each under its field path.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) errors: Vec<FieldError>,
}

impl Report {
    /// Records an error at `field`.
    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Records `reason` when `bad` holds.
    pub(crate) fn check(&mut self, bad: bool, field: impl Into<String>, reason: impl Into<String>) {
        if bad {
            self.push(field, reason);
        }
    }

    /// A duration Istio requires to be at least 1ms.
    pub(crate) fn duration(&mut self, field: impl Into<String>, d: &Option<Duration>) {
        if let Some(d) = d
            && d.get() < Duration::MIN
        {
            self.push(field, format!("duration {d} must be at least 1ms"));
        }
    }

    /// A port number, 1-65535.
    pub(crate) fn port(&mut self, field: impl Into<String>, port: u32) {
        if port == 0 || port > 65535 {
            self.push(field, format!("port {port} is out of range 1-65535"));
        }
    }

    /// An optional port number (0 is proto3's "unset").
    pub(crate) fn opt_port(&mut self, field: impl Into<String>, port: Option<u32>) {
        if let Some(p) = port
            && p > 65535
        {
            self.push(field, format!("port {p} is out of range 1-65535"));
        }
    }

    /// A percentage in [0, 100].
    pub(crate) fn percent(&mut self, field: impl Into<String>, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.push(field, format!("percentage {value} is out of range 0-100"));
        }
    }

    /// An RE2 regular expression (the regex crate implements the same syntax).
    pub(crate) fn regex(&mut self, field: impl Into<String>, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default().trim();
            let reason = last.trim_start_matches("error: ");
            self.push(field, format!("regex {re:?} does not compile: {reason}"));
        }
    }

    /// A StringMatch: at most one of exact, prefix, regex, and a regex that compiles.
    pub(crate) fn string_match(&mut self, field: &str, m: &StringMatch) {
        if m.set_count() > 1 {
            self.push(field, "only one of exact, prefix or regex may be set");
        }
        if let Some(re) = &m.regex {
            self.regex(format!("{field}.regex"), re);
        }
    }

    /// A host name as Istio accepts it: a DNS name, optionally with a leading `*.`, `*`, or
    /// an IP address.
    pub(crate) fn host(&mut self, field: impl Into<String>, host: &str) {
        if let Err(reason) = check_host(host) {
            self.push(field, reason);
        }
    }

    /// An HTTP header name (lower-case not required here).
    pub(crate) fn header_name(&mut self, field: impl Into<String>, name: &str) {
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.push(field, format!("invalid header name {name:?}"));
        }
    }

    /// An IP address or CIDR block.
    pub(crate) fn ip_or_cidr(&mut self, field: impl Into<String>, text: &str) {
        if !is_ip_or_cidr(text) {
            self.push(
                field,
                format!("{text:?} is not an IP address or CIDR block"),
            );
        }
    }

    /// `selector.matchLabels` of security policies and DestinationRule.
    pub(crate) fn workload_selector(&mut self, field: &str, s: &Option<WorkloadSelector>) {
        if let Some(s) = s {
            self.labels(&format!("{field}.matchLabels"), s.match_labels.iter());
        }
    }

    /// `workloadSelector.labels` of Sidecar and ServiceEntry.
    pub(crate) fn label_selector(&mut self, field: &str, s: &Option<WorkloadLabelSelector>) {
        if let Some(s) = s {
            self.labels(&format!("{field}.labels"), s.labels.iter());
        }
    }

    fn labels<'a>(&mut self, field: &str, labels: impl Iterator<Item = (&'a String, &'a String)>) {
        for (k, v) in labels {
            let f = format!("{field}[{k}]");
            self.check(k.is_empty(), &f, "label key must not be empty");
            self.check(
                k.contains('*') || v.contains('*'),
                &f,
                "wildcard is not allowed in label selectors",
            );
            self.check(v.len() > 63, &f, "label value is longer than 63 characters");
        }
    }

    /// `exportTo` of an object in `namespace`, with Istio's rules and messages.
    pub(crate) fn export_to(&mut self, namespace: &str, export: &[String], exporter: Exporter) {
        for reason in visibility::check(namespace, export, exporter) {
            self.push("spec.exportTo", reason);
        }
    }
}

/// Why `host` is not a valid Istio host, if it is not.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host == "*" || host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    if host.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    if name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not a valid DNS name (a wildcard is only allowed as a leading '*.')"
        ))
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// A Kubernetes DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    is_dns_label(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// An IP address or a CIDR block.
pub(crate) fn is_ip_or_cidr(text: &str) -> bool {
    match text.split_once('/') {
        None => text.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "reviews.shop.svc.cluster.local",
            "*.example.com",
            "*",
            "10.0.0.1",
            "api.example.com.",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "foo*.com", "-a.com", "a_b.com", "shop/reviews"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(is_ip_or_cidr("::1"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
        assert!(!is_ip_or_cidr("example.com"));
    }

    #[test]
    fn durations_below_one_millisecond_are_refused() {
        let mut r = Report::default();
        r.duration("spec.timeout", &Some("500us".parse().unwrap()));
        r.duration("spec.ok", &Some("1ms".parse().unwrap()));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].field, "spec.timeout");
    }

    #[test]
    fn bad_regex_is_refused() {
        let mut r = Report::default();
        r.regex("f", "([a-z]+");
        r.regex("g", "^/api/v[0-9]+/.*$");
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].reason.contains("does not compile"),
            "{:?}",
            r.errors
        );
    }
}
