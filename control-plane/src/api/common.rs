//! Types shared by several Istio kinds: string matches, Istio's duration strings, workload
//! selectors, port selectors and percentages. They mirror Istio's protobuf messages field for
//! field so that any YAML Istio accepts reads here, and nothing else does.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Istio's `StringMatch`: at most one of `exact`, `prefix`, `regex` (RE2 syntax, full match).
///
/// All three absent is legal: for header matches it means "the header is present".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StringMatch {
    /// Exact string match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix-based match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2 style regex-based match; must match the whole value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Which kind of match a [`StringMatch`] asks for, once validated to hold at most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind<'a> {
    /// `exact`.
    Exact(&'a str),
    /// `prefix`.
    Prefix(&'a str),
    /// `regex` (RE2, full match).
    Regex(&'a str),
    /// None set: presence for headers, anything elsewhere.
    Any,
}

impl StringMatch {
    /// The match this asks for. When several are set (which validation rejects), the first of
    /// exact, prefix, regex wins.
    pub fn kind(&self) -> MatchKind<'_> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => MatchKind::Exact(e),
            (None, Some(p), _) => MatchKind::Prefix(p),
            (None, None, Some(r)) => MatchKind::Regex(r),
            (None, None, None) => MatchKind::Any,
        }
    }

    /// How many of `exact`, `prefix`, `regex` are set (Istio allows at most one).
    pub fn set_count(&self) -> usize {
        [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|o| o.is_some())
            .count()
    }
}

/// A duration as Istio writes it: Go/protobuf duration strings such as `"1.5s"`, `"100ms"`,
/// `"1h"`, `"1m30s"`. Negative durations are refused at parse time; Istio's minimum (1ms for most
/// fields) is a validation rule, because some fields (cookie `ttl`) accept zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a Go duration string.
    #[error("invalid duration {input:?}: {reason}; write e.g. \"1.5s\", \"100ms\" or \"1h\"")]
    Syntax {
        /// What was given.
        input: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Below zero.
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

impl Duration {
    /// Istio's minimum for most duration fields.
    pub const MIN: std::time::Duration = std::time::Duration::from_millis(1);

    /// The value as a std duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = |reason: &str| DurationError::Syntax {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (negative, mut rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        // Go's time.ParseDuration (what Istio's CRD validation uses): "0", or a sequence of
        // decimal numbers each with a unit. Kept in integer nanoseconds, checked, so that no
        // input can overflow or panic.
        if rest == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        if rest.is_empty() {
            return Err(syntax("empty"));
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let digits = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (int, r) = rest.split_at(digits(rest));
            let (frac, r) = match r.strip_prefix('.') {
                Some(r) => r.split_at(digits(r)),
                None => ("", r),
            };
            if int.is_empty() && frac.is_empty() {
                return Err(syntax("expected a number"));
            }
            let unit_len = r
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(r.len());
            let (unit, r) = r.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(syntax("missing unit (ns, us, ms, s, m, h)")),
                _ => return Err(syntax("unknown unit (expected ns, us, ms, s, m, h)")),
            };
            let whole: u128 = if int.is_empty() {
                0
            } else {
                int.parse().map_err(|_| syntax("number too large"))?
            };
            let mut value = whole
                .checked_mul(scale)
                .ok_or_else(|| syntax("too large"))?;
            let mut place = scale;
            for d in frac.bytes() {
                place /= 10;
                if place == 0 {
                    break;
                }
                value += u128::from(d - b'0') * place;
            }
            total = total
                .checked_add(value)
                .ok_or_else(|| syntax("too large"))?;
            rest = r;
        }
        if negative && total > 0 {
            return Err(DurationError::Negative(s.to_owned()));
        }
        // google.protobuf.Duration's range, which Envoy enforces: about 10,000 years.
        const MAX_SECS: u128 = 315_576_000_000;
        if total / 1_000_000_000 > MAX_SECS {
            return Err(syntax("longer than 315576000000s, the protobuf maximum"));
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| syntax("too large"))?;
        let nanos = (total % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    /// Shortest exact Go-style spelling: `10s`, `1.5s`, `100ms`, `250us`, `7ns`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.subsec_nanos();
        if nanos == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if d.as_nanos().is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as \"1.5s\", \"100ms\" or \"1h\"."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// `istio.type.v1beta1.WorkloadSelector`: the `selector` of security policies and
/// DestinationRule's `workloadSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry for the policy to apply.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// `networking.v1alpha3.WorkloadSelector`: the `workloadSelector` of Sidecar and ServiceEntry,
/// spelled `labels` rather than `matchLabels`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadLabelSelector {
    /// Labels a workload must all carry.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.PolicyTargetReference`: a Gateway API style reference to the object a
/// policy attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyTargetReference {
    /// API group of the target (empty for core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target, e.g. `Service` or `Gateway`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; cross-namespace references are not supported by Istio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `PortSelector`: a port of the destination, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PortSelector {
    /// The port number (1-65535).
    pub number: u32,
}

/// `Percent`: a percentage as a double in [0, 100].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn durations_parse_in_istio_spellings() {
        let cases = [
            ("1.5s", Std::from_millis(1500)),
            ("100ms", Std::from_millis(100)),
            ("1h", Std::from_secs(3600)),
            ("1m30s", Std::from_secs(90)),
            ("250us", Std::from_micros(250)),
            ("0s", Std::ZERO),
            ("0", Std::ZERO),
        ];
        for (text, want) in cases {
            let got: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got.get(), want, "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_input_named() {
        for text in [
            "10",
            "abc",
            "1.5",
            "5 seconds",
            "",
            "1e400h",
            "99999999999999999999999999999999999999999h",
            "1..5s",
            "s",
            "87660000h1s",
        ] {
            let err = text.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains("invalid duration"), "{text}: {err}");
        }
        let err = "-1s".parse::<Duration>().unwrap_err().to_string();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn durations_display_round_trips() {
        for text in ["10s", "1500ms", "100ms", "3600s", "250us", "7ns", "0s"] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        assert_eq!("1.5s".parse::<Duration>().unwrap().to_string(), "1500ms");
    }

    #[test]
    fn string_match_kind() {
        let m = StringMatch {
            prefix: Some("/api".into()),
            ..Default::default()
        };
        assert_eq!(m.kind(), MatchKind::Prefix("/api"));
        assert_eq!(StringMatch::default().kind(), MatchKind::Any);
    }
}
