//! The mesh protocol's frames and their encoding on a QUIC stream.
//!
//! One bidirectional stream per connection: the client sends [`Hello`], the server answers with a
//! [`ServerFrame::Snapshot`] or the [`ServerFrame::Delta`]s since the client's revision, then
//! streams deltas as its state changes. Each frame is a 4-byte big-endian length and that many
//! bytes of JSON. JSON rather than postcard: it needs no new dependency, a captured frame is
//! readable, and unknown fields added later are skipped by older peers; the sync benchmark
//! reports its size on the wire.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cluster::ClusterId;
use super::state::{Delta, MeshState};

/// ALPN of the mesh protocol, version 1.
pub const ALPN: &[u8] = b"strait-mesh/1";
/// Largest frame accepted: a snapshot of 5,000 services × 10 endpoints and 10,000 pods is ~10 MB.
pub const MAX_FRAME: usize = 256 << 20;

/// What the client says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The connecting cluster; must match its certificate.
    pub cluster: ClusterId,
    /// The server cluster the client means to reach.
    pub server: String,
    /// `(epoch, revision)` of the state the client holds from this server, if any.
    pub have: Option<(u64, u64)>,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrame {
    /// The whole state: replaces whatever the client held.
    Snapshot(MeshState),
    /// The changes from the revision the client holds to the next one.
    Delta(Delta),
    /// The server will not serve this client; the reason is for the client's status.
    Refused { reason: String },
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("mesh stream: write")]
    Write(#[from] quinn::WriteError),
    #[error("mesh stream: read")]
    Read(#[from] quinn::ReadExactError),
    #[error("mesh stream: frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge { len: usize },
    #[error("mesh stream: decode {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("mesh stream: encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Encodes `frame` as a length-prefixed JSON frame.
pub fn encode<T: Serialize>(what: &'static str, frame: &T) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, frame).map_err(|source| WireError::Encode { what, source })?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge { len });
    }
    let len = u32::try_from(len).map_err(|_| WireError::TooLarge { len })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Writes an encoded frame; returns the bytes written.
pub async fn write(send: &mut quinn::SendStream, frame: &[u8]) -> Result<usize, WireError> {
    send.write_all(frame).await?;
    Ok(frame.len())
}

/// Reads one frame; returns it and the bytes it took on the stream.
pub async fn read<T: DeserializeOwned>(
    what: &'static str,
    recv: &mut quinn::RecvStream,
) -> Result<(T, usize), WireError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge { len });
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await?;
    let frame =
        serde_json::from_slice(&buf).map_err(|source| WireError::Decode { what, source })?;
    Ok((frame, len + 4))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_carry_their_length_and_round_trip() {
        let hello = Hello {
            cluster: ClusterId::new("c1", 1).unwrap(),
            server: "c2".into(),
            have: Some((9, 4)),
        };
        let buf = encode("hello", &hello).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let back: Hello = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(back, hello);
        let refused = ServerFrame::Refused {
            reason: "no".into(),
        };
        let buf = encode("frame", &refused).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[4..]).unwrap(),
            r#"{"refused":{"reason":"no"}}"#
        );
    }
}
