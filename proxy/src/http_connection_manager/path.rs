//! `normalize_path`: the request path made canonical before routing, so `/a/../admin` cannot
//! slip past a route meant for `/admin`. RFC 3986 dot-segment removal, `\` read as `/`, and
//! percent-encoded unreserved characters decoded (as Envoy's Chromium-derived canonicalizer).

/// The canonical form of `path_and_query` (the query is left untouched); `None` when the path is
/// not absolute (Envoy answers 400).
pub fn normalize(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = path.replace('\\', "/");
    if !path.starts_with('/') {
        return None;
    }
    let decoded = decode_unreserved(&path);
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut normalized = String::with_capacity(path_and_query.len());
    for segment in &out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() || (trailing_slash && !normalized.ends_with('/')) {
        normalized.push('/');
    }
    if let Some(q) = query {
        normalized.push('?');
        normalized.push_str(q);
    }
    Some(normalized)
}

/// `path_with_escaped_slashes_action`: what to do with `%2F` and `%5C` in the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Leave them (`KEEP_UNCHANGED`, and Envoy's implementation-specific default).
    KeepUnchanged,
    /// Answer 400 (`REJECT_REQUEST`).
    RejectRequest,
    /// Decode them to `/` and `\` before the other steps (`UNESCAPE_AND_FORWARD`).
    UnescapeAndForward,
}

/// The HCM's path handling, in Envoy's order: escaped slashes, then `normalize_path`, then
/// `merge_slashes`. `Ok(None)`: the path is unchanged; `Err(())`: answer 400.
#[allow(clippy::result_unit_err)]
pub fn canonicalize(
    path_and_query: &str,
    normalize_path: bool,
    merge_slashes: bool,
    escaped: EscapedSlashes,
) -> Result<Option<String>, ()> {
    let mut current: Option<String> = None;
    if escaped != EscapedSlashes::KeepUnchanged {
        let (path, query) = split(path_and_query);
        if has_escaped_slash(path) {
            if escaped == EscapedSlashes::RejectRequest {
                return Err(());
            }
            current = Some(format!("{}{query}", unescape_slashes(path)));
        }
    }
    if normalize_path {
        current = Some(normalize(current.as_deref().unwrap_or(path_and_query)).ok_or(())?);
    }
    if merge_slashes {
        let input = current.as_deref().unwrap_or(path_and_query);
        let (path, query) = split(input);
        if path.contains("//") {
            let mut merged = String::with_capacity(input.len());
            for c in path.chars() {
                if !(c == '/' && merged.ends_with('/')) {
                    merged.push(c);
                }
            }
            merged.push_str(query);
            current = Some(merged);
        }
    }
    Ok(current)
}

/// The path and the rest (`?query`, or empty).
fn split(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    }
}

fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
            || (w[0] == b'%' && w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    })
}

fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or("");
        if escape.eq_ignore_ascii_case("%2f") {
            out.push('/');
            rest = &rest[i + 3..];
        } else if escape.eq_ignore_ascii_case("%5c") {
            out.push('\\');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Decodes `%XX` when it encodes an unreserved character (ALPHA / DIGIT / `-._~`); other
/// escapes keep their meaning and are upper-cased.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && path.is_char_boundary(i + 3) {
            let hex = &path[i + 1..i + 3];
            if let Ok(value) = u8::from_str_radix(hex, 16) {
                let c = char::from(value);
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{EscapedSlashes, canonicalize, normalize};

    #[test]
    fn escaped_slashes_and_merge_slashes_apply_in_envoys_order() {
        use EscapedSlashes::*;
        let c = |p: &str, normalize: bool, merge: bool, escaped| {
            canonicalize(p, normalize, merge, escaped)
        };
        assert_eq!(c("/a//b", false, false, KeepUnchanged), Ok(None));
        assert_eq!(c("/a%2Fb", false, false, KeepUnchanged), Ok(None));
        assert_eq!(c("/a%2fb", false, false, RejectRequest), Err(()));
        assert_eq!(c("/a%5Cb", false, false, RejectRequest), Err(()));
        assert_eq!(c("/a?x=%2F", false, false, RejectRequest), Ok(None));
        assert_eq!(
            c("/a%2F..%2Fb?q=%2F", true, false, UnescapeAndForward),
            Ok(Some("/b?q=%2F".into()))
        );
        assert_eq!(
            c("//a///b/?x=//", false, true, KeepUnchanged),
            Ok(Some("/a/b/?x=//".into()))
        );
        assert_eq!(
            c("/a%2F%2Fb", true, true, UnescapeAndForward),
            Ok(Some("/a/b".into()))
        );
        assert_eq!(
            c("/a/../b", true, false, KeepUnchanged),
            Ok(Some("/b".into()))
        );
        assert_eq!(c("relative", true, false, KeepUnchanged), Err(()));
    }

    #[test]
    fn removes_dot_segments_and_decodes_unreserved() {
        let n = |p: &str| normalize(p).unwrap_or_else(|| "<400>".into());
        assert_eq!(n("/a/../admin"), "/admin");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/%2e%2e/secret"), "/secret");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/%7euser"), "/~user");
        assert_eq!(n("\\a\\b"), "/a/b");
        assert_eq!(n("/p?x=/../y"), "/p?x=/../y");
        assert_eq!(n("/"), "/");
        assert_eq!(n("relative"), "<400>");
    }
}
