//! The axum example (`examples/axum_session_store.rs`) served on a loopback
//! port and driven over real HTTP: create, read, expiry with cleanup, and
//! concurrent increments under a lock; the same flow on SQLite and Redis.

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/axum_session_store.rs"]
mod app;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use app::{AppState, Hits, ServerStats, Session};
use reqwest::StatusCode;
use serde_json::json;

/// A running server and a client pointed at it.
struct Server {
    base: String,
    client: reqwest::Client,
    state: AppState,
}

impl Server {
    /// Serves the example's router for a fresh memory store on a free port.
    async fn start() -> Server {
        Self::start_at("memory://").await
    }

    /// Serves the example's router for the stores at `url` on a free port.
    async fn start_at(url: &str) -> Server {
        let state = AppState::open(url, Duration::from_secs(60)).await.expect("open stores");
        // The listener is kept and served, so the OS-chosen port cannot be lost to anyone.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let router = app::router(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
        Server { base, client: reqwest::Client::new(), state }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create(&self, user: &str, ttl_ms: Option<u64>) -> Session {
        let resp = self
            .client
            .post(self.url("/sessions"))
            .json(&json!({ "user": user, "ttl_ms": ttl_ms }))
            .send()
            .await
            .expect("POST /sessions");
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.expect("session json")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    async fn stats(&self) -> ServerStats {
        self.get("/stats").await.json().await.expect("stats json")
    }
}

#[tokio::test]
async fn created_session_can_be_read_back() {
    let s = Server::start().await;
    let created = s.create("alice", None).await;
    assert_eq!(created.user, "alice");
    assert_eq!(created.id.len(), 32);

    let resp = s.get(&format!("/sessions/{}", created.id)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let read: Session = resp.json().await.unwrap();
    assert_eq!(read, created);

    let resp = s.get("/sessions/no-such-session").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.stats().await.sessions_live, 1);
}

#[tokio::test]
async fn deleted_session_is_gone() {
    let s = Server::start().await;
    let created = s.create("bob", None).await;
    let path = format!("/sessions/{}", created.id);
    let resp = s.client.delete(s.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get(&path).await.status(), StatusCode::NOT_FOUND);
    let resp = s.client.delete(s.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_ttl_is_a_bad_request() {
    let s = Server::start().await;
    let resp =
        s.client.post(s.url("/sessions")).json(&json!({ "user": "x", "ttl_ms": 0 })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn session_expires_and_the_callback_cleans_up_its_counter() {
    let s = Server::start().await;
    let keep = s.create("carol", None).await;
    let short = s.create("dave", Some(300)).await;
    let path = format!("/sessions/{}", short.id);
    let created = Instant::now();
    let resp = s.client.post(s.url(&format!("{path}/hits"))).send().await.unwrap();
    assert_eq!(resp.json::<Hits>().await.unwrap().hits, 1);
    assert_eq!(s.get(&path).await.status(), StatusCode::OK);
    assert_eq!(s.state.hits.get(&short.id).await.unwrap(), Some(1));

    // Nobody touches the session: the expire callback still runs at its
    // deadline and removes the counter.
    let deadline = created + Duration::from_secs(5);
    while s.stats().await.sessions_expired < 1 {
        assert!(Instant::now() < deadline, "expire callback did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(created.elapsed() >= Duration::from_millis(290), "expired early: {:?}", created.elapsed());
    assert_eq!(s.get(&path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.get(&format!("{path}/hits")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.state.hits.get(&short.id).await.unwrap(), None, "counter cleaned up");

    // The long-lived session is untouched.
    assert_eq!(s.get(&format!("/sessions/{}", keep.id)).await.status(), StatusCode::OK);
    let stats = s.stats().await;
    assert_eq!((stats.sessions_expired, stats.sessions_live), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_increments_under_the_lock_lose_nothing() {
    let s = Server::start().await;
    let session = s.create("erin", None).await;
    let url = s.url(&format!("/sessions/{}/hits", session.id));
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
    // Each increment saw a distinct count: 1..=50, none lost or repeated.
    assert_eq!(seen, (1..=50).collect::<BTreeSet<u64>>());

    let resp = s.get(&format!("/sessions/{}/hits", session.id)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Hits>().await.unwrap().hits, 50);
}

#[tokio::test]
async fn increments_of_a_missing_session_are_not_found() {
    let s = Server::start().await;
    let resp = s.client.post(s.url("/sessions/nope/hits")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.state.hits.len().await.unwrap(), 0);
}

/// The whole flow on a shared backend: create, read, 50 locked increments,
/// expiry with cleanup by the callback.
async fn full_flow(url: &str) {
    let s = Server::start_at(url).await;
    let session = s.create("frank", None).await;
    let read: Session = s.get(&format!("/sessions/{}", session.id)).await.json().await.unwrap();
    assert_eq!(read, session);

    let url = s.url(&format!("/sessions/{}/hits", session.id));
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (s.client.clone(), url.clone());
            tokio::spawn(
                async move { client.post(url).send().await.unwrap().json::<Hits>().await.unwrap().hits },
            )
        })
        .collect();
    let mut seen = BTreeSet::new();
    for r in requests {
        seen.insert(r.await.unwrap());
    }
    assert_eq!(seen, (1..=50).collect::<BTreeSet<u64>>());

    let short = s.create("grace", Some(300)).await;
    s.client.post(s.url(&format!("/sessions/{}/hits", short.id))).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stats().await.sessions_expired < 1 {
        assert!(Instant::now() < deadline, "expire callback did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.get(&format!("/sessions/{}", short.id)).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.state.hits.get(&short.id).await.unwrap(), None, "counter cleaned up");
    assert_eq!(s.get(&format!("/sessions/{}", session.id)).await.status(), StatusCode::OK);
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
