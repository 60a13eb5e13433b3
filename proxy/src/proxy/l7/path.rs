//! Request-path normalisation before HTTP rules are judged, as Envoy does for Cilium and Istio
//! (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`). The normalised path
//! is what the rules match and what the backend receives, so both name the same resource.
//!
//! In order, on the path (the query after the first `?` is kept byte for byte):
//! 1. percent-encodings of unreserved characters (RFC 3986 section 2.3: ALPHA, DIGIT, `-`, `.`,
//!    `_`, `~`) are decoded, other encodings keep their encoding with upper-case hex digits
//!    (section 6.2.2.1); `%2F`, `%5C` and a raw `\` follow [`EscapedSlashes`];
//! 2. repeated slashes are merged;
//! 3. dot segments are removed (section 5.2.4), clamped at the root.
//!
//! Decoding comes first so that `/public/%2e%2e/private` is `/private`, as a backend that
//! decodes before resolving would read it. Whatever cannot be made unambiguous is an error,
//! answered with `400 Bad Request`: a broken percent-encoding, a control character (raw or
//! encoded), a non-ASCII byte, a path not starting with `/`.

use crate::config::EscapedSlashes;

/// How [`normalize_path`] treats what the agent configuration decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Treatment of `%2F`, `%5C` and `\`.
    pub escaped_slashes: EscapedSlashes,
}

/// Why a request path cannot be made unambiguous; the request is answered with `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path does not start with `/`")]
    NotOriginForm,
    #[error("request path: invalid percent-encoding at byte {at}")]
    InvalidPercentEncoding { at: usize },
    #[error("request path: encoded slash or backslash at byte {at}")]
    EscapedSlash { at: usize },
    #[error("request path: backslash at byte {at}")]
    Backslash { at: usize },
    #[error("request path: control character at byte {at}")]
    ControlCharacter { at: usize },
    #[error("request path: non-ASCII byte at byte {at}")]
    NonAscii { at: usize },
    /// The normalised target is not a valid URI (never expected: it only loses characters).
    #[error("normalised request path cannot be forwarded")]
    Unforwardable,
}

/// Normalises a request target in origin form (`/path?query`); `*` (asterisk form) and an empty
/// target (which RFC 9112 section 3.2.1 sends as `/`) are accepted too.
pub fn normalize_path(raw: &str, options: PathOptions) -> Result<String, PathError> {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if raw == "*" {
        return Ok(raw.to_string());
    }
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(path, options.escaped_slashes)?;
    let mut out = remove_dot_segments(&decoded);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Step 1: decodes unreserved characters, canonicalises the other encodings, applies the
/// escaped-slash option and refuses what has no single reading.
fn decode(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let at = i;
        let c = bytes[i];
        i += 1;
        match c {
            b'%' => {
                let digit = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
                let (Some(hi), Some(lo)) = (digit(at + 1), digit(at + 2)) else {
                    return Err(PathError::InvalidPercentEncoding { at });
                };
                i += 2;
                // Both digits are below 16, so the byte fits.
                let v = u8::try_from(hi << 4 | lo).unwrap_or(u8::MAX);
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(v));
                } else if matches!(v, b'/' | b'\\') {
                    match slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash { at }),
                        EscapedSlashes::Decode => out.push('/'),
                        EscapedSlashes::Keep => push_encoded(&mut out, v, HEX),
                    }
                } else if v.is_ascii_control() {
                    return Err(PathError::ControlCharacter { at });
                } else {
                    push_encoded(&mut out, v, HEX);
                }
            }
            b'\\' => match slashes {
                EscapedSlashes::Reject => return Err(PathError::Backslash { at }),
                EscapedSlashes::Decode => out.push('/'),
                EscapedSlashes::Keep => out.push('\\'),
            },
            c if c.is_ascii_control() => return Err(PathError::ControlCharacter { at }),
            c if !c.is_ascii() => return Err(PathError::NonAscii { at }),
            c => out.push(char::from(c)),
        }
    }
    Ok(out)
}

fn push_encoded(out: &mut String, v: u8, hex: &[u8; 16]) {
    out.push('%');
    out.push(char::from(hex[usize::from(v >> 4)]));
    out.push(char::from(hex[usize::from(v & 0xf)]));
}

/// Steps 2 and 3 on a path starting with `/`: empty segments (repeated slashes) and `.` go,
/// `..` takes the segment before it (none above the root). A path ending in a dot segment or a
/// slash keeps its trailing slash, as RFC 3986 section 5.2.4 leaves `/a/b/..` as `/a/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if kept.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECT: PathOptions = PathOptions {
        escaped_slashes: EscapedSlashes::Reject,
    };
    const KEEP: PathOptions = PathOptions {
        escaped_slashes: EscapedSlashes::Keep,
    };
    const DECODE: PathOptions = PathOptions {
        escaped_slashes: EscapedSlashes::Decode,
    };

    #[test]
    fn table() {
        use PathError::*;
        let cases: &[(&str, PathOptions, Result<&str, PathError>)] = &[
            // Already normal.
            ("/", REJECT, Ok("/")),
            ("/public/x", REJECT, Ok("/public/x")),
            ("/public/", REJECT, Ok("/public/")),
            ("", REJECT, Ok("/")),
            ("*", REJECT, Ok("*")),
            // Dot segments (RFC 3986 section 5.2.4), clamped at the root.
            ("/public/../private", REJECT, Ok("/private")),
            ("/public/./x", REJECT, Ok("/public/x")),
            ("/./public", REJECT, Ok("/public")),
            ("/a/b/..", REJECT, Ok("/a/")),
            ("/a/b/.", REJECT, Ok("/a/b/")),
            ("/a/b/../../..", REJECT, Ok("/")),
            ("/../../etc/passwd", REJECT, Ok("/etc/passwd")),
            ("/..", REJECT, Ok("/")),
            ("/a/..b/c", REJECT, Ok("/a/..b/c")),
            ("/a/.../b", REJECT, Ok("/a/.../b")),
            // Encoded dots are unreserved: decoded before dot segments are removed.
            ("/public/%2e%2e/private", REJECT, Ok("/private")),
            ("/public/%2E%2e/private", REJECT, Ok("/private")),
            ("/public/.%2E/private", REJECT, Ok("/private")),
            ("/public/%2e/x", REJECT, Ok("/public/x")),
            // Repeated slashes merge (before dot segments, as nginx reads them).
            ("//public//x", REJECT, Ok("/public/x")),
            ("/public///", REJECT, Ok("/public/")),
            ("/a//../b", REJECT, Ok("/b")),
            // Unreserved encodings decode; reserved ones stay encoded, hex in upper case.
            ("/%41%62c", REJECT, Ok("/Abc")),
            ("/%7e%2D%5f", REJECT, Ok("/~-_")),
            ("/a%3Fb", REJECT, Ok("/a%3Fb")),
            ("/a%3fb", REJECT, Ok("/a%3Fb")),
            ("/a%20b", REJECT, Ok("/a%20b")),
            ("/%252e%252e/x", REJECT, Ok("/%252e%252e/x")),
            ("/caf%c3%a9", REJECT, Ok("/caf%C3%A9")),
            // The query is kept as sent, even what would be normalised in a path.
            ("/public/../x?a=/../b&c=%2f", REJECT, Ok("/x?a=/../b&c=%2f")),
            ("/p?", REJECT, Ok("/p?")),
            ("?q", REJECT, Ok("/?q")),
            // Encoded slashes and backslashes: rejected by default.
            ("/public/..%2fprivate", REJECT, Err(EscapedSlash { at: 10 })),
            ("/a%2Fb", REJECT, Err(EscapedSlash { at: 2 })),
            ("/a%5cb", REJECT, Err(EscapedSlash { at: 2 })),
            ("/a\\b", REJECT, Err(Backslash { at: 2 })),
            // ... kept as sent (encoding canonicalised) ...
            ("/public/..%2fprivate", KEEP, Ok("/public/..%2Fprivate")),
            ("/a%5cb/..", KEEP, Ok("/")),
            ("/a\\..\\b", KEEP, Ok("/a\\..\\b")),
            // ... or decoded to `/` before dot segments are removed.
            ("/public/..%2fprivate", DECODE, Ok("/private")),
            ("/public/..%5Cprivate", DECODE, Ok("/private")),
            ("/public\\..\\private", DECODE, Ok("/private")),
            ("/a%2F%2Fb", DECODE, Ok("/a/b")),
            // What has no single reading.
            ("/a%zz", REJECT, Err(InvalidPercentEncoding { at: 2 })),
            ("/a%4", REJECT, Err(InvalidPercentEncoding { at: 2 })),
            ("/a%", REJECT, Err(InvalidPercentEncoding { at: 2 })),
            ("/a%%41", REJECT, Err(InvalidPercentEncoding { at: 2 })),
            ("/a%00b", REJECT, Err(ControlCharacter { at: 2 })),
            ("/a%0Ab", KEEP, Err(ControlCharacter { at: 2 })),
            ("/a%7f", REJECT, Err(ControlCharacter { at: 2 })),
            ("/a\u{0}b", REJECT, Err(ControlCharacter { at: 2 })),
            ("/a\tb", REJECT, Err(ControlCharacter { at: 2 })),
            ("/café", REJECT, Err(NonAscii { at: 4 })),
            ("public/x", REJECT, Err(NotOriginForm)),
            ("http://h/x", REJECT, Err(NotOriginForm)),
        ];
        let mut failures = Vec::new();
        for (raw, options, want) in cases {
            let got = normalize_path(raw, *options);
            if got.as_deref().map_err(Clone::clone) != *want {
                failures.push(format!(
                    "{raw:?} ({:?}): got {got:?}, want {want:?}",
                    options.escaped_slashes
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in [
            "/public/%2e%2e/private",
            "//a/./b/../c/",
            "/a%3fb%41",
            "/x/../../y?q=/../",
        ] {
            let once = normalize_path(raw, REJECT).expect("valid");
            assert_eq!(normalize_path(&once, REJECT).as_ref(), Ok(&once), "{raw}");
        }
    }
}
