//! An axum server keeping login sessions in livedict through `tower-sessions`.
//!
//! - `tower_sessions::SessionManagerLayer` handles the session cookie; the
//!   sessions live in a `LiveDict<Record>` behind `livedict::sessions::LiveDictStore`
//!   (memory, SQLite or Redis, chosen by URL), each with a TTL at its expiry
//!   date. Sessions expire after `session_ttl` without a change
//!   (`Expiry::OnInactivity`).
//! - Each session has a hit counter in a second store, incremented under the
//!   counter's per-key `lock`, so concurrent requests never lose an increment.
//! - An `Expire` callback on the session store cleans up when a session times
//!   out: it gets the expired record (its id and data), deletes the session's
//!   counter and logs, even if no request ever brings the cookie back.
//!
//! Run: `cargo run --example axum_session_store --features tower-sessions`
//! (memory backend), or with a shared store:
//! `LIVEDICT_URL=sqlite://sessions.db cargo run --example axum_session_store --features tower-sessions`.
//!
//! ```text
//! curl -s -c jar -b jar -XPOST localhost:3000/login -H 'content-type: application/json' -d '{"user":"alice"}'
//! curl -s -c jar -b jar localhost:3000/me
//! curl -s -c jar -b jar -XPOST localhost:3000/hits
//! curl -s -c jar -b jar -XPOST localhost:3000/logout
//! curl -s localhost:3000/stats
//! ```
//!
//! `tests/axum.rs` includes this file and drives [`router`] over real HTTP,
//! with a cookie-keeping client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use livedict::sessions::LiveDictStore;
use livedict::{Callback, Event, EventKind, LiveDict};
use serde::{Deserialize, Serialize};
use tower_sessions::session::{Id, Record};
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// How long a client may wait for a session's counter lock before getting 503.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The session data key holding the logged-in user.
pub const USER: &str = "user";

/// What handlers share: the session dictionary, the counters and a count of
/// expired sessions.
#[derive(Clone)]
pub struct AppState {
    /// Session records (`session:<id>` → record), each with a TTL. Owned by
    /// the app: the session layer writes through a [`LiveDictStore`] on it.
    pub sessions: LiveDict<Record>,
    /// Session id → hits, removed when the session ends.
    pub hits: LiveDict<u64>,
    /// How long a session lives without a change.
    pub session_ttl: Duration,
    /// Sessions cleaned up by the expire callback.
    pub expired: Arc<AtomicU64>,
}

impl AppState {
    /// Opens both stores at `url` (`memory://`, `sqlite://file.db`, `redis://…`;
    /// tables / namespaces `sessions` and `session_hits`) and registers the
    /// expire callback.
    pub async fn open(url: &str, session_ttl: Duration) -> livedict::Result<Self> {
        let sessions = LiveDict::builder().url(url).table("sessions").namespace("sessions").build().await?;
        let hits =
            LiveDict::builder().url(url).table("session_hits").namespace("session_hits").build().await?;
        let state = AppState { sessions, hits, session_ttl, expired: Arc::default() };

        // Runs off the request path, in livedict's callback sandbox, at the
        // session's deadline (within a few ms), with the expired record.
        let (hits, expired) = (state.hits.clone(), Arc::clone(&state.expired));
        let cleanup = Callback::new_async(move |ev: Event<Record>| {
            let (hits, expired) = (hits.clone(), Arc::clone(&expired));
            async move {
                let Some(record) = ev.value() else { return };
                let user = record.data.get(USER).and_then(|u| u.as_str()).unwrap_or("?");
                let session = record.id.to_string();
                match hits.delete(&session).await {
                    Ok(_) => tracing::info!(session, user, "session expired; counter removed"),
                    Err(e) => tracing::warn!(session, error = %e, "session expired; cleanup failed"),
                }
                expired.fetch_add(1, Ordering::Relaxed);
            }
        })
        .timeout(Duration::from_secs(5));
        state.sessions.register_callback(EventKind::Expire, cleanup)?;
        Ok(state)
    }

    /// Shuts both stores down (delivering queued events).
    pub async fn shutdown(&self) -> livedict::Result<()> {
        self.sessions.shutdown().await?;
        self.hits.shutdown().await
    }
}

/// The HTTP API over `state`, under the session layer.
pub fn router(state: AppState) -> Router {
    let inactivity =
        tower_sessions::cookie::time::Duration::try_from(state.session_ttl).expect("a session TTL in range");
    let sessions = SessionManagerLayer::new(LiveDictStore::new(state.sessions.clone()))
        .with_expiry(Expiry::OnInactivity(inactivity))
        // Plain HTTP on localhost; keep the default (`Secure` cookies) behind HTTPS.
        .with_secure(false);
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/hits", post(increment_hits))
        .route("/logout", post(logout))
        .route("/stats", get(stats))
        .layer(sessions)
        .with_state(state)
}

/// Body of `POST /login`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Login {
    /// Who logs in.
    pub user: String,
}

/// The logged-in user and the session's hit count.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Me {
    /// Who is logged in.
    pub user: String,
    /// Increments so far.
    pub hits: u64,
}

/// `POST /login` → 200 with the user; the session layer sets the cookie.
async fn login(
    State(state): State<AppState>,
    session: Session,
    Json(body): Json<Login>,
) -> Result<Json<Me>, ApiError> {
    // Logging in again ends the previous session, counter included.
    if let Some((_, old)) = current(&session).await? {
        state.hits.delete(old.to_string()).await?;
    }
    // A fresh id at login, so an id planted before it is worthless (session
    // fixation); for a new session this just creates it.
    session.cycle_id().await?;
    session.insert(USER, &body.user).await?;
    Ok(Json(Me { user: body.user, hits: 0 }))
}

/// The logged-in user and the session id, or `None` without a live session.
async fn current(session: &Session) -> Result<Option<(String, Id)>, ApiError> {
    let user: Option<String> = session.get(USER).await?;
    Ok(user.zip(session.id()))
}

/// `GET /me` → the user and hits, 401 without a live session.
async fn me(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    let Some((user, id)) = current(&session).await? else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    let hits = state.hits.get(id.to_string()).await?.unwrap_or(0);
    Ok(Json(Me { user, hits }).into_response())
}

/// A session's hit count.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hits {
    /// Increments so far.
    pub hits: u64,
}

/// `POST /hits` → the count after this increment, 401 without a live session.
///
/// The read-modify-write runs under the counter's lock: concurrent requests
/// queue for it (FIFO) instead of overwriting each other's increments. A
/// request that cannot get the lock within [`LOCK_WAIT`] gets 503. (For a
/// plain counter, `state.hits.incr(&id, 1)` does the same in one call; the
/// explicit guard shows the general pattern for any read-modify-write.)
async fn increment_hits(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    let Some((_, id)) = current(&session).await? else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    // Every session record has a deadline: the counter gets one a little later.
    let session_left = state.sessions.ttl(LiveDictStore::key(&id)).await?.unwrap_or(state.session_ttl);
    let guard = state.hits.lock(id.to_string(), LOCK_WAIT).await?;
    let hits = guard.get().await?.unwrap_or(0) + 1;
    // The expire callback removes the counter with its session; the counter's
    // own TTL only bounds a counter written just after that cleanup ran.
    guard.set_with_ttl(hits, session_left + Duration::from_secs(1)).await?;
    guard.unlock().await?;
    Ok(Json(Hits { hits }).into_response())
}

/// `POST /logout` → 204; deletes the session (the layer clears the cookie)
/// and its counter.
async fn logout(State(state): State<AppState>, session: Session) -> Result<StatusCode, ApiError> {
    if let Some((_, id)) = current(&session).await? {
        state.hits.delete(id.to_string()).await?;
    }
    session.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Counters of the server and of the session store.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerStats {
    /// Sessions cleaned up by the expire callback.
    pub sessions_expired: u64,
    /// Live sessions.
    pub sessions_live: usize,
    /// Session loads that found a live record.
    pub hits: u64,
    /// Session loads that found none.
    pub misses: u64,
    /// Lock acquisitions on counters that had to wait.
    pub lock_waits: u64,
}

/// `GET /stats`.
async fn stats(State(state): State<AppState>) -> Result<Json<ServerStats>, ApiError> {
    let (s, counters) = (state.sessions.stats(), state.hits.stats());
    Ok(Json(ServerStats {
        sessions_expired: state.expired.load(Ordering::Relaxed),
        sessions_live: state.sessions.len().await?,
        hits: s.hits,
        misses: s.misses,
        lock_waits: counters.lock_waits,
    }))
}

/// A livedict or session error as an HTTP response.
pub enum ApiError {
    /// From a livedict call.
    Store(livedict::Error),
    /// From the session (its store failed: the message of a livedict error).
    Session(tower_sessions::session::Error),
}

impl From<livedict::Error> for ApiError {
    fn from(e: livedict::Error) -> Self {
        ApiError::Store(e)
    }
}

impl From<tower_sessions::session::Error> for ApiError {
    fn from(e: tower_sessions::session::Error) -> Self {
        ApiError::Session(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use livedict::Error;
        match self {
            ApiError::Store(e) => {
                let status = match &e {
                    Error::InvalidKey { .. } | Error::InvalidTtl { .. } => StatusCode::BAD_REQUEST,
                    Error::LockTimeout { .. } | Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
                    Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.to_string()).into_response()
            }
            ApiError::Session(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).init();
    let url = std::env::var("LIVEDICT_URL").unwrap_or_else(|_| "memory://".into());
    let state = AppState::open(&url, Duration::from_secs(30 * 60)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!(addr = %listener.local_addr()?, store = %url, "listening");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    state.shutdown().await?;
    Ok(())
}
