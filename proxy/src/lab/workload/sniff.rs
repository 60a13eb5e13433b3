//! Telling HTTP from raw bytes by a connection's first bytes, without consuming them.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long to wait for enough of a connection's first bytes to tell HTTP from raw bytes.
pub(super) const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);
/// Enough for any sane request line; longer ones are judged on their start.
pub(super) const SNIFF_LEN: usize = 512;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Longest method token accepted when sniffing (`OPTIONS`, `CONNECT`, WebDAV's `PROPPATCH`).
const MAX_METHOD_LEN: usize = 16;

/// Peeks at the first bytes until they decide the protocol. The wait for the *first* byte is
/// unbounded: the echo server never speaks first, so a client waiting for a greeting is served
/// the same either way, and a late HTTP client (say, a pre-opened pooled connection) still gets
/// HTTP. Only an undecided prefix (e.g. `GET` and a pause) is bounded by [`SNIFF_TIMEOUT`], after
/// which it is echoed.
pub(super) async fn sniff(stream: &TcpStream) -> Sniff {
    let mut buf = [0u8; SNIFF_LEN];
    let n = match stream.peek(&mut buf).await {
        Ok(n) => n,
        Err(_) => return Sniff::Raw,
    };
    let mut kind = classify(buf.get(..n).unwrap_or_default());
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    while kind == Sniff::NeedMore && tokio::time::Instant::now() < deadline {
        // peek returns at once while unread bytes sit in the queue, so poll gently.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return Sniff::Raw,
        };
        kind = classify(buf.get(..n).unwrap_or_default());
    }
    kind
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniff {
    Http,
    Raw,
    NeedMore,
}

/// Classifies a connection prefix: an HTTP/1.x request line (`METHOD SP target SP HTTP/1.d`) or
/// the h2c preface is HTTP. The version is required so that line protocols with uppercase
/// commands (`SET a b`) are still echoed.
pub(super) fn classify(prefix: &[u8]) -> Sniff {
    if prefix.is_empty() {
        return Sniff::Raw;
    }
    if prefix.starts_with(H2_PREFACE) {
        return Sniff::Http;
    }
    let method_len = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > MAX_METHOD_LEN {
        return Sniff::Raw;
    }
    match prefix.get(method_len) {
        None => return Sniff::NeedMore,
        Some(b' ') => {}
        Some(_) => return Sniff::Raw,
    }
    let rest = prefix.get(method_len + 1..).unwrap_or_default();
    let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
        // No line end yet: a full buffer of `METHOD /...` is a long URL, not a chat line.
        if prefix.len() >= SNIFF_LEN && matches!(rest.first(), Some(b'/' | b'*')) {
            return Sniff::Http;
        }
        return if rest.contains(&b'\r') {
            Sniff::Raw
        } else {
            Sniff::NeedMore
        };
    };
    let line = rest.get(..eol).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next()) else {
        return Sniff::Raw;
    };
    let version_ok = matches!(version, b"HTTP/1.0" | b"HTTP/1.1");
    if !target.is_empty() && version_ok {
        Sniff::Http
    } else {
        Sniff::Raw
    }
}
