//! An axum server keeping login sessions in livedict, with a TTL.
//!
//! - Sessions live in a `LiveDict<Session>` with a TTL; the store is shared as
//!   axum `State` (a `LiveDict` is a cheap, cloneable handle).
//! - Each session has a hit counter in a second store, incremented under the
//!   counter's per-key `lock`, so concurrent requests never lose an increment.
//! - An `Expire` callback cleans up when a session times out: it deletes the
//!   session's counter and logs, even if no request touches the session again.
//!
//! Run: `cargo run --example axum_session_store` (memory backend), or with a
//! shared store: `LIVEDICT_URL=sqlite://sessions.db cargo run --example axum_session_store`.
//!
//! ```text
//! curl -s -XPOST localhost:3000/sessions -H 'content-type: application/json' -d '{"user":"alice"}'
//! curl -s localhost:3000/sessions/<id>
//! curl -s -XPOST localhost:3000/sessions/<id>/hits
//! curl -s localhost:3000/stats
//! ```
//!
//! `tests/axum.rs` includes this file and drives [`router`] over real HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use livedict::{Callback, Event, EventKind, LiveDict};
use serde::{Deserialize, Serialize};

/// How long a client may wait for a session's counter lock before getting 503.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// One login session, stored as the value of its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session id (also its key in the store).
    pub id: String,
    /// Who logged in.
    pub user: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

/// What handlers share: two stores and a count of expired sessions.
#[derive(Clone)]
pub struct AppState {
    /// Session id → session, each with a TTL.
    pub sessions: LiveDict<Session>,
    /// Session id → hits, removed when the session expires.
    pub hits: LiveDict<u64>,
    /// TTL of sessions created without an explicit `ttl_ms`.
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
        // session's deadline (within a few ms), with the expired session.
        let (hits, expired) = (state.hits.clone(), Arc::clone(&state.expired));
        let cleanup = Callback::new_async(move |ev: Event<Session>| {
            let (hits, expired) = (hits.clone(), Arc::clone(&expired));
            async move {
                let user = ev.value().map_or("?", |s| s.user.as_str());
                match hits.delete(ev.key()).await {
                    Ok(_) => tracing::info!(session = ev.key(), user, "session expired; counter removed"),
                    Err(e) => {
                        tracing::warn!(session = ev.key(), error = %e, "session expired; cleanup failed")
                    }
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

/// The HTTP API over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/sessions", post(create_session))
        .route("/sessions/{id}", get(read_session).delete(delete_session))
        .route("/sessions/{id}/hits", get(read_hits).post(increment_hits))
        .route("/stats", get(stats))
        .with_state(state)
}

/// Body of `POST /sessions`.
#[derive(Debug, Deserialize)]
pub struct NewSession {
    /// Who logs in.
    pub user: String,
    /// TTL in ms (default: the server's session TTL).
    pub ttl_ms: Option<u64>,
}

/// `POST /sessions` → 201 with the new session.
async fn create_session(
    State(state): State<AppState>,
    Json(body): Json<NewSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let ttl = body.ttl_ms.map_or(state.session_ttl, Duration::from_millis);
    let id = format!("{:032x}", rand::random::<u128>());
    let created_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let session = Session { id: id.clone(), user: body.user, created_ms };
    // A zero or absurd `ttl_ms` is `Error::InvalidTtl` → 400.
    state.sessions.set_with_ttl(&id, session.clone(), ttl).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// `GET /sessions/{id}` → 200 with the session, 404 once deleted or expired.
async fn read_session(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(match state.sessions.get(&id).await? {
        Some(session) => Json(session).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// `DELETE /sessions/{id}` → 204, or 404 if there was no live session.
async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.sessions.delete(&id).await? {
        return Ok(StatusCode::NOT_FOUND);
    }
    state.hits.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A session's hit count.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hits {
    /// Increments so far.
    pub hits: u64,
}

/// `GET /sessions/{id}/hits` → the count, 404 without a live session.
async fn read_hits(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !state.sessions.exists(&id).await? {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    let hits = state.hits.get(&id).await?.unwrap_or(0);
    Ok(Json(Hits { hits }).into_response())
}

/// `POST /sessions/{id}/hits` → the count after this increment.
///
/// The read-modify-write runs under the counter's lock: concurrent requests
/// queue for it (FIFO) instead of overwriting each other's increments. A
/// request that cannot get the lock within [`LOCK_WAIT`] gets 503. (For a
/// plain counter, `state.hits.incr(&id, 1)` does the same in one call; the
/// explicit guard shows the general pattern for any read-modify-write.)
async fn increment_hits(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    // Every session has a deadline, so `None` means there is no live session.
    let Some(session_left) = state.sessions.ttl(&id).await? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let guard = state.hits.lock(&id, LOCK_WAIT).await?;
    let hits = guard.get().await?.unwrap_or(0) + 1;
    // The expire callback removes the counter with its session; the counter's
    // own TTL only bounds a counter written just after that cleanup ran.
    guard.set_with_ttl(hits, session_left + Duration::from_secs(1)).await?;
    guard.unlock().await?;
    Ok(Json(Hits { hits }).into_response())
}

/// Counters of the server and of the session store.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerStats {
    /// Sessions cleaned up by the expire callback.
    pub sessions_expired: u64,
    /// Live sessions.
    pub sessions_live: usize,
    /// Session reads that found a live session.
    pub hits: u64,
    /// Session reads that found none.
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

/// A livedict error as an HTTP response.
pub struct ApiError(livedict::Error);

impl From<livedict::Error> for ApiError {
    fn from(e: livedict::Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use livedict::Error;
        let status = match &self.0 {
            Error::InvalidKey { .. } | Error::InvalidTtl { .. } => StatusCode::BAD_REQUEST,
            Error::LockTimeout { .. } | Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.0.to_string()).into_response()
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
