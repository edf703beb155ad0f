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
    use super::normalize;

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
