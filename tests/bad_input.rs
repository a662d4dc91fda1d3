//! Every bad input gives its typed error, never a panic.

mod support;

use std::time::Duration;

use livedict::{Error, LiveDict, MAX_KEY_LEN};

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
