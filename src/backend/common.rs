//! What the persistent backends (SQLite, Redis) share: their handle's
//! `Clone`/`Debug` shape, and the settings every store has (lock lease,
//! codec, `verify_codec`, `share_events`, `observer`, expiry delivery) with their setters and URL options.

use std::time::Duration;

use crate::codec::Codec;
use crate::url::{Invalid, UrlOption, millis, parse, set};

/// A config that holds the shared store settings (implemented by [`store_settings!`]).
pub(crate) trait StoreSettings: crate::delivery::DeliverySettings {
    fn lock_lease_mut(&mut self) -> &mut Duration;
    fn codec_mut(&mut self) -> &mut Codec;
    fn verify_codec_mut(&mut self) -> &mut bool;
    fn share_events_mut(&mut self) -> &mut bool;
    fn observer_mut(&mut self) -> &mut (bool, bool);
}

/// The URL options of the shared settings (each backend reads them after its own table).
pub(crate) fn setting_options<C: StoreSettings>() -> [UrlOption<C>; 8] {
    let [delivery, lease, attempts] = crate::delivery::delivery_options();
    [
        delivery,
        lease,
        attempts,
        UrlOption {
            name: "lock_lease_ms",
            default: "30000",
            apply: |c, v| set(c.lock_lease_mut(), millis(v)?),
        },
        UrlOption {
            name: "share_events",
            default: "`false`",
            apply: |c, v| set(c.share_events_mut(), parse(v)?),
        },
        UrlOption {
            name: "codec",
            default: "`json`",
            apply: |c, v| {
                let codec =
                    Codec::from_name(v).ok_or_else(|| Invalid::because(format!("unknown codec `{v}`")))?;
                set(c.codec_mut(), codec)
            },
        },
        UrlOption {
            name: "verify_codec",
            default: "`false`",
            apply: |c, v| set(c.verify_codec_mut(), parse(v)?),
        },
        UrlOption {
            name: "observer",
            default: "`false`",
            apply: |c, v| match v {
                "true" => set(c.observer_mut(), (true, false)),
                "create" => set(c.observer_mut(), (true, true)),
                "false" => set(c.observer_mut(), (false, false)),
                other => {
                    Err(Invalid::because(format!("observer must be true, false or create, not `{other}`")))
                }
            },
        },
    ]
}

/// The setters of the shared settings on `$config` (fields `lock_lease`,
/// `codec`, `verify_codec`, `share_events`), documented with `$new` — an
/// expression building a config — in the examples and `$backend` in the links.
macro_rules! store_settings {
    ($config:ident, $new:literal, $backend:literal) => {
        crate::delivery::delivery_settings!($config, $new);

        impl crate::backend::common::StoreSettings for $config {
            fn lock_lease_mut(&mut self) -> &mut std::time::Duration {
                &mut self.lock_lease
            }
            fn codec_mut(&mut self) -> &mut crate::codec::Codec {
                &mut self.codec
            }
            fn verify_codec_mut(&mut self) -> &mut bool {
                &mut self.verify_codec
            }
            fn share_events_mut(&mut self) -> &mut bool {
                &mut self.share_events
            }
            fn observer_mut(&mut self) -> &mut (bool, bool) {
                &mut self.observer
            }
        }

        impl $config {
            /// Lease of per-key locks (default 30 s): a holder that vanished
            /// frees the key after it. URL option: `lock_lease_ms`.
            pub fn lock_lease(mut self, lease: std::time::Duration) -> Self {
                self.lock_lease = lease;
                self
            }

            /// Value encoding (default JSON). URL option: `codec`.
            pub fn codec(mut self, codec: crate::codec::Codec) -> Self {
                self.codec = codec;
                self
            }

            /// Decodes every encoded value once (into `V`) before writing it
            /// (default false). A value whose `Serialize` output its own
            /// `Deserialize` rejects is then refused with
            /// [`Error::Encode`](crate::Error::Encode) and nothing is written, instead
            /// of being stored and failing every later read with
            /// [`Error::Decode`](crate::Error::Decode). Non-finite floats under JSON
            /// are refused without it. Costs one decode per write. URL option: `verify_codec`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".verify_codec(true);")]
            /// # let _ = config;
            /// ```
            pub fn verify_codec(mut self, on: bool) -> Self {
                self.verify_codec = on;
                self
            }

            /// The encoder of written values (codec and `verify_codec`).
            pub(super) fn encoder(&self) -> crate::codec::Encoder {
                crate::codec::Encoder::new(self.codec, self.verify_codec)
            }

            /// Whether [`LiveDict::open`](crate::LiveDict::open) and the builder
            #[doc = concat!("call [`", $backend, "::share_events`](super::", $backend, "::share_events)")]
            /// (default false): events of every sharing process reach the watch
            /// streams of every other. URL option: `share_events`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".share_events(true);")]
            /// assert!(config.shares_events());
            /// ```
            pub fn share_events(mut self, share: bool) -> Self {
                self.share_events = share;
                self
            }

            /// Whether events are shared with other processes (see [`share_events`](Self::share_events)).
            pub fn shares_events(&self) -> bool {
                self.share_events
            }

            /// Observer mode (default false; URL option `observer=true`): the
            /// store is opened to look at it without taking part in it, as an
            /// operator's tool or a read-only replica would. Opening it never
            /// starts an expiry driver or sweeper, never claims an expiration,
            /// never takes part in `at_least_once` leases (its expire delivery
            /// is `at_most_once`), never changes the server's configuration
            /// (no `CONFIG SET`) and never creates a table, a file or a Redis
            /// key layout: a store that does not exist yet is an error
            /// ([`Error::Backend`](crate::Error::Backend) for a missing SQLite
            /// file or table, [`Error::InvalidConfig`](crate::Error::InvalidConfig)
            /// for a Redis namespace without a layout) instead of being created
            /// (unless [`observer_create`](Self::observer_create)).
            ///
            /// Reads, `watch` (with `share_events`) and writes work as usual,
            /// except that an observer's reads are not accesses: they never
            /// extend a [time-to-idle](Self::time_to_idle) deadline nor move an
            /// entry in a least-recently-used eviction order. A write does not claim other entries' expirations on its way
            /// (SQLite), and an observer neither evicts for a size bound nor
            /// reports evictions; a write that replaces an entry already past
            /// its deadline reports that expiration in the observer's process,
            /// as any writer does. Expirations are reported by the store's
            /// other (non-observer) processes; with only observers running,
            /// expired entries stay hidden from reads until one opens.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".observer(true);")]
            /// assert!(config.is_observer());
            /// ```
            pub fn observer(mut self, on: bool) -> Self {
                self.observer = (on, on && self.observer.1);
                self
            }

            /// Observer mode that creates the store if it does not exist yet
            /// (URL option `observer=create`): as [`observer`](Self::observer),
            /// except that a missing SQLite file or table, or a missing Redis
            /// key layout, is created (as a normal open would, with nothing
            /// else started). For tools that write into a new store, such as
            /// `livedict import`. `observer_create(true)` implies `observer(true)`.
            ///
            /// ```
            #[doc = concat!("let config = ", $new, ".observer_create(true);")]
            /// assert!(config.is_observer());
            /// ```
            pub fn observer_create(mut self, on: bool) -> Self {
                self.observer = (self.observer.0 || on, on);
                self
            }

            /// Whether the store is opened as an observer (see [`observer`](Self::observer)).
            pub fn is_observer(&self) -> bool {
                self.observer.0
            }

            /// Whether an observer creates a missing store (see [`observer_create`](Self::observer_create)).
            pub(super) fn observer_creates(&self) -> bool {
                !self.observer.0 || self.observer.1
            }
        }
    };
}
pub(crate) use store_settings;

/// `Clone` (a reference count) and `Debug` (its name and `$what`, the
/// store's label) for a backend handle `$backend { shared: Arc<Shared<V>> }`.
macro_rules! shared_handle {
    ($backend:ident, $what:literal) => {
        impl<V> Clone for $backend<V> {
            fn clone(&self) -> Self {
                $backend { shared: std::sync::Arc::clone(&self.shared) }
            }
        }

        impl<V> std::fmt::Debug for $backend<V> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($backend)).field($what, &self.shared.label).finish()
            }
        }
    };
}
pub(crate) use shared_handle;
