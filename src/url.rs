//! Parsing of store URLs (`memory://`, `sqlite://…`, `redis://…`) and their query options.

use crate::error::{Error, Result};

/// Options that may be given more than once (`node=host:port`, seed nodes of a cluster or sentinel URL).
const REPEATABLE: &[&str] = &["node"];

/// A store URL split into scheme, body and query options.
///
/// Backends take the options they know with [`StoreUrl::take`] and call
/// [`StoreUrl::finish`], which rejects whatever is left as unknown.
#[derive(Debug)]
pub(crate) struct StoreUrl<'a> {
    raw: &'a str,
    scheme: &'a str,
    body: &'a str,
    params: Vec<(String, String)>,
}

impl<'a> StoreUrl<'a> {
    /// Splits `raw` into scheme, body (between `://` and `?`) and query options.
    pub(crate) fn parse(raw: &'a str) -> Result<Self> {
        let raw_trimmed = raw.trim();
        let (scheme, rest) = if raw_trimmed.starts_with("sqlite::memory:") {
            ("sqlite", &raw_trimmed["sqlite:".len()..])
        } else {
            let Some((scheme, rest)) = raw_trimmed.split_once("://") else {
                return Err(Error::invalid_url(raw, "expected `scheme://…` (memory, sqlite, redis)"));
            };
            if scheme.is_empty() {
                return Err(Error::invalid_url(raw, "missing scheme"));
            }
            (scheme, rest)
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k.is_empty() {
                return Err(Error::invalid_url(raw, format!("empty option name in `{pair}`")));
            }
            if !REPEATABLE.contains(&k) && params.iter().any(|(name, _)| name == k) {
                return Err(Error::invalid_url(raw, format!("option `{k}` given twice")));
            }
            params.push((k.to_owned(), v.to_owned()));
        }
        Ok(StoreUrl { raw, scheme, body, params })
    }

    /// The scheme, e.g. `redis`.
    pub(crate) fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// Everything between `://` and `?` (for `sqlite::memory:`, `:memory:`).
    pub(crate) fn body(&self) -> &'a str {
        self.body
    }

    /// Removes and returns option `name`.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        let i = self.params.iter().position(|(k, _)| k == name)?;
        Some(self.params.remove(i).1)
    }

    /// Removes every occurrence of option `name` (for repeatable options such as `node`).
    #[cfg(feature = "redis")]
    pub(crate) fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = self.take(name) {
            out.push(v);
        }
        out
    }

    /// Removes option `name` and parses it with `FromStr`.
    pub(crate) fn take_parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("option `{name}` has invalid value `{v}`"))),
        }
    }

    /// Removes option `name`, a duration in milliseconds.
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn take_millis(&mut self, name: &str) -> Result<Option<std::time::Duration>> {
        Ok(self.take_parsed::<u64>(name)?.map(std::time::Duration::from_millis))
    }

    /// An [`Error::InvalidUrl`] about this URL.
    pub(crate) fn error(&self, reason: impl Into<String>) -> Error {
        Error::invalid_url(self.raw, reason)
    }

    /// Fails if any option was not taken by the backend.
    pub(crate) fn finish(self) -> Result<()> {
        match self.params.first() {
            None => Ok(()),
            Some((k, _)) => Err(self.error(format!("unknown option `{k}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::redact;

    #[test]
    fn splits_scheme_body_and_options() {
        let mut u = StoreUrl::parse("sqlite://a/b.db?table=t&synchronous=full").unwrap();
        assert_eq!(u.scheme(), "sqlite");
        assert_eq!(u.body(), "a/b.db");
        assert_eq!(u.take("table").as_deref(), Some("t"));
        assert!(u.take("nope").is_none());
        assert!(StoreUrl::parse("sqlite://x?synchronous=full").unwrap().finish().is_err());
    }

    #[test]
    fn sqlite_memory_is_recognised() {
        let u = StoreUrl::parse("sqlite::memory:").unwrap();
        assert_eq!((u.scheme(), u.body()), ("sqlite", ":memory:"));
        let mut u = StoreUrl::parse("sqlite::memory:?table=x").unwrap();
        assert_eq!(u.take("table").as_deref(), Some("x"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://user:pw@h"), "redis://user:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert!(!redact("redis://u:p@ss@h/0").contains("p@ss"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in ["", "memory", "://", "x://?=1", "redis://h?a=1&a=2"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
