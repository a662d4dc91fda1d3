//! `livedict::sessions::LiveDictStore` driven through the `SessionStore`
//! trait on every backend (create / save / load / delete / expiry / id
//! collisions / errors), and under `tower_sessions::SessionManagerLayer` in a
//! real axum app over HTTP with cookies.
#![cfg(feature = "tower-sessions")]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use livedict::sessions::LiveDictStore;
use livedict::{EventKind, LiveDict};
use time::OffsetDateTime;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::Error as StoreError;

/// A record for `user` expiring `ttl` from now (wall clock, like tower-sessions).
fn record(user: &str, ttl: Duration) -> Record {
    Record {
        id: Id::default(),
        data: HashMap::from([("user".to_string(), serde_json::json!(user))]),
        expiry_date: OffsetDateTime::now_utc() + ttl,
    }
}

/// The user stored in `r`.
fn user(r: &Record) -> &str {
    r.data["user"].as_str().unwrap()
}

for_each_backend! {
    async fn created_records_are_loaded_back_with_a_deadline_at_their_expiry(h: Harness) {
        let dict = h.open::<Record>().await;
        let store = LiveDictStore::new(dict.clone());
        let mut r = record("alice", Duration::from_secs(60));
        let id = r.id;
        store.create(&mut r).await.unwrap();
        assert_eq!(r.id, id, "a free id is kept");
        assert_eq!(store.load(&id).await.unwrap(), Some(r.clone()));
        let left = dict.ttl(LiveDictStore::key(&id)).await.unwrap().expect("a deadline");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(55), "{left:?}");
        assert_eq!(dict.keys().await.unwrap(), vec![format!("session:{id}")]);
    }

    async fn load_of_a_missing_id_is_none(h: Harness) {
        let store = LiveDictStore::new(h.open::<Record>().await);
        assert_eq!(store.load(&Id::default()).await.unwrap(), None);
    }

    async fn save_replaces_the_record_and_its_deadline(h: Harness) {
        let dict = h.open::<Record>().await;
        let store = LiveDictStore::new(dict.clone());
        let mut r = record("bob", Duration::from_secs(30));
        store.create(&mut r).await.unwrap();
        r.data.insert("visits".into(), serde_json::json!(2));
        r.expiry_date = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        store.save(&r).await.unwrap();
        assert_eq!(store.load(&r.id).await.unwrap(), Some(r.clone()));
        let left = dict.ttl(LiveDictStore::key(&r.id)).await.unwrap().unwrap();
        assert!(left > Duration::from_secs(3500), "the new expiry date decides: {left:?}");

        // `save` of a record nobody created stores it too (tower-sessions saves
        // existing sessions with it).
        let other = record("carol", Duration::from_secs(30));
        store.save(&other).await.unwrap();
        assert_eq!(store.load(&other.id).await.unwrap(), Some(other));
    }

    async fn a_record_past_its_expiry_date_is_deleted_not_stored(h: Harness) {
        let dict = h.open::<Record>().await;
        let store = LiveDictStore::new(dict.clone());
        let mut r = record("dave", Duration::from_secs(30));
        store.create(&mut r).await.unwrap();
        r.expiry_date = OffsetDateTime::now_utc() - Duration::from_secs(1);
        store.save(&r).await.unwrap();
        assert_eq!(store.load(&r.id).await.unwrap(), None);
        assert!(dict.is_empty().await.unwrap());

        // `create` of an expired record stores nothing, and leaves a live
        // session with the same id alone.
        let mut live = record("erin", Duration::from_secs(30));
        store.create(&mut live).await.unwrap();
        let mut stale = record("mallory", Duration::from_secs(30));
        stale.id = live.id;
        stale.expiry_date = OffsetDateTime::now_utc() - Duration::from_secs(1);
        store.create(&mut stale).await.unwrap();
        assert_eq!(store.load(&live.id).await.unwrap(), Some(live));
        assert_eq!(dict.len().await.unwrap(), 1);
    }

    async fn delete_removes_the_session(h: Harness) {
        let dict = h.open::<Record>().await;
        let store = LiveDictStore::new(dict.clone());
        let mut r = record("frank", Duration::from_secs(30));
        store.create(&mut r).await.unwrap();
        store.delete(&r.id).await.unwrap();
        assert_eq!(store.load(&r.id).await.unwrap(), None);
        assert!(dict.is_empty().await.unwrap());
        store.delete(&r.id).await.unwrap(); // deleting a missing session is fine
    }

    async fn records_expire_at_their_expiry_date_with_an_expire_event_carrying_the_record(h: Harness) {
        let dict = h.open::<Record>().await;
        let expired = support::Collector::<Record>::new();
        dict.register_callback(EventKind::Expire, expired.callback()).unwrap();
        let store = LiveDictStore::new(dict.clone());
        let mut short = record("grace", h.short_ttl());
        let mut long = record("heidi", Duration::from_secs(60));
        store.create(&mut short).await.unwrap();
        store.create(&mut long).await.unwrap();
        assert_eq!(store.load(&short.id).await.unwrap(), Some(short.clone()));

        h.pass(h.short_ttl() + h.grace()).await;
        assert_eq!(store.load(&short.id).await.unwrap(), None);
        assert_eq!(store.load(&long.id).await.unwrap(), Some(long));
        support::eventually("the expire event", || expired.len() == 1).await;
        let (kind, key, value) = expired.events().remove(0);
        assert_eq!((kind, key), (EventKind::Expire, LiveDictStore::key(&short.id)));
        let value = value.expect("the expired record");
        assert_eq!((value.id, user(&value)), (short.id, "grace"));
    }

    async fn create_never_overwrites_an_existing_id(h: Harness) {
        let dict = h.open::<Record>().await;
        // On SQLite and Redis the second store is another handle (its own stack) on the same data.
        let first = LiveDictStore::new(dict.clone());
        let second = if h.shared() { LiveDictStore::new(h.open::<Record>().await) } else { first.clone() };
        let mut taken = record("ivan", Duration::from_secs(60));
        first.create(&mut taken).await.unwrap();

        // A new session that drew the same id gets another one.
        let mut newcomer = record("judy", Duration::from_secs(30));
        newcomer.id = taken.id;
        second.create(&mut newcomer).await.unwrap();
        assert_ne!(newcomer.id, taken.id, "the colliding id was replaced");
        assert_eq!(first.load(&taken.id).await.unwrap(), Some(taken.clone()), "the first session is intact");
        assert_eq!(first.load(&newcomer.id).await.unwrap(), Some(newcomer.clone()));
        let left = dict.ttl(LiveDictStore::key(&taken.id)).await.unwrap().unwrap();
        assert!(left > Duration::from_secs(55), "the first session's deadline is untouched: {left:?}");
        assert!(dict.ttl(LiveDictStore::key(&newcomer.id)).await.unwrap().is_some());
        assert_eq!(dict.len().await.unwrap(), 2);
    }

    async fn concurrent_creates_with_one_id_all_get_distinct_ids(h: Harness) {
        let stores = if h.shared() {
            vec![LiveDictStore::new(h.open().await), LiveDictStore::new(h.open().await)]
        } else {
            vec![LiveDictStore::new(h.open().await)]
        };
        let id = Id::default();
        let n = 16;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                tokio::spawn(async move {
                    let mut r = record(&format!("user{i}"), Duration::from_secs(60));
                    r.id = id;
                    store.create(&mut r).await.unwrap();
                    r
                })
            })
            .collect();
        let mut created = Vec::new();
        for t in tasks {
            created.push(t.await.unwrap());
        }
        let ids: BTreeSet<i128> = created.iter().map(|r| r.id.0).collect();
        assert_eq!(ids.len(), n, "every create got its own id");
        assert!(ids.contains(&id.0), "one of them kept the drawn id");
        for r in &created {
            assert_eq!(stores[0].load(&r.id).await.unwrap().as_ref().map(user), Some(user(r)));
        }
        assert_eq!(stores[0].dict().len().await.unwrap(), n);
    }

    async fn livedict_errors_become_session_store_errors(h: Harness) {
        if h.shared() {
            // Something else stored under a session key: a decode error.
            let other = h.open::<String>().await;
            let id = Id::default();
            other.set(LiveDictStore::key(&id), "not a record".into()).await.unwrap();
            let store = LiveDictStore::new(h.open().await);
            assert!(matches!(store.load(&id).await, Err(StoreError::Decode(_))));
        }
        let dict = h.open::<Record>().await;
        let store = LiveDictStore::new(dict.clone());
        dict.shutdown().await.unwrap();
        let err = store.load(&Id::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        let mut r = record("kim", Duration::from_secs(30));
        assert!(matches!(store.create(&mut r).await, Err(StoreError::Backend(_))));
        assert!(matches!(store.save(&r).await, Err(StoreError::Backend(_))));
        assert!(matches!(store.delete(&r.id).await, Err(StoreError::Backend(_))));
    }
}

/// A real axum app with `SessionManagerLayer` over `LiveDictStore`, served on
/// a loopback port, driven by a cookie-keeping HTTP client.
mod axum_app {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use livedict::{Callback, Event};
    use tower_sessions::{Expiry, Session, SessionManagerLayer};

    use super::*;

    async fn login(session: Session, body: String) -> StatusCode {
        session.insert("user", body).await.unwrap();
        StatusCode::OK
    }

    async fn me(session: Session) -> Result<String, StatusCode> {
        session.get::<String>("user").await.unwrap().ok_or(StatusCode::UNAUTHORIZED)
    }

    async fn logout(session: Session) -> StatusCode {
        session.flush().await.unwrap();
        StatusCode::NO_CONTENT
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_live_in_livedict_behind_the_cookie_and_their_expiry_is_heard() {
        let dict = LiveDict::<Record>::open("memory://").await.unwrap();
        let ended: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&ended);
        dict.register_callback(
            EventKind::Expire,
            Callback::new(move |ev: &Event<Record>| {
                sink.lock().unwrap().push(user(ev.value().unwrap()).to_owned());
            }),
        )
        .unwrap();
        let layer = SessionManagerLayer::new(LiveDictStore::new(dict.clone()))
            .with_secure(false)
            .with_expiry(Expiry::OnInactivity(time::Duration::milliseconds(1000)));
        let app = Router::new()
            .route("/login", post(login))
            .route("/me", get(me))
            .route("/logout", post(logout))
            .layer(layer);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let url = |path: &str| format!("{base}{path}");

        // No cookie, no session.
        let resp = client.get(url("/me")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(dict.is_empty().await.unwrap(), "an empty session is not stored");

        // Login: the cookie names the record livedict holds.
        let resp = client.post(url("/login")).body("alice").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let cookie = resp.cookies().find(|c| c.name() == "id").expect("session cookie").value().to_owned();
        let key = format!("session:{cookie}");
        assert_eq!(dict.keys().await.unwrap(), vec![key.clone()]);
        let stored = dict.get(&key).await.unwrap().unwrap();
        assert_eq!((stored.id.to_string(), user(&stored)), (cookie.clone(), "alice"));
        assert!(dict.ttl(&key).await.unwrap().unwrap() <= Duration::from_millis(1000));
        let resp = client.get(url("/me")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "alice");

        // Logout deletes the record.
        let resp = client.post(url("/logout")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(dict.is_empty().await.unwrap());
        assert_eq!(client.get(url("/me")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

        // A session left alone expires in livedict, and the app hears it, with its data.
        client.post(url("/login")).body("bob").send().await.unwrap();
        assert_eq!(dict.len().await.unwrap(), 1);
        support::eventually("the expire event", || !ended.lock().unwrap().is_empty()).await;
        assert_eq!(*ended.lock().unwrap(), vec!["bob".to_string()]);
        assert!(dict.is_empty().await.unwrap());
        assert_eq!(client.get(url("/me")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        dict.shutdown().await.unwrap();
    }
}
