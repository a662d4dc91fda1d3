//! How SQLite and Redis turn values into bytes.

mod json;

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// The encoding of stored values on the SQLite and Redis backends.
///
/// The memory backend stores `V` itself and never encodes. The default is
/// JSON, so data stays readable in `sqlite3`, `redis-cli` and other languages.
///
/// JSON has no NaN or infinity: the JSON codec refuses a value holding a
/// non-finite `f32`/`f64` (anywhere in it) with [`Error::Encode`] instead of
/// writing `null`, which would not read back. MessagePack stores them.
///
/// ```
/// use livedict::Codec;
/// let bytes = Codec::Json.encode("k", &vec![1, 2]).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// let back: Vec<i32> = Codec::Json.decode("k", &bytes).unwrap();
/// assert_eq!(back, vec![1, 2]);
///
/// let refused = Codec::Json.encode("k", &vec![1.0, f64::NAN]).unwrap_err();
/// assert!(matches!(refused, livedict::Error::Encode { .. }));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via `serde_json` (the default).
    #[default]
    Json,
    /// MessagePack via `rmp-serde` (cargo feature `msgpack`).
    #[cfg(feature = "msgpack")]
    #[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
    MessagePack,
}

impl Codec {
    /// Encodes `value`, stored under `key` (used in the error). A value the
    /// codec cannot represent (e.g. a NaN or infinity under JSON) is
    /// [`Error::Encode`].
    pub fn encode<V: Serialize>(&self, key: &str, value: &V) -> Result<Vec<u8>> {
        let encoded = match self {
            Codec::Json => json::to_vec(value).map_err(boxed),
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
            Codec::Json => json::to_writer(&mut out, value).map_err(boxed),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::encode::write_named(&mut out, value).map_err(boxed),
        };
        encoded.map(|()| out).map_err(|source| Error::Encode { key: key.to_owned(), source })
    }

    /// Decodes bytes stored under `key`; failure is [`Error::Decode`].
    pub fn decode<V: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<V> {
        self.decode_raw(bytes).map_err(|source| Error::Decode { key: key.to_owned(), source })
    }

    /// The value of an expired entry, for its event: `None` (logged) if it
    /// does not decode, so the expiration is still reported.
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn decode_expired<V: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<V> {
        match self.decode(key, bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key, error = %e, "expired value does not decode; reported without it");
                None
            }
        }
    }

    fn decode_raw<V: DeserializeOwned>(&self, bytes: &[u8]) -> std::result::Result<V, BoxError> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(boxed),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(boxed),
        }
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

/// How a backend encodes the values it writes: its codec, and whether each
/// encoded value is decoded once (into `V`) before it is written — the
/// `verify_codec` option of the SQLite and Redis backends.
///
/// The check catches any `Serialize` output its own `Deserialize` rejects
/// (not only what the codec refuses while encoding) before it is acknowledged
/// and becomes an [`Error::Decode`] on every later read; it costs one decode
/// per write, in the caller's task.
#[cfg(any(feature = "sqlite", feature = "redis"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoder {
    codec: Codec,
    verify: bool,
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
impl Encoder {
    /// Encodes with `codec`; with `verify`, checks each value decodes back.
    pub(crate) fn new(codec: Codec, verify: bool) -> Self {
        Encoder { codec, verify }
    }

    /// [`Codec::encode`], then the round-trip check if on.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn encode<V: Serialize + DeserializeOwned>(&self, key: &str, value: &V) -> Result<Vec<u8>> {
        let bytes = self.codec.encode(key, value)?;
        self.check::<V>(key, &bytes)?;
        Ok(bytes)
    }

    /// [`Codec::encode_after`], then the round-trip check (of the bytes after `prefix`) if on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn encode_after<V: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: &V,
        prefix: &[u8],
    ) -> Result<Vec<u8>> {
        let bytes = self.codec.encode_after(key, value, prefix)?;
        self.check::<V>(key, &bytes[prefix.len()..])?;
        Ok(bytes)
    }

    /// With `verify`: `bytes` must decode into a `V`, else [`Error::Encode`].
    #[inline]
    fn check<V: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<()> {
        if !self.verify {
            return Ok(());
        }
        match self.codec.decode_raw::<V>(bytes) {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Encode { key: key.to_owned(), source: Box::new(RoundTrip(e)) }),
        }
    }
}

/// Why `verify_codec` refused a value: its encoding does not decode back.
#[cfg(any(feature = "sqlite", feature = "redis"))]
#[derive(Debug)]
struct RoundTrip(BoxError);

#[cfg(any(feature = "sqlite", feature = "redis"))]
impl std::fmt::Display for RoundTrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the value does not round-trip through the codec (verify_codec): decoding it back fails: {}",
            self.0
        )
    }
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
impl std::error::Error for RoundTrip {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Reading {
        name: String,
        at: Point,
        history: Vec<f64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: f64,
        y: f32,
    }

    fn reading(x: f64) -> Reading {
        Reading { name: "r".into(), at: Point { x: 1.0, y: 2.0 }, history: vec![0.5, x] }
    }

    /// Serializes as a string its own `Deserialize` (a number) rejects.
    #[derive(Debug, Clone, PartialEq)]
    struct Lopsided;

    impl Serialize for Lopsided {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_str("lopsided")
        }
    }

    impl<'de> Deserialize<'de> for Lopsided {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            u8::deserialize(d).map(|_| Lopsided)
        }
    }

    fn encode_error_message(e: Error, key: &str) -> String {
        match e {
            Error::Encode { key: k, source } => {
                assert_eq!(k, key);
                source.to_string()
            }
            other => panic!("expected Encode, got {other:?}"),
        }
    }

    #[test]
    fn json_refuses_non_finite_floats_in_encode_and_encode_after() {
        for (x, name) in [(f64::NAN, "NaN"), (f64::INFINITY, "+inf"), (f64::NEG_INFINITY, "-inf")] {
            let expected = format!("non-finite float ({name}) cannot be stored as JSON");
            let e = Codec::Json.encode("k", &reading(x)).unwrap_err();
            assert_eq!(encode_error_message(e, "k"), expected);
            let e = Codec::Json.encode_after("k2", &reading(x), b"~").unwrap_err();
            assert_eq!(encode_error_message(e, "k2"), expected);
        }
        let fine = Codec::Json.encode_after("k", &reading(3.25), b"~").unwrap();
        assert_eq!(fine[0], b'~');
        assert_eq!(&fine[1..], serde_json::to_vec(&reading(3.25)).unwrap());
        assert_eq!(Codec::Json.decode::<Reading>("k", &fine[1..]).unwrap(), reading(3.25));
    }

    #[test]
    fn json_refuses_maps_with_non_string_keys() {
        let map: HashMap<(u8, u8), u32> = [((1, 2), 3)].into();
        let e = Codec::Json.encode("m", &map).unwrap_err();
        assert!(encode_error_message(e, "m").contains("key must be a string"));
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_stores_non_finite_floats() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let bytes = Codec::MessagePack.encode("k", &reading(x)).unwrap();
            let back: Reading = Codec::MessagePack.decode("k", &bytes).unwrap();
            let y = back.history[1];
            assert!(y.is_nan() && x.is_nan() || y == x);
        }
    }

    #[cfg(any(feature = "sqlite", feature = "redis"))]
    #[test]
    fn verify_refuses_values_that_do_not_decode_back_only_when_on() {
        let on = Encoder::new(Codec::Json, true);
        let off = Encoder::new(Codec::Json, false);
        let e = on.encode("k", &Lopsided).unwrap_err();
        let message = encode_error_message(e, "k");
        assert!(message.contains("does not round-trip"), "{message}");
        let e = on.encode_after("k", &Lopsided, b"~").unwrap_err();
        assert!(encode_error_message(e, "k").contains("does not round-trip"));
        assert_eq!(off.encode("k", &Lopsided).unwrap(), b"\"lopsided\"");
        assert_eq!(off.encode_after("k", &Lopsided, b"~").unwrap(), b"~\"lopsided\"");
        // Values that round-trip are encoded the same with or without the check.
        assert_eq!(on.encode("k", &reading(1.0)).unwrap(), off.encode("k", &reading(1.0)).unwrap());
        assert_eq!(
            on.encode_after("k", &reading(1.0), b"~").unwrap(),
            Codec::Json.encode_after("k", &reading(1.0), b"~").unwrap()
        );
        // Whatever the codec refuses is refused either way.
        assert!(matches!(on.encode("k", &reading(f64::NAN)), Err(Error::Encode { .. })));
        assert!(matches!(off.encode("k", &reading(f64::NAN)), Err(Error::Encode { .. })));
    }
}
