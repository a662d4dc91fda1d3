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

    /// Takes each of `options` the URL gives and applies it to `config`, in
    /// the table's order. A value its parser refuses is
    /// [`Error::InvalidUrl`] naming the option.
    pub(crate) fn apply<C>(&mut self, config: &mut C, options: &[UrlOption<C>]) -> Result<()> {
        for option in options {
            if let Some(value) = self.take(option.name) {
                (option.apply)(config, &value).map_err(|why| match why {
                    Invalid::Value => self.error(format!(
                        "option `{}` has invalid value `{value}` (default: {})",
                        option.name,
                        option.default.trim_matches('`')
                    )),
                    Invalid::Because(why) => self.error(why),
                })?;
            }
        }
        Ok(())
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

/// One query option of a backend's URL, declared once: the parser
/// ([`StoreUrl::apply`]) and the documentation tables (README, rustdoc;
/// checked against these by tests) both come from the backend's table.
pub(crate) struct UrlOption<C> {
    /// The option's name in the query string.
    pub(crate) name: &'static str,
    /// Its default, as the documentation tables show it.
    pub(crate) default: &'static str,
    /// Reads the value into the config.
    pub(crate) apply: fn(&mut C, &str) -> std::result::Result<(), Invalid>,
}

impl<C> Clone for UrlOption<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for UrlOption<C> {}

/// Why an option's value was refused.
#[derive(Debug)]
pub(crate) enum Invalid {
    /// Not a value of the option's type (the message names option and value).
    Value,
    /// Another reason, said in full.
    #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
    Because(String),
}

impl Invalid {
    /// [`Invalid::Because`].
    #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
    pub(crate) fn because(why: impl Into<String>) -> Invalid {
        Invalid::Because(why.into())
    }
}

/// Stores a parsed option value (for the `apply` functions of option tables).
pub(crate) fn set<T>(slot: &mut T, value: T) -> std::result::Result<(), Invalid> {
    *slot = value;
    Ok(())
}

/// Parses an option value with `FromStr`.
pub(crate) fn parse<T: std::str::FromStr>(value: &str) -> std::result::Result<T, Invalid> {
    value.parse().map_err(|_| Invalid::Value)
}

/// Parses a duration given in milliseconds.
pub(crate) fn millis(value: &str) -> std::result::Result<std::time::Duration, Invalid> {
    parse::<u64>(value).map(std::time::Duration::from_millis)
}

/// Parses `time_to_idle_ms` (every backend): a whole, non-zero number of
/// milliseconds, at most [`MAX_TTL`](crate::MAX_TTL).
pub(crate) fn idle_millis(value: &str) -> std::result::Result<std::time::Duration, Invalid> {
    let idle = millis(value)?;
    check_idle(idle).map_err(|e| Invalid::Because(e.to_string()))?;
    Ok(idle)
}

/// Checks a time-to-idle (URL option `time_to_idle_ms`, `Builder::time_to_idle`):
/// non-zero and at most [`MAX_TTL`](crate::MAX_TTL); otherwise [`Error::InvalidConfig`](crate::Error::InvalidConfig).
pub(crate) fn check_idle(idle: std::time::Duration) -> Result<()> {
    if idle.is_zero() || idle > crate::MAX_TTL {
        return Err(crate::Error::InvalidConfig(format!(
            "time_to_idle must be between 1 ms and 100 years, not {idle:?}"
        )));
    }
    Ok(())
}

/// The option names and defaults of a documentation table in `markdown`:
/// the rows `| `name` | default | … |` of the first table after `heading`
/// (a line containing it), for the tests that keep docs and parsers in step.
#[cfg(test)]
pub(crate) fn documented_options(markdown: &str, heading: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut lines = markdown.lines().map(|l| l.trim_start_matches("///").trim());
    lines.by_ref().find(|l| l.contains(heading));
    let mut in_table = false;
    for line in lines {
        if line.starts_with('|') {
            in_table = true;
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if let (Some(name), Some(default)) = (cells.get(1), cells.get(2))
                && name.starts_with('`')
            {
                rows.push((name.trim_matches('`').to_owned(), (*default).to_owned()));
            }
        } else if in_table {
            break;
        }
    }
    rows
}

/// Checks that the table after `heading` in `markdown` documents exactly
/// `options` (plus `extra`, options read outside the table), with their defaults.
#[cfg(test)]
pub(crate) fn check_documented<C>(markdown: &str, heading: &str, options: &[UrlOption<C>], extra: &[&str]) {
    let documented = documented_options(markdown, heading);
    let names: Vec<&str> =
        documented.iter().map(|(n, _)| n.as_str()).filter(|n| !extra.contains(n)).collect();
    let declared: Vec<&str> = options.iter().map(|o| o.name).collect();
    let mut a = names.clone();
    let mut b = declared.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the table after `{heading}` documents {names:?}; the parser reads {declared:?}");
    for option in options {
        let (_, default) = documented.iter().find(|(n, _)| n == option.name).expect("checked above");
        assert_eq!(default, option.default, "default of `{}` after `{heading}`", option.name);
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
