//! [`RateLimitLayer`]: a [`RateLimiter`] in front of an `http` service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};

use super::{Decision, RateLimiter};

/// What [`RateLimit`] does with a request when the store fails (unreachable,
/// timed out, …); the failure is logged with `tracing` either way.
///
/// ```
/// use livedict::ratelimit::OnError;
/// assert_eq!(OnError::default(), OnError::FailClosed);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Let the request through, unlimited (availability over the limit).
    FailOpen,
    /// Answer `503 Service Unavailable` without calling the service (the default).
    #[default]
    FailClosed,
}

/// The header field names of draft-ietf-httpapi-ratelimit-headers.
const RATELIMIT: &str = "ratelimit";
const RATELIMIT_POLICY: &str = "ratelimit-policy";

/// A Tower layer limiting the requests of an `http` service per key, with a
/// [`RateLimiter`] (so across every instance sharing its store).
///
/// `key_fn` picks the key of a request (a user, an API token, a client
/// address); `None` leaves the request unlimited. A request over its key's
/// budget gets `429 Too Many Requests` with `Retry-After` (whole seconds,
/// rounded up) and the service is not called. Limited requests carry the
/// header fields of the IETF draft *RateLimit header fields for HTTP*
/// (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy:
/// "default";q=<cells>;w=<seconds>` (the quota as cells per window) and
/// `RateLimit: "default";r=<remaining>;t=<seconds until the budget is full>`,
/// on `429`s and on the service's own responses. If the check fails (the
/// store is unreachable or timed out, or `key_fn` gave an invalid key: empty
/// or over 1 KiB), the layer fails open or closed as configured
/// ([`on_error`](Self::on_error); closed, `503`, by default) and logs the
/// error with `tracing`.
///
/// The response body type must be `Default` (an empty `429`/`503` body), as
/// axum's `Body` and most body types are.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::{LiveDict, ratelimit::{OnError, Quota, RateLimitLayer, RateLimiter}};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_minute(1));
/// let layer = RateLimitLayer::new(limiter, |req: &http::Request<String>| {
///     req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned)
/// })
/// .on_error(OnError::FailOpen);
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// let req = || http::Request::builder().header("x-api-key", "k1").body(String::new()).unwrap();
/// let ok = svc.ready().await.unwrap().call(req()).await.unwrap();
/// assert_eq!(ok.status(), 200);
/// assert!(ok.headers().contains_key("ratelimit"));
/// let denied = svc.ready().await.unwrap().call(req()).await.unwrap();
/// assert_eq!(denied.status(), 429);
/// assert_eq!(denied.headers()["retry-after"], "60");
/// # Ok(()) }
/// ```
pub struct RateLimitLayer<K> {
    limiter: RateLimiter,
    key_fn: Arc<K>,
    on_error: OnError,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key_fn: Arc::clone(&self.key_fn),
            on_error: self.on_error,
        }
    }
}

impl<K> std::fmt::Debug for RateLimitLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl<K> RateLimitLayer<K> {
    /// Limits requests with `limiter`, keyed by `key_fn` (`None`: unlimited).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{Quota, RateLimitLayer, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(50));
    /// let by_path = RateLimitLayer::new(limiter, |req: &http::Request<()>| Some(req.uri().path().to_owned()));
    /// # let _ = by_path;
    /// # Ok(()) }
    /// ```
    pub fn new(limiter: RateLimiter, key_fn: K) -> Self {
        RateLimitLayer { limiter, key_fn: Arc::new(key_fn), on_error: OnError::default() }
    }

    /// What to do when the store fails ([`OnError::FailClosed`] by default).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{LiveDict, ratelimit::{OnError, Quota, RateLimitLayer, RateLimiter}};
    /// let limiter = RateLimiter::new(LiveDict::open("memory://").await?, Quota::per_second(50));
    /// let layer = RateLimitLayer::new(limiter, |_: &http::Request<()>| Some("all".to_owned()))
    ///     .on_error(OnError::FailOpen);
    /// # let _ = layer;
    /// # Ok(()) }
    /// ```
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }
}

impl<S, K> tower::Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            policy: policy_header(&self.limiter),
            limiter: self.limiter.clone(),
            key_fn: Arc::clone(&self.key_fn),
            on_error: self.on_error,
        }
    }
}

/// The service built by [`RateLimitLayer`].
pub struct RateLimit<S, K> {
    inner: S,
    limiter: RateLimiter,
    key_fn: Arc<K>,
    on_error: OnError,
    /// `RateLimit-Policy`, the same on every response.
    policy: Option<HeaderValue>,
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key_fn: Arc::clone(&self.key_fn),
            on_error: self.on_error,
            policy: self.policy.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K> std::fmt::Debug for RateLimit<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl<S, K, B, ResBody> tower::Service<http::Request<B>> for RateLimit<S, K>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    K: Fn(&http::Request<B>) -> Option<String> + Send + Sync + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service that was polled ready goes with this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = (self.key_fn)(&req) else {
            return Box::pin(inner.call(req));
        };
        let (limiter, on_error, policy) = (self.limiter.clone(), self.on_error, self.policy.clone());
        Box::pin(async move {
            match limiter.check(&key).await {
                Ok(decision) if decision.allowed() => {
                    let mut resp = inner.call(req).await?;
                    annotate(&mut resp, &decision, policy);
                    Ok(resp)
                }
                Ok(decision) => {
                    let mut resp = respond(StatusCode::TOO_MANY_REQUESTS);
                    let retry = decision.retry_after().unwrap_or_default();
                    // Whole seconds, rounded up (a retry before then would be denied again).
                    let secs = retry.as_nanos().div_ceil(1_000_000_000).max(1);
                    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs as u64));
                    annotate(&mut resp, &decision, policy);
                    Ok(resp)
                }
                Err(e) => match on_error {
                    OnError::FailOpen => {
                        tracing::warn!(key, error = %e, "rate limit check failed; letting the request through (fail open)");
                        inner.call(req).await
                    }
                    OnError::FailClosed => {
                        tracing::error!(key, error = %e, "rate limit check failed; answering 503 (fail closed)");
                        Ok(respond(StatusCode::SERVICE_UNAVAILABLE))
                    }
                },
            }
        })
    }
}

fn respond<ResBody: Default>(status: StatusCode) -> http::Response<ResBody> {
    let mut resp = http::Response::new(ResBody::default());
    *resp.status_mut() = status;
    resp
}

/// `RateLimit-Policy: "default";q=<cells>;w=<seconds>`: the quota as the
/// cells of a whole-second window (at least 1 s), rounded down.
fn policy_header(limiter: &RateLimiter) -> Option<HeaderValue> {
    let (rate, period) = limiter.quota().rate();
    if period.is_zero() {
        return None;
    }
    let window = period.as_nanos().div_ceil(1_000_000_000).max(1);
    let cells = u128::from(rate) * window * 1_000_000_000 / period.as_nanos();
    HeaderValue::from_str(&format!("\"default\";q={cells};w={window}")).ok()
}

/// Adds `RateLimit-Policy` and `RateLimit: "default";r=<remaining>;t=<seconds>`.
fn annotate<ResBody>(resp: &mut http::Response<ResBody>, d: &Decision, policy: Option<HeaderValue>) {
    let reset = d.reset_after().as_nanos().div_ceil(1_000_000_000);
    let headers = resp.headers_mut();
    if let Some(policy) = policy {
        headers.insert(RATELIMIT_POLICY, policy);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"default\";r={};t={reset}", d.remaining())) {
        headers.insert(RATELIMIT, value);
    }
}
