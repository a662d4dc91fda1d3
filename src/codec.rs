//! How SQLite and Redis turn values into bytes.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// The encoding of stored values on the SQLite and Redis backends.
///
/// The memory backend stores `V` itself and never encodes. The default is
/// JSON, so data stays readable in `sqlite3`, `redis-cli` and other languages.
///
/// ```
/// use livedict::Codec;
/// let bytes = Codec::Json.encode("k", &vec![1, 2]).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// let back: Vec<i32> = Codec::Json.decode("k", &bytes).unwrap();
/// assert_eq!(back, vec![1, 2]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via `serde_json` (the default).
    #[default]
    Json,
    /// MessagePack via `rmp-serde` (cargo feature `msgpack`).
    #[cfg(feature = "msgpack")]
    MessagePack,
}

impl Codec {
    /// Encodes `value`, stored under `key` (used in the error).
    pub fn encode<V: Serialize>(&self, key: &str, value: &V) -> Result<Vec<u8>> {
        let encoded = match self {
            Codec::Json => serde_json::to_vec(value).map_err(boxed),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(boxed),
        };
        encoded.map_err(|source| Error::Encode { key: key.to_owned(), source })
    }

    /// Encodes `value` after `prefix` (a backend's header) in one buffer.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn encode_after<V: Serialize>(&self, key: &str, value: &V, prefix: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(prefix.len() + 64);
        out.extend_from_slice(prefix);
        let encoded = match self {
            Codec::Json => serde_json::to_writer(&mut out, value).map_err(boxed),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::encode::write_named(&mut out, value).map_err(boxed),
        };
        encoded.map(|()| out).map_err(|source| Error::Encode { key: key.to_owned(), source })
    }

    /// Decodes bytes stored under `key`; failure is [`Error::Decode`].
    pub fn decode<V: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<V> {
        let decoded = match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(boxed),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(boxed),
        };
        decoded.map_err(|source| Error::Decode { key: key.to_owned(), source })
    }

    /// Parses a codec name as used in URLs (`json`, `msgpack`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Codec::Json),
            #[cfg(feature = "msgpack")]
            "msgpack" | "messagepack" => Some(Codec::MessagePack),
            _ => None,
        }
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}
