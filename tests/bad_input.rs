//! Every bad input gives its typed error, never a panic.

mod support;

use std::time::Duration;

use livedict::{Error, EventKind, LiveDict, MAX_KEY_LEN};
use support::{Collector, eventually, settle};

/// A value whose `Serialize` fails when asked to.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Unserializable(bool);

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 { Err(serde::ser::Error::custom("refuses to serialize")) } else { s.serialize_bool(false) }
    }
}

/// Raw access to the stored bytes behind a key, bypassing livedict.
mod raw {
    use super::support::{Harness, Kind};

    pub async fn overwrite(h: &Harness, key: &str, bytes: &[u8]) {
        match h.kind {
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                let c = rusqlite::Connection::open(h.url().strip_prefix("sqlite://").unwrap()).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                c.execute("UPDATE livedict SET value = ?1 WHERE key = ?2", rusqlite::params![bytes, key])
                    .unwrap();
            }
            #[cfg(feature = "redis")]
            Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
                use fred::interfaces::{ClientLike, KeysInterface};
                // The codec's bytes are corrupted; livedict's header (`~`: no deadline) stays.
                let (client, full) = redis(h, key).await;
                let stored = [b"~".as_slice(), bytes].concat();
                let _: () = client.set(full, stored, None, None, false).await.unwrap();
                let _ = client.quit().await;
            }
            _ => unreachable!("no raw access to {:?}", h.kind),
        }
    }

    pub async fn read(h: &Harness, key: &str) -> Option<Vec<u8>> {
        match h.kind {
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                use rusqlite::OptionalExtension;
                let c = rusqlite::Connection::open(h.url().strip_prefix("sqlite://").unwrap()).unwrap();
                c.query_row("SELECT value FROM livedict WHERE key = ?1", [key], |r| r.get(0))
                    .optional()
                    .unwrap()
            }
            #[cfg(feature = "redis")]
            Kind::Redis | Kind::RedisCluster | Kind::RedisSentinel => {
                use fred::interfaces::{ClientLike, KeysInterface};
                let (client, full) = redis(h, key).await;
                let v: Option<Vec<u8>> = client.get(full).await.unwrap();
                let _ = client.quit().await;
                v.map(|v| v.strip_prefix(b"~").expect("livedict header").to_vec())
            }
            _ => unreachable!("no raw access to {:?}", h.kind),
        }
    }

    #[cfg(feature = "redis")]
    async fn redis(h: &Harness, key: &str) -> (fred::clients::Client, String) {
        use fred::interfaces::ClientLike;
        let (server, ns) = h.redis_parts();
        let config = fred::types::config::Config::from_url(&h.raw_redis_url()).unwrap();
        let client = fred::types::Builder::from_config(config).build().unwrap();
        client.init().await.unwrap();
        (client, livedict::backend::RedisConfig::new(&server).namespace(&ns).value_key(key))
    }
}

for_each_backend! {
    async fn bad_keys_are_invalid_key_errors(h: Harness) {
        let d = h.open::<u32>().await;
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for key in ["", long.as_str()] {
            assert!(matches!(d.set(key, 1).await, Err(Error::InvalidKey { .. })));
            assert!(matches!(d.get(key).await, Err(Error::InvalidKey { .. })));
            assert!(matches!(d.delete(key).await, Err(Error::InvalidKey { .. })));
            assert!(matches!(d.lock(key, Duration::from_secs(1)).await, Err(Error::InvalidKey { .. })));
        }
        // The longest key and unusual characters are fine.
        let max = "y".repeat(MAX_KEY_LEN);
        for key in [max.as_str(), "nul\0inside", "ü€𝄞", "spaces and\nnewlines", "*?[glob]"] {
            d.set(key, 7).await.unwrap();
            assert_eq!(d.get(key).await.unwrap(), Some(7), "{key:?}");
        }
        let mut keys = d.keys().await.unwrap();
        keys.sort();
        assert!(keys.iter().any(|k| k == "*?[glob]"));
    }

    async fn bad_ttls_are_invalid_ttl_errors(h: Harness) {
        let d = h.open::<u32>().await;
        for ttl in [Duration::ZERO, Duration::MAX, Duration::from_secs(u64::MAX / 2), livedict::MAX_TTL + Duration::from_secs(1)] {
            assert!(matches!(d.set_with_ttl("k", 1, ttl).await, Err(Error::InvalidTtl { .. })), "{ttl:?}");
            assert!(matches!(d.expire("k", ttl).await, Err(Error::InvalidTtl { .. })), "{ttl:?}");
        }
        assert!(matches!(h.builder::<u32>().default_ttl(Duration::ZERO).build().await, Err(Error::InvalidTtl { .. })));
        // The largest accepted TTL works.
        d.set_with_ttl("k", 1, livedict::MAX_TTL).await.unwrap();
        assert!(d.ttl("k").await.unwrap().unwrap() > Duration::from_secs(3600));
    }

    async fn unknown_url_options_are_invalid_url_errors(h: Harness) {
        let url = if h.url().contains('?') { format!("{}&bogus=1", h.url()) } else { format!("{}?bogus=1", h.url()) };
        let err = LiveDict::<u32>::open(&url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { ref reason, .. } if reason.contains("bogus")), "{err}");
    }

    async fn values_that_cannot_be_encoded_are_errors(h: Harness) {
        use std::collections::HashMap;
        // JSON maps need string keys: a tuple-keyed map cannot be encoded.
        let d = h.open::<HashMap<(u8, u8), u8>>().await;
        let mut v = HashMap::new();
        v.insert((1, 2), 3);
        match d.set("k", v).await {
            Ok(()) => assert_eq!(h.kind, support::Kind::Memory, "memory stores values without encoding"),
            Err(e) => assert!(matches!(e, Error::Encode { .. }), "{e}"),
        }
    }

    async fn every_key_taking_operation_rejects_bad_keys_without_side_effects(h: Harness) {
        let d = h.open::<u32>().await;
        let seen = Collector::new();
        for kind in [EventKind::Set, EventKind::Delete, EventKind::Get] {
            d.register_callback(kind, seen.callback()).unwrap();
        }
        d.set("k", 1).await.unwrap();
        let guard = d.lock("k", Duration::from_secs(5)).await.unwrap();
        eventually("the first set event", || seen.len() == 1).await;
        let before = d.stats();
        let ttl = Duration::from_secs(60);
        // 1,025 bytes: too long even though it is only 513 characters.
        let multibyte = format!("{}a", "é".repeat(512));
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for key in ["", long.as_str(), multibyte.as_str()] {
            let bad = |what: &str, r: Result<(), Error>| {
                assert!(matches!(r, Err(Error::InvalidKey { .. })), "{what}({key:?}) gave {r:?}");
            };
            bad("set", d.set(key, 1).await);
            bad("set_with_ttl", d.set_with_ttl(key, 1, ttl).await);
            bad("get", d.get(key).await.map(drop));
            bad("delete", d.delete(key).await.map(drop));
            bad("exists", d.exists(key).await.map(drop));
            bad("ttl", d.ttl(key).await.map(drop));
            bad("expire", d.expire(key, ttl).await.map(drop));
            bad("persist", d.persist(key).await.map(drop));
            bad("lock", d.lock(key, Duration::from_millis(10)).await.map(drop));
        }
        settle().await;
        assert_eq!(d.stats(), before, "a rejected call touched the store");
        assert_eq!(seen.events(), vec![(EventKind::Set, "k".to_string(), Some(1))]);
        assert_eq!(d.keys().await.unwrap(), vec!["k".to_string()]);
        drop(guard);
        // Valid but unusual keys round-trip and stay inside this store's namespace or table.
        let max_multibyte = "é".repeat(512);
        let ns = "ld:{other}:v:escape";
        for key in [max_multibyte.as_str(), "\0", "\u{fffd}", "\u{1b}[31mred", "../../etc/passwd", ns, "'; DROP TABLE livedict; --", "%s%n", "\u{202e}rtl"] {
            d.set(key, 9).await.unwrap();
            assert_eq!(d.get(key).await.unwrap(), Some(9), "{key:?}");
            assert!(d.ttl(key).await.unwrap().is_none());
        }
        assert_eq!(d.len().await.unwrap(), 10);
        d.clear().await.unwrap();
        assert_eq!(d.len().await.unwrap(), 0);
    }

    async fn bad_ttls_on_every_ttl_taking_call_leave_the_entry_as_it_was(h: Harness) {
        let d = h.open::<u32>().await;
        d.set_with_ttl("k", 1, Duration::from_secs(600)).await.unwrap();
        let g = d.lock("k", Duration::from_secs(5)).await.unwrap();
        // Zero, the largest Duration, and ones past MAX_TTL that would overflow a deadline clock.
        let overflow = [Duration::ZERO, Duration::MAX, livedict::MAX_TTL + Duration::from_nanos(1), Duration::from_secs(u64::MAX)];
        for ttl in overflow {
            let bad = |what: &str, r: Result<(), Error>| {
                assert!(matches!(r, Err(Error::InvalidTtl { ttl: t, .. }) if t == ttl), "{what}({ttl:?}) gave {r:?}");
            };
            bad("guard.set_with_ttl", g.set_with_ttl(2, ttl).await);
            bad("guard.expire", g.expire(ttl).await.map(drop));
            bad("set_with_ttl", d.set_with_ttl("other", 2, ttl).await);
            bad("expire", d.expire("k", ttl).await.map(drop));
        }
        g.unlock().await.unwrap();
        assert_eq!(d.get("k").await.unwrap(), Some(1));
        let left = d.ttl("k").await.unwrap().unwrap();
        assert!(left > Duration::from_secs(500) && left <= Duration::from_secs(600), "{left:?}");
        assert!(!d.exists("other").await.unwrap());
    }

    async fn sub_millisecond_ttls_are_accepted_and_expire(h: Harness) {
        let d = h.open::<u32>().await;
        for (i, ttl) in [Duration::from_nanos(1), Duration::from_micros(1), Duration::from_micros(999)].into_iter().enumerate() {
            let key = format!("t{i}");
            d.set_with_ttl(&key, 1, ttl).await.unwrap();
            d.set(format!("e{i}"), 1).await.unwrap();
            d.expire(format!("e{i}"), ttl).await.unwrap();
        }
        h.pass(Duration::from_millis(5)).await;
        assert_eq!(d.len().await.unwrap(), 0, "{:?}", d.keys().await.unwrap());
    }

    async fn values_whose_serialize_fails_are_encode_errors_and_write_nothing(h: Harness) {
        let d = h.open::<Unserializable>().await;
        d.set("k", Unserializable(false)).await.unwrap();
        let r = d.set("k", Unserializable(true)).await;
        match r {
            Ok(()) => assert_eq!(h.kind, support::Kind::Memory, "memory stores values without encoding"),
            Err(Error::Encode { ref key, .. }) => {
                assert_eq!(key, "k");
                assert_eq!(d.get("k").await.unwrap(), Some(Unserializable(false)), "a failed write changed the value");
            }
            Err(e) => panic!("expected Encode, got {e:?}"),
        }
        // JSON cannot represent non-finite floats (the JSON codec refuses them, see tests/codec.rs):
        // whatever the codec does, the outcome is a typed error, never a wrong value or a panic.
        let f = h.open::<f64>().await;
        for (key, x) in [("nan", f64::NAN), ("inf", f64::INFINITY)] {
            match f.set(key, x).await {
                Err(Error::Encode { .. }) => {}
                Ok(()) => match f.get(key).await {
                    Ok(Some(y)) => assert!(y.is_nan() && x.is_nan() || y == x, "{key} read back as {y}"),
                    Err(Error::Decode { key: k, .. }) => assert_eq!(k, key),
                    other => panic!("{key}: {other:?}"),
                },
                Err(e) => panic!("{key}: {e:?}"),
            }
        }
    }

    async fn corrupt_stored_bytes_are_decode_errors_and_stay_in_place(h: Harness) {
        if h.kind == support::Kind::Memory {
            return; // memory stores `V` itself: nothing to corrupt
        }
        let d = h.open::<u32>().await;
        let corruptions: [&[u8]; 8] = [b"\xff\x00\xff", b"", b"\"text\"", b"{", b"1e999", b"-1", b"null", b"4294967296"];
        for (i, bytes) in corruptions.iter().enumerate() {
            let key = format!("c{i}");
            d.set(&key, 1).await.unwrap();
            raw::overwrite(&h, &key, bytes).await;
        }
        d.set("fine", 7).await.unwrap();
        for (i, bytes) in corruptions.iter().enumerate() {
            let key = format!("c{i}");
            for _ in 0..2 {
                let r = d.get(&key).await;
                assert!(matches!(r, Err(Error::Decode { key: ref k, .. }) if *k == key), "{bytes:?}: {r:?}");
            }
            let g = d.lock(&key, Duration::from_secs(5)).await.unwrap();
            assert!(matches!(g.get().await, Err(Error::Decode { .. })), "{bytes:?}");
            g.unlock().await.unwrap();
            assert!(d.exists(&key).await.unwrap());
            assert!(d.ttl(&key).await.unwrap().is_none());
            assert_eq!(raw::read(&h, &key).await.as_deref(), Some(*bytes), "stored bytes changed");
        }
        assert!(matches!(d.items().await, Err(Error::Decode { .. })));
        assert_eq!(d.len().await.unwrap(), corruptions.len() + 1);
        assert_eq!(d.get("fine").await.unwrap(), Some(7));
        // Overwriting or deleting corrupt data is the user's call and works.
        d.set("c0", 3).await.unwrap();
        assert_eq!(d.get("c0").await.unwrap(), Some(3));
        assert!(d.delete("c1").await.unwrap());
        assert_eq!(raw::read(&h, "c1").await, None);
        for (i, bytes) in corruptions.iter().enumerate().skip(2) {
            assert_eq!(raw::read(&h, &format!("c{i}")).await.as_deref(), Some(*bytes));
        }
    }
}

#[tokio::test]
async fn bad_urls_are_invalid_url_errors() {
    for url in [
        "",
        "memory",
        "nosuch://x",
        "memory://somewhere",
        "memory://?max_capacity=lots",
        "memory://?max_capacity=1&max_capacity=2",
        "redis://:secret@127.0.0.1:notaport/0",
        "redis://:secret@/0",
        "redis://:secret@127.0.0.1:6379/0?nope=1",
        "sqlite://",
        "sqlite://x.db?synchronous=sometimes",
        "sqlite://x.db?table=bad;name",
        "MEMORY://",
        "http://example.com",
        "memory:",
        "memory://#fragment",
        "memory://?max_capacity=-1",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:65536/0",
        "redis://127.0.0.1/notadb",
        "redis://[::1",
        "redis://127.0.0.1/0?namespace=",
        "redis://127.0.0.1/0?command_timeout_ms=soon",
        "sqlite://x.db?table=",
        "sqlite://x.db?codec=yaml",
        "sqlite://x.db?busy_timeout_ms=-5",
        "sqlite://x.db?lock_lease_ms=1.5",
    ] {
        match LiveDict::<u32>::open(url).await {
            Err(Error::InvalidUrl { url: shown, reason }) => {
                assert!(!shown.contains("secret"), "password leaked: {shown}");
                assert!(!reason.is_empty());
            }
            Err(e) if !cfg!(all(feature = "sqlite", feature = "redis")) => {
                // A backend compiled out still fails with a typed error.
                let _ = e;
            }
            other => panic!("{url:?} gave {other:?}"),
        }
    }
}
