//! The axum example (`examples/axum_session_store.rs`: tower-sessions over
//! `LiveDictStore`) served on a loopback port and driven over real HTTP by a
//! cookie-keeping client: login, logout, expiry with cleanup by the expire
//! callback, and concurrent increments under a lock; the same flow on SQLite
//! and Redis.
#![cfg(feature = "tower-sessions")]

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/axum_session_store.rs"]
mod app;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use app::{AppState, Hits, Me, ServerStats};
use livedict::sessions::LiveDictStore;
use reqwest::StatusCode;
use serde_json::json;

/// A running server and a client (with a cookie jar) pointed at it.
struct Server {
    base: String,
    client: reqwest::Client,
    state: AppState,
}

impl Server {
    /// Serves the example's router for a fresh memory store on a free port.
    async fn start() -> Server {
        Self::start_at("memory://", Duration::from_secs(60)).await
    }

    /// Serves the example's router for the stores at `url` on a free port.
    async fn start_at(url: &str, session_ttl: Duration) -> Server {
        let state = AppState::open(url, session_ttl).await.expect("open stores");
        // The listener is kept and served, so the OS-chosen port cannot be lost to anyone.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let router = app::router(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
        Server { base, client: browser(), state }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Logs `user` in with `client`; returns the session cookie's value.
    async fn login(&self, client: &reqwest::Client, user: &str) -> String {
        let resp =
            client.post(self.url("/login")).json(&json!({ "user": user })).send().await.expect("POST /login");
        assert_eq!(resp.status(), StatusCode::OK);
        let cookie = resp.cookies().find(|c| c.name() == "id").expect("a session cookie");
        let id = cookie.value().to_owned();
        assert_eq!(resp.json::<Me>().await.unwrap(), Me { user: user.into(), hits: 0 });
        id
    }

    async fn me(&self, client: &reqwest::Client) -> Result<Me, StatusCode> {
        let resp = client.get(self.url("/me")).send().await.expect("GET /me");
        match resp.status() {
            StatusCode::OK => Ok(resp.json().await.expect("me json")),
            other => Err(other),
        }
    }

    async fn hit(&self, client: &reqwest::Client) -> Result<u64, StatusCode> {
        let resp = client.post(self.url("/hits")).send().await.expect("POST /hits");
        match resp.status() {
            StatusCode::OK => Ok(resp.json::<Hits>().await.expect("hits json").hits),
            other => Err(other),
        }
    }

    async fn stats(&self) -> ServerStats {
        self.client.get(self.url("/stats")).send().await.unwrap().json().await.expect("stats json")
    }

    /// The session ids stored in the session dictionary.
    async fn stored_ids(&self) -> Vec<String> {
        let keys = self.state.sessions.keys().await.unwrap();
        keys.into_iter().map(|k| k.strip_prefix(livedict::sessions::KEY_PREFIX).unwrap().to_owned()).collect()
    }
}

/// A client that keeps cookies, like a browser.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().expect("client")
}

#[tokio::test]
async fn login_sets_a_cookie_and_the_session_is_read_back_with_it() {
    let s = Server::start().await;
    assert_eq!(s.me(&s.client).await, Err(StatusCode::UNAUTHORIZED));

    let id = s.login(&s.client, "alice").await;
    assert_eq!(id.len(), 22, "a tower-sessions id in its cookie form");
    assert_eq!(s.me(&s.client).await, Ok(Me { user: "alice".into(), hits: 0 }));
    assert_eq!(s.stored_ids().await, vec![id.clone()], "stored under session:<cookie>");
    let key = format!("session:{id}");
    let left = s.state.sessions.ttl(&key).await.unwrap().expect("the record has a deadline");
    assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50), "{left:?}");

    // Another browser has no session.
    let other = browser();
    assert_eq!(s.me(&other).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(s.hit(&other).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(s.stats().await.sessions_live, 1);
    assert_eq!(s.state.hits.len().await.unwrap(), 0, "no counter for a request without a session");
}

#[tokio::test]
async fn logout_ends_the_session_and_removes_its_counter() {
    let s = Server::start().await;
    let id = s.login(&s.client, "bob").await;
    assert_eq!(s.hit(&s.client).await, Ok(1));
    assert_eq!(s.state.hits.get(&id).await.unwrap(), Some(1));

    let resp = s.client.post(s.url("/logout")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.me(&s.client).await, Err(StatusCode::UNAUTHORIZED));
    assert!(s.stored_ids().await.is_empty());
    assert_eq!(s.state.hits.get(&id).await.unwrap(), None);
    assert_eq!(s.stats().await.sessions_expired, 0, "a logout is not an expiry");
}

#[tokio::test]
async fn logging_in_again_cycles_the_id() {
    let s = Server::start().await;
    let first = s.login(&s.client, "carol").await;
    assert_eq!(s.hit(&s.client).await, Ok(1));
    let second = s.login(&s.client, "carol").await;
    assert_ne!(first, second);
    assert_eq!(s.stored_ids().await, vec![second.clone()], "the old record is gone");
    assert_eq!(s.state.hits.get(&first).await.unwrap(), None, "and its counter");
    assert_eq!(s.me(&s.client).await, Ok(Me { user: "carol".into(), hits: 0 }));
}

#[tokio::test]
async fn session_expires_and_the_callback_cleans_up_its_counter() {
    // Cookies count their max-age in whole seconds: a shorter session would get `Max-Age=0`.
    let s = Server::start_at("memory://", Duration::from_secs(1)).await;
    let short = browser();
    let id = s.login(&short, "dave").await;
    let created = Instant::now();
    assert_eq!(s.hit(&short).await, Ok(1));
    assert_eq!(s.state.hits.get(&id).await.unwrap(), Some(1));

    // Nobody uses the session: the expire callback still runs at its
    // deadline and removes the counter.
    let deadline = created + Duration::from_secs(5);
    while s.stats().await.sessions_expired < 1 {
        assert!(Instant::now() < deadline, "expire callback did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(created.elapsed() >= Duration::from_millis(990), "expired early: {:?}", created.elapsed());
    assert_eq!(s.me(&short).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(s.hit(&short).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(s.state.hits.get(&id).await.unwrap(), None, "counter cleaned up");
    assert!(!s.stored_ids().await.contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_increments_under_the_lock_lose_nothing() {
    let s = Server::start().await;
    s.login(&s.client, "frank").await;
    let seen = fifty_hits(&s).await;
    // Each increment saw a distinct count: 1..=50, none lost or repeated.
    assert_eq!(seen, (1..=50).collect::<BTreeSet<u64>>());
    assert_eq!(s.me(&s.client).await.unwrap().hits, 50);
}

/// 50 concurrent `POST /hits` with the server's client (one session); the counts seen.
async fn fifty_hits(s: &Server) -> BTreeSet<u64> {
    let url = s.url("/hits");
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (s.client.clone(), url.clone());
            tokio::spawn(async move {
                let resp = client.post(url).send().await.expect("POST hits");
                assert_eq!(resp.status(), StatusCode::OK);
                resp.json::<Hits>().await.expect("hits json").hits
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for r in requests {
        seen.insert(r.await.unwrap());
    }
    seen
}

/// The whole flow on a shared backend: login, 50 locked increments, a second
/// server (another process, in effect) reading the same session, expiry with
/// cleanup by the callback.
async fn full_flow(url: &str) {
    let s = Server::start_at(url, Duration::from_secs(3)).await;
    let id = s.login(&s.client, "grace").await;
    assert_eq!(fifty_hits(&s).await, (1..=50).collect::<BTreeSet<u64>>());
    assert_eq!(s.me(&s.client).await, Ok(Me { user: "grace".into(), hits: 50 }));

    // The same cookie on another server over the same stores.
    let twin = Server::start_at(url, Duration::from_secs(3)).await;
    let plain = reqwest::Client::new(); // no cookie jar: the cookie is sent by hand
    let resp = plain.get(twin.url("/me")).header("cookie", format!("id={id}")).send().await.unwrap();
    assert_eq!(resp.json::<Me>().await.unwrap(), Me { user: "grace".into(), hits: 50 });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    // Each expiration is delivered once in total, to one of the two servers.
    while s.stats().await.sessions_expired + twin.stats().await.sessions_expired < 1 {
        assert!(Instant::now() < deadline, "expire callback did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.me(&s.client).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(s.state.hits.get(&id).await.unwrap(), None, "counter cleaned up");
    assert!(s.state.sessions.get(LiveDictStore::key(&id.parse().unwrap())).await.unwrap().is_none());
    twin.state.shutdown().await.unwrap();
    s.state.shutdown().await.unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backed_server_keeps_sessions_counts_exactly_and_expires() {
    let h = support::Harness::sqlite();
    full_flow(h.url()).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backed_server_keeps_sessions_counts_exactly_and_expires() {
    let Some(h) = support::Harness::redis() else { return };
    full_flow(h.url()).await;
}
