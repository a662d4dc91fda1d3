//! Values the codec cannot round-trip are refused at `set`: no acknowledged
//! write that cannot be read back. The memory backend stores `V` itself and
//! never encodes, so there every value is stored as given.

mod support;

use std::collections::HashMap;
use std::error::Error as _;
use std::time::Duration;

use livedict::{Error, LiveDict};
use serde::{Deserialize, Serialize};
use support::Kind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    at: Position,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Position {
    lat: f64,
    lon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    value: f64,
    error: Option<f32>,
}

fn reading(lat: f64, value: f64, error: f32) -> Reading {
    Reading {
        sensor: "s1".into(),
        at: Position { lat, lon: 13.4 },
        samples: vec![Sample { value: 1.0, error: None }, Sample { value, error: Some(error) }],
    }
}

/// A validated type whose invariant (at most 100) its constructor does not
/// enforce: `Serialize` writes any `u8`, `Deserialize` rejects more than 100.
/// Such values encode fine and fail every read, unless `verify_codec` is on.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Percent(u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        if n <= 100 { Ok(Percent(n)) } else { Err(serde::de::Error::custom(format!("{n} is over 100"))) }
    }
}

/// The codec's message inside an `Encode` error for `key`.
fn encode_error(r: livedict::Result<()>, key: &str) -> String {
    match r {
        Err(Error::Encode { key: k, .. }) if k != key => panic!("Encode names key {k}, expected {key}"),
        Err(e @ Error::Encode { .. }) => e.source().expect("Encode has a source").to_string(),
        other => panic!("{key}: expected Encode, got {other:?}"),
    }
}

fn with_option(url: &str, option: &str) -> String {
    if url.contains('?') { format!("{url}&{option}") } else { format!("{url}?{option}") }
}

for_each_backend! {
    async fn non_finite_floats_are_encode_errors_and_write_nothing(h: Harness) {
        let d = h.open::<Reading>().await;
        let good = reading(52.5, 2.0, 0.1);
        d.set("k", good.clone()).await.unwrap();
        let bad = [
            ("NaN", reading(f64::NAN, 2.0, 0.1)),
            ("+inf", reading(52.5, f64::INFINITY, 0.1)),
            ("-inf", reading(52.5, 2.0, f32::NEG_INFINITY)),
        ];
        for (name, value) in bad {
            let r = d.set("k", value.clone()).await;
            if h.kind == Kind::Memory {
                r.unwrap();
                let back = d.get("k").await.unwrap().unwrap();
                assert_eq!(format!("{back:?}"), format!("{value:?}"), "memory stores the value itself");
                d.set("k", good.clone()).await.unwrap();
                continue;
            }
            let message = encode_error(r, "k");
            assert_eq!(message, format!("non-finite float ({name}) cannot be stored as JSON"));
            // The previous value stays, also as seen by another handle.
            assert_eq!(d.get("k").await.unwrap(), Some(good.clone()), "{name}: previous value changed");
            assert_eq!(h.open::<Reading>().await.get("k").await.unwrap(), Some(good.clone()));
            // A never-set key stays missing, with and without a TTL.
            assert!(encode_error(d.set("fresh", value.clone()).await, "fresh").contains(name));
            let ttl = Duration::from_secs(60);
            assert!(encode_error(d.set_with_ttl("fresh", value.clone(), ttl).await, "fresh").contains(name));
            assert_eq!(d.get("fresh").await.unwrap(), None);
            assert!(!d.exists("fresh").await.unwrap());
        }
        if h.kind != Kind::Memory {
            assert_eq!(d.keys().await.unwrap(), vec!["k".to_owned()]);
            assert_eq!(d.len().await.unwrap(), 1);
            assert_eq!(d.ttl("k").await.unwrap(), None, "a refused TTL'd set left a deadline");
        }
    }

    async fn maps_with_non_string_keys_are_encode_errors_and_write_nothing(h: Harness) {
        let d = h.open::<HashMap<(u8, u8), u32>>().await;
        d.set("k", HashMap::new()).await.unwrap(); // `{}` is fine
        let tuple_keyed: HashMap<(u8, u8), u32> = [((1, 2), 3)].into();
        let r = d.set("k", tuple_keyed.clone()).await;
        if h.kind == Kind::Memory {
            r.unwrap();
            assert_eq!(d.get("k").await.unwrap(), Some(tuple_keyed));
            return;
        }
        assert!(encode_error(r, "k").contains("key must be a string"));
        assert_eq!(d.get("k").await.unwrap(), Some(HashMap::new()));
        assert!(matches!(d.set("fresh", tuple_keyed).await, Err(Error::Encode { .. })));
        assert_eq!(d.get("fresh").await.unwrap(), None);
    }

    async fn verify_codec_refuses_values_that_do_not_round_trip(h: Harness) {
        // Without the option such a value is stored, and every read of it fails:
        // the reason the option exists.
        let plain = h.open::<Percent>().await;
        plain.set("unchecked", Percent(150)).await.unwrap();
        match plain.get("unchecked").await {
            Ok(v) => assert_eq!((h.kind, v), (Kind::Memory, Some(Percent(150)))),
            Err(Error::Decode { key, .. }) => assert_eq!(key, "unchecked"),
            Err(e) => panic!("expected Decode, got {e:?}"),
        }

        // With it, through the builder and (SQLite, Redis) through the URL.
        let mut stores = vec![h.builder::<Percent>().verify_codec(true).build().await.unwrap()];
        if h.kind != Kind::Memory {
            stores.push(LiveDict::open(&with_option(h.url(), "verify_codec=true")).await.unwrap());
        }
        for (i, d) in stores.iter().enumerate() {
            let key = format!("k{i}");
            d.set(&key, Percent(50)).await.unwrap();
            let r = d.set(&key, Percent(150)).await;
            let fresh = format!("fresh{i}");
            let r_fresh = d.set(&fresh, Percent(101)).await;
            if h.kind == Kind::Memory {
                r.unwrap();
                r_fresh.unwrap();
                continue;
            }
            let message = encode_error(r, &key);
            assert!(message.contains("does not round-trip") && message.contains("150 is over 100"), "{message}");
            assert_eq!(d.get(&key).await.unwrap(), Some(Percent(50)), "previous value changed");
            assert!(matches!(r_fresh, Err(Error::Encode { .. })), "{r_fresh:?}");
            assert_eq!(d.get(&fresh).await.unwrap(), None);
            // What round-trips is stored as usual, and non-finite floats stay refused.
            d.set(&key, Percent(100)).await.unwrap();
            assert_eq!(d.get(&key).await.unwrap(), Some(Percent(100)));
        }
        if h.kind != Kind::Memory {
            let f = LiveDict::<f64>::open(&with_option(h.url(), "verify_codec=true")).await.unwrap();
            assert!(encode_error(f.set("nan", f64::NAN).await, "nan").contains("NaN"));
            f.set("pi", 3.25).await.unwrap();
            assert_eq!(f.get("pi").await.unwrap(), Some(3.25));

            // The option's values are those of other bool options.
            let off = LiveDict::<Percent>::open(&with_option(h.url(), "verify_codec=false")).await.unwrap();
            off.set("off", Percent(150)).await.unwrap();
            for bad in ["verify_codec=maybe", "verify_codec=", "verify_codec=1"] {
                let err = LiveDict::<Percent>::open(&with_option(h.url(), bad)).await.unwrap_err();
                assert!(
                    matches!(err, Error::InvalidUrl { ref reason, .. } if reason.contains("verify_codec")),
                    "{bad}: {err}"
                );
            }
        }
    }
}
