//! How expirations reach the `Expire` callbacks: at most once (the default)
//! or at least once, acknowledged (see [`Delivery`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::url::{Invalid, UrlOption, millis, parse, set};

/// How expirations are delivered to the `Expire` callbacks.
///
/// - [`AtMostOnce`](Delivery::AtMostOnce) (the default): an expiration is
///   claimed and removed, then handed to the callbacks. A process that dies
///   between the two loses it; a callback that fails (returns `Err`, panics
///   or times out) is counted, its error logged, and not retried.
/// - [`AtLeastOnce`](Delivery::AtLeastOnce): on SQLite and Redis a claimed
///   expiration stays in the store, leased to the process that claimed it,
///   until every `Expire` callback of that process returned for it (without
///   panicking, within its timeout, and `Ok` for a
///   [fallible](crate::Callback::fallible) one): it is then
///   **acknowledged** and dropped. A callback that failed (returned `Err`,
///   panicked or timed out) gives it back at once; a claimer that died gives
///   it back when its lease (`expire_lease_ms`, default 30 s) runs out. Any
///   process on the same file or namespace — or the next one opened — then
///   delivers it again, with the same key and value and
///   [`Event::attempt`](crate::Event::attempt) one higher, up to
///   `expire_max_attempts` (default 10) deliveries, after which it is dropped
///   and counted in [`Stats::expirations_abandoned`](crate::Stats::expirations_abandoned)
///   (the process whose last attempt failed logs that failure at error level).
///   On `memory://` a failed callback gets the expiration again in-process
///   (there is no other process: a crash loses it).
///
/// URL option `expire_delivery=at_most_once|at_least_once`; builder twins
/// [`Builder::expire_delivery`](crate::Builder::expire_delivery) and
/// `expire_delivery` on each backend's config.
///
/// Callbacks should be idempotent under `AtLeastOnce`: after a crash, or a
/// lease shorter than the callback's run, the same expiration may reach a
/// callback twice ([`Event::attempt`](crate::Event::attempt) tells a
/// redelivery). Without failures each is delivered exactly once.
///
/// ```
/// use livedict::Delivery;
/// assert_eq!("at_least_once".parse::<Delivery>().unwrap(), Delivery::AtLeastOnce);
/// assert_eq!(Delivery::default(), Delivery::AtMostOnce);
/// assert!("exactly_once".parse::<Delivery>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Claimed, removed, then delivered: a crash in between loses it.
    #[default]
    AtMostOnce,
    /// Leased until acknowledged; redelivered if the claimer dies or a callback fails.
    AtLeastOnce,
}

impl Delivery {
    /// The name used in URLs: `at_most_once` or `at_least_once`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtMostOnce => "at_most_once",
            Delivery::AtLeastOnce => "at_least_once",
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Delivery {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "at_most_once" => Ok(Delivery::AtMostOnce),
            "at_least_once" => Ok(Delivery::AtLeastOnce),
            other => Err(Error::InvalidConfig(format!(
                "expire_delivery must be at_most_once or at_least_once, not `{other}`"
            ))),
        }
    }
}

/// The expiry delivery settings every backend has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpireDelivery {
    pub(crate) mode: Delivery,
    /// How long a claimed, unacknowledged expiration stays with its claimer.
    pub(crate) lease: Duration,
    /// Deliveries before an unacknowledged expiration is dropped (≥ 1).
    pub(crate) max_attempts: u32,
}

impl Default for ExpireDelivery {
    fn default() -> Self {
        ExpireDelivery { mode: Delivery::AtMostOnce, lease: Duration::from_secs(30), max_attempts: 10 }
    }
}

impl ExpireDelivery {
    /// Whether expirations are leased and acknowledged.
    pub(crate) fn at_least_once(&self) -> bool {
        self.mode == Delivery::AtLeastOnce
    }

    /// The lease in ms (at least 1).
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn lease_ms(&self) -> i64 {
        (self.lease.as_millis() as i64).max(1)
    }
}

/// A config that holds [`ExpireDelivery`] (implemented by [`delivery_settings!`]).
pub(crate) trait DeliverySettings {
    fn delivery_mut(&mut self) -> &mut ExpireDelivery;
}

/// The URL options of the delivery settings (every backend reads them).
pub(crate) fn delivery_options<C: DeliverySettings>() -> [UrlOption<C>; 3] {
    [
        UrlOption {
            name: "expire_delivery",
            default: "`at_most_once`",
            apply: |c, v| {
                let mode = v.parse::<Delivery>().map_err(|e| Invalid::because(e.to_string()))?;
                set(&mut c.delivery_mut().mode, mode)
            },
        },
        UrlOption {
            name: "expire_lease_ms",
            default: "30000",
            apply: |c, v| {
                let lease = millis(v)?;
                if lease.is_zero() {
                    return Err(Invalid::because("expire_lease_ms must be at least 1"));
                }
                set(&mut c.delivery_mut().lease, lease)
            },
        },
        UrlOption {
            name: "expire_max_attempts",
            default: "10",
            apply: |c, v| {
                let n: u32 = parse(v)?;
                if n == 0 {
                    return Err(Invalid::because("expire_max_attempts must be at least 1"));
                }
                set(&mut c.delivery_mut().max_attempts, n)
            },
        },
    ]
}

/// The builder twins of the delivery options on `$config` (field `delivery`),
/// documented with `$new`, an expression building a config.
macro_rules! delivery_settings {
    ($config:ident, $new:literal) => {
        impl crate::delivery::DeliverySettings for $config {
            fn delivery_mut(&mut self) -> &mut crate::delivery::ExpireDelivery {
                &mut self.delivery
            }
        }

        impl $config {
            /// How expirations reach the `Expire` callbacks (default
            /// [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce); see
            /// [`Delivery`](crate::Delivery)). URL option: `expire_delivery`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".expire_delivery(livedict::Delivery::AtLeastOnce);")]
            /// # let _ = config;
            /// ```
            pub fn expire_delivery(mut self, delivery: crate::Delivery) -> Self {
                self.delivery.mode = delivery;
                self
            }

            /// With [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): how long
            /// a claimed expiration waits for its acknowledgement before any
            /// process may deliver it again (default 30 s; at least 1 ms). URL
            /// option: `expire_lease_ms`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".expire_lease(std::time::Duration::from_secs(5));")]
            /// # let _ = config;
            /// ```
            pub fn expire_lease(mut self, lease: std::time::Duration) -> Self {
                self.delivery.lease = lease.max(std::time::Duration::from_millis(1));
                self
            }

            /// With [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce): how
            /// many times an expiration is delivered before it is dropped
            /// unacknowledged (default 10; at least 1). URL option:
            /// `expire_max_attempts`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".expire_max_attempts(3);")]
            /// # let _ = config;
            /// ```
            pub fn expire_max_attempts(mut self, attempts: u32) -> Self {
                self.delivery.max_attempts = attempts.max(1);
                self
            }
        }
    };
}
pub(crate) use delivery_settings;
