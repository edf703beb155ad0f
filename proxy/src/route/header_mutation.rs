//! Header add/set/remove as Envoy's `request_headers_to_add`/`_to_remove` (and the response
//! equivalents) at route, virtual host and route configuration level, with `append_action`.
//!
//! Values are literal: Envoy's `%...%` substitution formatters are refused at config time rather
//! than forwarded verbatim.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use xds_proto::envoy::config::core::v3 as core_pb;

use super::Invalid;

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Add another value, or the header if absent (Envoy's default).
    AppendIfExistsOrAdd,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace every existing value, or add.
    OverwriteIfExistsOrAdd,
    /// Replace only if present.
    OverwriteIfExists,
}

/// One header to add.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderToAdd {
    /// Header name (lower case).
    pub name: HeaderName,
    /// Header value.
    pub value: HeaderValue,
    /// What to do when the header exists.
    pub action: AppendAction,
}

/// Removals then additions for one level of config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderMutation {
    /// Headers removed first.
    pub remove: Vec<HeaderName>,
    /// Headers added after removal, in order.
    pub add: Vec<HeaderToAdd>,
}

impl HeaderMutation {
    /// Validates one level's `*_headers_to_add` and `*_headers_to_remove`.
    #[allow(deprecated)]
    pub(crate) fn from_proto(
        add: &[core_pb::HeaderValueOption],
        remove: &[String],
        field: &str,
    ) -> Result<Self, Invalid> {
        use core_pb::header_value_option::HeaderAppendAction as A;
        let mut mutation = Self::default();
        for (i, name) in remove.iter().enumerate() {
            let field = format!("{field}_headers_to_remove[{i}]");
            mutation.remove.push(header_name(name, &field)?);
        }
        for (i, option) in add.iter().enumerate() {
            let field = format!("{field}_headers_to_add[{i}]");
            let Some(header) = &option.header else {
                return Err(Invalid::new(
                    format!("{field}.header"),
                    "header is required",
                ));
            };
            let name = header_name(&header.key, &format!("{field}.header.key"))?;
            let raw: &[u8] = if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                &header.raw_value
            };
            if raw.contains(&b'%') {
                return Err(Invalid::new(
                    format!("{field}.header.value"),
                    "header value formatters (%...%) are not implemented",
                ));
            }
            if raw.is_empty() && !option.keep_empty_value {
                continue;
            }
            let value = HeaderValue::from_bytes(raw).map_err(|_| {
                Invalid::new(format!("{field}.header.value"), "not a valid header value")
            })?;
            let action = match option.append {
                Some(append) if option.append_action != A::AppendIfExistsOrAdd as i32 => {
                    let _ = append;
                    return Err(Invalid::new(
                        format!("{field}.append"),
                        "append and append_action cannot both be set",
                    ));
                }
                Some(append) if append.value => AppendAction::AppendIfExistsOrAdd,
                Some(_) => AppendAction::OverwriteIfExistsOrAdd,
                None => match A::try_from(option.append_action) {
                    Ok(A::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
                    Ok(A::AddIfAbsent) => AppendAction::AddIfAbsent,
                    Ok(A::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
                    Ok(A::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                    Err(_) => {
                        return Err(Invalid::new(
                            format!("{field}.append_action"),
                            "unknown append action",
                        ));
                    }
                },
            };
            mutation.add.push(HeaderToAdd {
                name,
                value,
                action,
            });
        }
        Ok(mutation)
    }

    /// Whether this level changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Applies removals, then additions.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for h in &self.add {
            match h.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(h.name.clone(), h.value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(h.name.clone(), h.value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
            }
        }
    }
}

/// A header name that config may touch: not a pseudo-header and not `host` (Envoy refuses both;
/// authority changes go through `host_rewrite_*`).
fn header_name(name: &str, field: &str) -> Result<HeaderName, Invalid> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(Invalid::new(field, format!("{name:?} cannot be modified")));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Invalid::new(field, format!("{name:?} is not a valid header name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::envoy::config::core::v3::{HeaderValue as PbValue, HeaderValueOption};

    fn opt(key: &str, value: &str, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn append_actions_follow_envoy() {
        let m = HeaderMutation::from_proto(
            &[
                opt("x-append", "b", 0),
                opt("x-absent", "new", 1),
                opt("x-present", "new", 1),
                opt("x-over", "new", 2),
                opt("x-only-if", "new", 3),
                opt("x-empty", "", 0),
            ],
            &["x-gone".into()],
            "request",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-append", HeaderValue::from_static("a"));
        h.insert("x-present", HeaderValue::from_static("old"));
        h.insert("x-over", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("old"));
        m.apply(&mut h);
        let all: Vec<_> = h.get_all("x-append").iter().collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(h["x-absent"], "new");
        assert_eq!(h["x-present"], "old");
        assert_eq!(h["x-over"], "new");
        assert!(h.get("x-only-if").is_none());
        assert!(h.get("x-empty").is_none());
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn refuses_pseudo_headers_and_formatters() {
        let e = HeaderMutation::from_proto(&[opt(":path", "/x", 0)], &[], "request").unwrap_err();
        assert_eq!(e.field, "request_headers_to_add[0].header.key");
        let e = HeaderMutation::from_proto(
            &[opt("x-a", "%DOWNSTREAM_REMOTE_ADDRESS%", 0)],
            &[],
            "response",
        )
        .unwrap_err();
        assert!(e.reason.contains("formatters"), "{e:?}");
    }
}
