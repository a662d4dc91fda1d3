//! The one error type of livedict.

use std::time::Duration;

/// The result type of every fallible livedict operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in livedict.
///
/// Messages are lowercase, carry the key or URL they are about, and never
/// contain a password. Backends map their native errors at the boundary and
/// keep them as the [`std::error::Error::source`].
///
/// ```
/// use livedict::Error;
/// let e = Error::InvalidKey { reason: "empty" };
/// assert_eq!(e.to_string(), "invalid key: empty");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty or longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was rejected.
        reason: &'static str,
    },
    /// The TTL is zero or larger than [`MAX_TTL`](crate::MAX_TTL).
    #[error("invalid ttl {ttl:?}: {reason}")]
    InvalidTtl {
        /// The rejected TTL.
        ttl: Duration,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The store URL (shown without its password) or one of its options is invalid.
    #[error("invalid url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value given to a builder is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// `lock(key, timeout)` did not get the lock within `timeout`.
    #[error("timed out waiting for the lock on key `{key}`")]
    LockTimeout {
        /// The key whose lock was not acquired.
        key: String,
    },
    /// The lock's lease ran out (or it was released) before this guarded write.
    #[error("the lock on key `{key}` was lost (lease expired or released)")]
    LockLost {
        /// The key whose lock was lost.
        key: String,
    },
    /// The request did not finish within the store's request timeout.
    #[error("request `{op}` timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A stored value could not be decoded into `V`. The stored data is left untouched.
    #[error("stored value of key `{key}` cannot be decoded")]
    Decode {
        /// The key whose value could not be decoded.
        key: String,
        /// The codec's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value could not be encoded by the codec; nothing was written.
    #[error("value for key `{key}` cannot be encoded")]
    Encode {
        /// The key whose value could not be encoded.
        key: String,
        /// The codec's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend (SQLite, Redis) failed; `context` says what was being done.
    #[error("{backend} backend error: {context}")]
    Backend {
        /// Which backend failed: `"memory"`, `"sqlite"` or `"redis"`.
        backend: &'static str,
        /// What livedict was doing, naming the URL or path (never a password).
        context: String,
        /// The backend's own error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The store was shut down; no more operations are accepted.
    #[error("the store is shut down")]
    Closed,
    /// The loader of [`get_or_insert_with`](crate::LiveDict::get_or_insert_with)
    /// failed. Every caller that waited on that load gets this error (the same
    /// shared source) and nothing was stored.
    #[error("loader for key `{key}` failed")]
    Loader {
        /// The key whose value was being loaded.
        key: String,
        /// The loader's own error.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// [`incr`](crate::LiveDict::incr) would leave the value's numeric range
    /// (or the stored value does not fit in an `i64`); nothing was written.
    #[error("incrementing key `{key}` by {delta} overflows its value type")]
    Overflow {
        /// The key that was incremented.
        key: String,
        /// The increment.
        delta: i64,
    },
    /// A `livedict::blocking` method was called from inside an async runtime.
    #[error("livedict::blocking called from inside an async runtime; use the async livedict::LiveDict there")]
    InsideRuntime,
}

impl Error {
    /// Builds an [`Error::Backend`] from a native error.
    pub fn backend(
        backend: &'static str,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend { backend, context: context.into(), source: Some(Box::new(source)) }
    }

    /// Builds an [`Error::Backend`] with only a message.
    pub fn backend_msg(backend: &'static str, context: impl Into<String>) -> Self {
        Error::Backend { backend, context: context.into(), source: None }
    }

    /// Builds an [`Error::InvalidUrl`]; the URL's password (if any) is redacted.
    pub fn invalid_url(url: &str, reason: impl Into<String>) -> Self {
        Error::InvalidUrl { url: redact(url), reason: reason.into() }
    }
}

/// Turns the boxed error of third-party Tower middleware back into a livedict
/// error, so a composed stack can end in `.map_err(Error::from)` and be handed
/// to [`LiveDict::from_service`](crate::LiveDict::from_service).
///
/// A livedict error that passed through a boxing middleware (`tower::buffer`,
/// `tower::load_shed`) comes back as it was (a `LockTimeout` stays a
/// `LockTimeout`); any other error (e.g. `tower::load_shed::error::Overloaded`)
/// becomes [`Error::Backend`] with backend `"tower"` and the original as its source.
///
/// ```
/// use livedict::Error;
/// let boxed: tower::BoxError = Box::new(Error::LockTimeout { key: "k".into() });
/// assert!(matches!(Error::from(boxed), Error::LockTimeout { .. }));
/// let shed: tower::BoxError = Box::new(tower::load_shed::error::Overloaded::new());
/// assert!(matches!(Error::from(shed), Error::Backend { backend: "tower", .. }));
/// ```
impl From<tower::BoxError> for Error {
    fn from(e: tower::BoxError) -> Self {
        match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::Backend { backend: "tower", context: e.to_string(), source: Some(e) },
        }
    }
}

/// Replaces the password of `scheme://user:password@host…` by `***`.
///
/// ```
/// # // redact is internal; shown through the error it feeds:
/// let e = livedict::Error::invalid_url("redis://u:secret@h:1/0?x=1", "bad");
/// assert!(!e.to_string().contains("secret"));
/// ```
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') || !userinfo.is_empty() {
                format!("{user}:***")
            } else {
                String::new()
            };
            format!("{scheme}://{masked}@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}
