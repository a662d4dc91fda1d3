//! A rate-limited axum API: 5 requests per second per API key (burst 5),
//! shared by every instance that opens the same store.
//!
//! ```text
//! cargo run --example ratelimit --features ratelimit                        # memory, a demo
//! cargo run --example ratelimit --features ratelimit -- redis://127.0.0.1/  # shared by instances
//! cargo run --example ratelimit --features ratelimit -- sqlite://limits.db --serve
//! ```
//!
//! Without `--serve` it starts the server on a free port, sends 7 requests
//! with one key (5 pass, 2 get `429` with `Retry-After`), one without a key
//! (never limited), prints what came back and exits. With `--serve` it
//! listens on 127.0.0.1:3000: `curl -i -H 'x-api-key: k1' localhost:3000/`.

use axum::{Router, body::Body, routing::get};
use livedict::LiveDict;
use livedict::ratelimit::{OnError, Quota, RateLimitLayer, RateLimiter};

/// The key of a request: its `x-api-key` header (`None`: not limited).
fn api_key(req: &http::Request<Body>) -> Option<String> {
    req.headers().get("x-api-key")?.to_str().ok().map(str::to_owned)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.iter().find(|a| a.contains("://")).map_or("memory://", String::as_str);
    let serve = args.iter().any(|a| a == "--serve");

    // A store of its own for the limiter's state (a namespace on Redis).
    let store: LiveDict<u64> = LiveDict::open(url).await?;
    let limiter = RateLimiter::new(store, Quota::per_second(5));
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(RateLimitLayer::new(limiter, api_key).on_error(OnError::FailClosed));

    let addr = if serve { "127.0.0.1:3000" } else { "127.0.0.1:0" };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if serve {
        println!("listening on http://{local} (store {url})");
        server.await??;
        return Ok(());
    }

    let client = reqwest::Client::new();
    for i in 1..=7 {
        let resp = client.get(format!("http://{local}/")).header("x-api-key", "k1").send().await?;
        let header =
            |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        println!(
            "request {i} (key k1): {}  RateLimit: {}  Retry-After: {}",
            resp.status(),
            header("ratelimit"),
            header("retry-after")
        );
    }
    let resp = client.get(format!("http://{local}/")).send().await?;
    println!("request without a key: {} (not limited)", resp.status());
    server.abort();
    Ok(())
}
