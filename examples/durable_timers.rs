//! Durable timers: "email the user when the trial ends", delivered at least
//! once even if this process crashes or the mailer fails (SQLite here; the
//! same URL options work on Redis).
//!
//! ```text
//! cargo run --example durable_timers
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};

#[tokio::main]
async fn main() -> livedict::Result<()> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!(
        "sqlite://{}?expire_delivery=at_least_once&expire_lease_ms=2000&expire_max_attempts=5",
        dir.path().join("trials.db").display()
    );
    let trials: LiveDict<String> = LiveDict::open(&url).await?;

    // The mailer is down for the first try: the callback returns an error
    // (a panic or a timeout counts the same), so the expiration is delivered
    // again, `attempt` one higher.
    let mailer_up = AtomicBool::new(false);
    trials.register_callback(
        EventKind::Expire,
        Callback::fallible(move |ev: &Event<String>| {
            let email = ev.value().map(String::as_str).unwrap_or("?");
            if !mailer_up.swap(true, Ordering::SeqCst) {
                println!("trial {} ended: mailer unavailable, retrying (attempt {})", ev.key(), ev.attempt());
                return Err(format!("mailer unavailable (attempt {})", ev.attempt()));
            }
            println!("trial {} ended: emailed {email} (attempt {})", ev.key(), ev.attempt());
            Ok(())
        }),
    )?;

    trials.set_with_ttl("trial:42", "ada@example.com".into(), Duration::from_millis(200)).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = trials.stats();
    println!(
        "expirations {}, redelivered {}, callback errors {}",
        stats.expirations, stats.expirations_redelivered, stats.callbacks_failed
    );
    // Writes the acknowledgements of every expiration whose callbacks returned.
    trials.shutdown().await
}
