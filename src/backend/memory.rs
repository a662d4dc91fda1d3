//! The in-process backend: moka for entries, its own timers for expiry.
