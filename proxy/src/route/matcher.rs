//! Envoy's matchers as the route table uses them: `StringMatcher`, `HeaderMatcher`,
//! `QueryParameterMatcher` and the path specifiers of `RouteMatch`.
//!
//! Regexes follow Envoy's `safe_regex`: RE2 syntax (the `regex` crate is RE2-compatible) and a full
//! match of the input, so each pattern is compiled anchored once at config time.

use http::HeaderMap;
use xds_proto::envoy::config::route::v3 as route_pb;
use xds_proto::envoy::r#type::matcher::v3 as matcher_pb;

use super::Invalid;

/// A compiled, fully anchored RE2-style regex; compared by its source so config tables can be
/// compared for equality.
#[derive(Debug, Clone)]
pub struct Regex {
    source: String,
    compiled: regex::Regex,
}

impl Regex {
    /// Compiles `pattern` to match whole inputs only (Envoy's `safe_regex` semantics).
    pub fn full_match(pattern: &str) -> Result<Self, String> {
        let compiled = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
        Ok(Self {
            source: pattern.to_owned(),
            compiled,
        })
    }

    /// Compiles `pattern` unanchored, for substitutions (`regex_rewrite`).
    pub fn search(pattern: &str) -> Result<Self, String> {
        let compiled =
            regex::Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
        Ok(Self {
            source: pattern.to_owned(),
            compiled,
        })
    }

    /// Whether the regex matches `input` (whole input for [`Regex::full_match`]).
    pub fn is_match(&self, input: &str) -> bool {
        self.compiled.is_match(input)
    }

    /// Replaces every match with `substitution`, where Envoy's `\1` back references become the
    /// regex crate's `${1}`.
    pub fn replace_all(&self, input: &str, substitution: &str) -> String {
        let mut rewritten = String::with_capacity(substitution.len());
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some(d)) if d.is_ascii_digit() => {
                    rewritten.push_str("${");
                    rewritten.push(*d);
                    rewritten.push('}');
                    chars.next();
                }
                ('$', _) => rewritten.push_str("$$"),
                _ => rewritten.push(c),
            }
        }
        self.compiled
            .replace_all(input, rewritten.as_str())
            .into_owned()
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Compiles an Envoy `RegexMatcher` (only the default engine, RE2, exists in v3).
pub(crate) fn regex_matcher(
    matcher: &matcher_pb::RegexMatcher,
    field: &str,
) -> Result<Regex, Invalid> {
    Regex::full_match(&matcher.regex)
        .map_err(|reason| Invalid::new(format!("{field}.regex"), reason))
}

/// Envoy's `StringMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    /// The whole value equals.
    Exact(String, bool),
    /// The value starts with.
    Prefix(String, bool),
    /// The value ends with.
    Suffix(String, bool),
    /// The value contains.
    Contains(String, bool),
    /// The whole value matches the regex.
    Regex(Regex),
}

impl StringMatch {
    /// Validates a `StringMatcher` proto; `field` names it in errors.
    pub(crate) fn from_proto(m: &matcher_pb::StringMatcher, field: &str) -> Result<Self, Invalid> {
        use matcher_pb::string_matcher::MatchPattern;
        let ic = m.ignore_case;
        let lowered = |s: &str| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        Ok(match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => Self::Exact(lowered(s), ic),
            Some(MatchPattern::Prefix(s)) => Self::Prefix(lowered(s), ic),
            Some(MatchPattern::Suffix(s)) => Self::Suffix(lowered(s), ic),
            Some(MatchPattern::Contains(s)) => Self::Contains(lowered(s), ic),
            Some(MatchPattern::SafeRegex(r)) => {
                if ic {
                    return Err(Invalid::new(
                        format!("{field}.ignore_case"),
                        "ignore_case has no effect on safe_regex and is refused",
                    ));
                }
                Self::Regex(regex_matcher(r, &format!("{field}.safe_regex"))?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(Invalid::new(
                    format!("{field}.custom"),
                    "custom string matchers are not supported",
                ));
            }
            None => return Err(Invalid::new(field, "a match pattern is required")),
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        fn cmp(ic: bool, value: &str, f: impl Fn(&str) -> bool) -> bool {
            if ic {
                f(&value.to_ascii_lowercase())
            } else {
                f(value)
            }
        }
        match self {
            Self::Exact(s, ic) => cmp(*ic, value, |v| v == s),
            Self::Prefix(s, ic) => cmp(*ic, value, |v| v.starts_with(s.as_str())),
            Self::Suffix(s, ic) => cmp(*ic, value, |v| v.ends_with(s.as_str())),
            Self::Contains(s, ic) => cmp(*ic, value, |v| v.contains(s.as_str())),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

/// How a header matcher tests the value.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValueMatch {
    /// `present_match`: true = must be present, false = must be absent.
    Present(bool),
    /// Any string match (`exact_match`, `prefix_match`, ..., `string_match`).
    String(StringMatch),
}

/// Envoy's `HeaderMatcher` (including the pseudo-headers `:method`, `:authority`, `:path`,
/// `:scheme`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// The value test.
    pub value: HeaderValueMatch,
    /// Inverts the result (not for absent headers, as Envoy).
    pub invert: bool,
    /// An absent header is matched as the empty string.
    pub treat_missing_as_empty: bool,
}

/// The request facts matchers read, borrowed from the request so no copy is made.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The authority (Host header or absolute-form URI authority).
    pub authority: &'a str,
    /// Path and query as received.
    pub path_and_query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }

    /// A header's value as Envoy's matchers see it: pseudo-headers from the request line, and
    /// several values joined by `,`.
    pub fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            ":method" => return Some(Cow::Borrowed(self.method.as_str())),
            ":authority" | "host" => return Some(Cow::Borrowed(self.authority)),
            ":path" => return Some(Cow::Borrowed(self.path_and_query)),
            ":scheme" => return Some(Cow::Borrowed(self.scheme)),
            _ => {}
        }
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        let mut joined: Option<String> = None;
        for value in values {
            let j = joined.get_or_insert_with(|| first.to_string());
            j.push(',');
            j.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        Some(match joined {
            Some(j) => Cow::Owned(j),
            None => first,
        })
    }
}

impl HeaderMatch {
    /// Validates a `HeaderMatcher` proto.
    #[allow(deprecated)]
    pub(crate) fn from_proto(m: &route_pb::HeaderMatcher, field: &str) -> Result<Self, Invalid> {
        use route_pb::header_matcher::HeaderMatchSpecifier as S;
        let plain = |s: &String| StringMatch::Exact(s.clone(), false);
        let value = match &m.header_match_specifier {
            Some(S::ExactMatch(s)) => HeaderValueMatch::String(plain(s)),
            Some(S::PrefixMatch(s)) => {
                HeaderValueMatch::String(StringMatch::Prefix(s.clone(), false))
            }
            Some(S::SuffixMatch(s)) => {
                HeaderValueMatch::String(StringMatch::Suffix(s.clone(), false))
            }
            Some(S::ContainsMatch(s)) => {
                HeaderValueMatch::String(StringMatch::Contains(s.clone(), false))
            }
            Some(S::SafeRegexMatch(r)) => HeaderValueMatch::String(StringMatch::Regex(
                regex_matcher(r, &format!("{field}.safe_regex_match"))?,
            )),
            Some(S::PresentMatch(p)) => HeaderValueMatch::Present(*p),
            Some(S::StringMatch(s)) => HeaderValueMatch::String(StringMatch::from_proto(
                s,
                &format!("{field}.string_match"),
            )?),
            Some(S::RangeMatch(_)) => {
                return Err(Invalid::new(
                    format!("{field}.range_match"),
                    "range_match is not supported",
                ));
            }
            // Envoy: no specifier means "header is present".
            None => HeaderValueMatch::Present(true),
        };
        if m.name.is_empty() {
            return Err(Invalid::new(
                format!("{field}.name"),
                "header name is required",
            ));
        }
        Ok(Self {
            name: m.name.to_ascii_lowercase(),
            value,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Whether the request matches, with Envoy's rules for absent headers: only presence
    /// matchers can match an absent header, whatever `invert_match` says.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        let value = req.header(&self.name);
        let value = match (value, self.treat_missing_as_empty) {
            (Some(v), _) => v,
            (None, true) => std::borrow::Cow::Borrowed(""),
            (None, false) => {
                return match self.value {
                    HeaderValueMatch::Present(present) => present == self.invert,
                    HeaderValueMatch::String(_) => false,
                };
            }
        };
        let result = match &self.value {
            HeaderValueMatch::Present(present) => *present,
            HeaderValueMatch::String(s) => s.matches(&value),
        };
        result != self.invert
    }
}

/// Envoy's `QueryParameterMatcher`; values are matched URL-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParameterMatch {
    /// The parameter name.
    pub name: String,
    /// `None`: the parameter must be present; otherwise its (first) value must match.
    pub value: Option<StringMatch>,
}

impl QueryParameterMatch {
    /// Validates a `QueryParameterMatcher` proto.
    pub(crate) fn from_proto(
        m: &route_pb::QueryParameterMatcher,
        field: &str,
    ) -> Result<Self, Invalid> {
        use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let value = match &m.query_parameter_match_specifier {
            Some(S::StringMatch(s)) => Some(StringMatch::from_proto(
                s,
                &format!("{field}.string_match"),
            )?),
            Some(S::PresentMatch(true)) => None,
            Some(S::PresentMatch(false)) => {
                return Err(Invalid::new(
                    format!("{field}.present_match"),
                    "present_match: false matches nothing in Envoy and is refused",
                ));
            }
            None => {
                return Err(Invalid::new(
                    field,
                    "a query parameter match specifier is required",
                ));
            }
        };
        Ok(Self {
            name: m.name.clone(),
            value,
        })
    }

    /// Whether the query string matches.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        let Some((_, found)) =
            form_urlencoded::parse(query.as_bytes()).find(|(k, _)| *k == self.name)
        else {
            return false;
        };
        self.value.as_ref().is_none_or(|m| m.matches(&found))
    }
}

/// The path part of a `RouteMatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// `prefix` (empty matches everything).
    Prefix(String),
    /// `path`: the path without query equals.
    Exact(String),
    /// `safe_regex` on the path without query.
    Regex(Regex),
    /// `path_separated_prefix`: equals, or continues with `/`.
    SeparatedPrefix(String),
}

impl PathMatch {
    /// Whether `req`'s path matches; `case_sensitive` applies to everything but regexes.
    pub fn matches(&self, req: &RequestHead<'_>, case_sensitive: bool) -> bool {
        let eq_prefix = |path: &str, prefix: &str| {
            path.len() >= prefix.len()
                && path.is_char_boundary(prefix.len())
                && if case_sensitive {
                    path[..prefix.len()] == *prefix
                } else {
                    path[..prefix.len()].eq_ignore_ascii_case(prefix)
                }
        };
        match self {
            Self::Prefix(prefix) => eq_prefix(req.path_and_query, prefix),
            Self::Exact(exact) => {
                let path = req.path();
                path.len() == exact.len() && eq_prefix(path, exact)
            }
            Self::Regex(r) => r.is_match(req.path()),
            Self::SeparatedPrefix(prefix) => {
                let path = req.path();
                eq_prefix(path, prefix)
                    && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
            }
        }
    }

    /// The literal prefix this match consumed, for `prefix_rewrite`.
    pub fn matched_prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix(p) | Self::SeparatedPrefix(p) => Some(p),
            Self::Exact(p) => Some(p),
            Self::Regex(_) => None,
        }
    }
}
