//! One grammar for every backend URL, parsed once:
//! `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?key=value&...][#fragment]`.
//!
//! * Several hosts are allowed (a cluster, a memcached ring), which general URL parsers
//!   refuse.
//! * The credentials end at the **last** `@`, and the password at nothing but that: a
//!   password may hold `/ ? # @ :` raw or percent-encoded. (A `@` elsewhere, in an option
//!   value, must then be written `%40`.)
//! * User name, password, path and option values are percent-decoded; options also decode
//!   `+` as a space.
//! * Nothing derived from a URL ever shows the password: [`BackendUrl`]'s `Debug` and
//!   `Display`, its errors, and [`redact`] (which works on text that does not parse too).
//!   The same holds for the value of any option whose name contains `password`
//!   (`?sentinel_password=...`), shown as `***`.
//!
//! ```
//! use larder_cache_api::url::BackendUrl;
//!
//! let u = BackendUrl::parse("redis+cluster://:p%40ss/w?rd@h1:7000,[::1]:7001/0?response_timeout_ms=200")?;
//! assert_eq!(u.scheme(), "redis+cluster");
//! assert_eq!(u.password(), Some("p@ss/w?rd"));
//! assert_eq!(u.hosts()[1].host, "::1");
//! assert_eq!(u.path(), "/0");
//! u.check_options(&["response_timeout_ms", "connect_timeout_ms"])?;
//! assert_eq!(u.option_parsed::<u64>("response_timeout_ms")?, Some(200));
//! assert!(!u.to_string().contains("p@ss"));
//!
//! let err = BackendUrl::parse("memory://?colour=blue")?.check_options(&["capacity"]).unwrap_err();
//! assert!(err.to_string().contains("colour") && err.to_string().contains("capacity"));
//! # Ok::<(), larder_cache_api::Error>(())
//! ```
//!
//! One file, over 600 lines: the grammar and the redaction that must agree with it, then
//! their tests (about a third of the file).

use std::fmt;
use std::str::FromStr;

use crate::{Error, ErrorKind, Result};

/// One `host[:port]` of a URL. IPv6 addresses are given without their brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host name or address (may be empty: `sled:///dir`, `memory://`).
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
}

/// A parsed backend URL (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    raw: String,
    scheme: String,
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<HostPort>,
    path: String,
    options: Vec<(String, String)>,
    fragment: Option<String>,
}

fn config(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, msg.into())
}

fn decode(s: &str, what: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| config(format!("the {what} of the URL is not UTF-8 once decoded")))
}

impl BackendUrl {
    /// Parses `url`. Errors are [`ErrorKind::Config`] and never quote the password.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            config(format!(
                "{:?} is not a backend URL (expected scheme://...)",
                redact_unparsed(url)
            ))
        })?;
        if !valid_scheme(scheme) {
            return Err(config(format!(
                "invalid URL scheme in {:?}",
                redact_unparsed(url)
            )));
        }
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (mut username, mut password) = (None, None);
        if let Some(info) = userinfo {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if !user.is_empty() {
                username = Some(decode(user, "user name")?);
            }
            if let Some(p) = pass {
                password = Some(decode(p, "password")?);
            }
        }
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(decode(f, "fragment")?)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let hosts = if authority.is_empty() {
            Vec::new()
        } else {
            authority
                .split(',')
                .map(parse_host_port)
                .collect::<Result<Vec<_>>>()?
        };
        let options = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(BackendUrl {
            raw: url.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            username,
            password,
            hosts,
            path: decode(path, "path")?,
            options,
            fragment,
        })
    }

    /// The URL as given, password included: only for handing to a driver that parses its
    /// own options (the SQL store gives it to sqlx). Never print it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The scheme, lower-cased.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, decoded.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, decoded. Never printed by anything in this module.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// The path, decoded, with its leading `/` (empty if none).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The fragment, decoded.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment.as_deref()
    }

    /// The options as given (`?key=value`), decoded.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// Refuses options not in `known`, naming the option and listing the known ones; also
    /// refuses an option given twice.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        for (i, (k, _)) in self.options.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                let list = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(config(format!(
                    "unknown option {k:?} in a {}:// URL (known: {list})",
                    self.scheme
                )));
            }
            if self.options[..i].iter().any(|(o, _)| o == k) {
                return Err(config(format!("option {k:?} is given twice")));
            }
        }
        Ok(())
    }

    /// The value of option `name`.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of option `name` parsed as `T`; a value that does not parse is a
    /// [`ErrorKind::Config`] naming the option.
    pub fn option_parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.option(name)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    config(format!(
                        "option {name}={v:?} is not a valid {}",
                        short_type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// The value of a yes/no option: `true`/`1`/`yes` or `false`/`0`/`no` (or empty for
    /// yes).
    pub fn option_flag(&self, name: &str) -> Result<Option<bool>> {
        self.option(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(config(format!("option {name}={v:?} is not a yes/no value"))),
            })
            .transpose()
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

fn parse_host_port(s: &str) -> Result<HostPort> {
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| config(format!("unclosed '[' in host {s:?}")))?;
        match after {
            "" => (h, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(config(format!("unexpected text after ']' in host {s:?}"))),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(config(format!(
                    "IPv6 host {s:?} must be written in brackets: [addr]:port"
                )))
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>().map_err(|_| {
                config(format!(
                    "port {p:?} of host {host:?} is not a number 0..=65535"
                ))
            })
        })
        .transpose()?;
    Ok(HostPort {
        host: decode(host, "host")?,
        port,
    })
}

impl fmt::Display for BackendUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if self.username.is_some() || self.password.is_some() {
            if let Some(u) = &self.username {
                write!(f, "{u}")?;
            }
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            if h.host.contains(':') {
                write!(f, "[{}]", h.host)?;
            } else {
                write!(f, "{}", h.host)?;
            }
            if let Some(p) = h.port {
                write!(f, ":{p}")?;
            }
        }
        write!(f, "{}", self.path)?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            let v = if is_secret_option(k) { "***" } else { v };
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        if let Some(fr) = &self.fragment {
            write!(f, "#{fr}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendUrl({self})")
    }
}

/// `url` with any password replaced by `***`, for display. Works on any text: when it does
/// not parse, everything between `://` and the last `@` is hidden, and text with no `://`
/// but an `@` is hidden up to that `@`.
///
/// ```
/// use larder_cache_api::url::redact;
///
/// assert_eq!(redact("redis://:se/cret@h:6379/0"), "redis://:***@h:6379/0");
/// assert_eq!(redact("postgres://app:pw@db/app"), "postgres://app:***@db/app");
/// assert!(!redact("redis://:se/cret@h:notaport").contains("cret"));
/// assert!(!redact("junk:se/cret@x").contains("cret"));
/// ```
pub fn redact(url: &str) -> String {
    if let Ok(u) = BackendUrl::parse(url) {
        if u.password.is_none() {
            return hide_secret_options(url);
        }
        // Keep the text as written, hiding only the password.
        if let Some((scheme, rest)) = url.split_once("://") {
            if let Some(at) = rest.rfind('@') {
                let info = &rest[..at];
                let user = info.split_once(':').map_or(info, |(u, _)| u);
                return hide_secret_options(&format!("{scheme}://{user}:***@{}", &rest[at + 1..]));
            }
        }
        return u.to_string();
    }
    hide_secret_options(&redact_unparsed(url))
}

/// Whether the value of option `name` is a secret (`password`, `sentinel_password`, ...).
fn is_secret_option(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// `text` with the value of every `...password...=value` query parameter replaced by `***`
/// (up to the next `&` or `#`), as written otherwise.
fn hide_secret_options(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (head, query) = text.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if is_secret_option(&percent_decode_lossy(k)) => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{head}{}{fragment}", params.join("&"))
}

fn percent_decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn valid_scheme(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// [`redact`] for text that does not parse as a URL. A `://` counts only after a valid
/// scheme: in `redis:/:pa://ss@h` (a slash missing) it is part of the password.
fn redact_unparsed(url: &str) -> String {
    match url
        .split_once("://")
        .filter(|(scheme, _)| valid_scheme(scheme))
    {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
            None => url.to_owned(),
        },
        None => match url.rfind('@') {
            Some(at) => format!("***@{}", &url[at + 1..]),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_every_reserved_character_parse_and_never_print() {
        for pw in [
            "se/cret", "a?b", "h#sh", "at@sign", "co:lon", "/?#@:", "ünï", "p%2Fq",
        ] {
            let url = format!("redis://user:{pw}@host:6379/2?response_timeout_ms=5");
            let u = BackendUrl::parse(&url).unwrap();
            let want = percent_encoding::percent_decode_str(pw)
                .decode_utf8()
                .unwrap()
                .into_owned();
            assert_eq!(u.password(), Some(want.as_str()), "{url}");
            assert_eq!(u.username(), Some("user"));
            assert_eq!(
                u.hosts()[0],
                HostPort {
                    host: "host".into(),
                    port: Some(6379)
                }
            );
            assert_eq!(u.path(), "/2");
            assert_eq!(u.option("response_timeout_ms"), Some("5"));
            for shown in [u.to_string(), format!("{u:?}"), redact(&url)] {
                assert!(!shown.contains(&want) && !shown.contains(pw), "{shown}");
            }
        }
    }

    #[test]
    fn password_options_never_print() {
        for url in [
            "redis+sentinel://h:1/m?sentinel_password=opt-secret-1&connect_timeout_ms=5",
            "redis+sentinel://:main-pw@h:1/m?connect_timeout_ms=5&Sentinel_Password=opt-secret-1#x",
            "redis+sentinel://h:notaport/m?sentinel_%70assword=opt-secret-1",
            "no scheme?sentinel_password=opt-secret-1",
        ] {
            let mut shown = vec![redact(url)];
            if let Ok(u) = BackendUrl::parse(url) {
                assert!(u.options().iter().any(|(_, v)| v == "opt-secret-1"));
                shown.push(u.to_string());
                shown.push(format!("{u:?}"));
            }
            for s in shown {
                assert!(!s.contains("opt-secret-1"), "{url}: {s}");
                assert!(!s.contains("main-pw"), "{url}: {s}");
                assert!(s.contains("***"), "{url}: {s}");
            }
        }
        let kept = redact("redis+sentinel://h:1/m?connect_timeout_ms=5&sentinel_password=x#frag");
        assert_eq!(
            kept,
            "redis+sentinel://h:1/m?connect_timeout_ms=5&sentinel_password=***#frag"
        );
    }

    #[test]
    fn broken_urls_are_config_errors_without_the_password() {
        for url in [
            "redis://:se/cret@h:notaport",
            "redis://:se/cret@[::1",
            "no scheme :se/cret@x",
            "://:se/cret@x",
            "redis://:%FF%FEcret@h",
        ] {
            let e = BackendUrl::parse(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{url}");
            assert!(!e.to_string().contains("cret"), "{url}: {e}");
            assert!(!redact(url).contains("cret"), "{url}: {}", redact(url));
        }
    }

    /// Found by fuzzing: with the scheme's `//` mistyped, the password's own `://` was taken
    /// for the scheme separator and everything before it was shown.
    #[test]
    fn a_separator_inside_the_password_of_a_broken_url_is_hidden() {
        for url in [
            "x-custom.v1:/:\u{2603}://Url%28r:***@\u{2603}[\u{2603}@/%5D%2F%3F#",
            "redis:/:se://cret@h:6379",
            "redis::se://cret@h",
            "re dis://:se/cret@h",
        ] {
            let shown = redact(url);
            assert!(
                !shown.contains("se") && !shown.contains('\u{2603}'),
                "{url} -> {shown}"
            );
            let e = BackendUrl::parse(url).unwrap_err();
            assert!(!e.to_string().contains("se"), "{url}: {e}");
        }
    }

    #[test]
    fn hosts_paths_and_options() {
        let u = BackendUrl::parse("memcache://a:1,b,[::1]:3?timeout_ms=9#frag").unwrap();
        assert_eq!(
            u.hosts(),
            &[
                HostPort {
                    host: "a".into(),
                    port: Some(1)
                },
                HostPort {
                    host: "b".into(),
                    port: None
                },
                HostPort {
                    host: "::1".into(),
                    port: Some(3)
                },
            ]
        );
        assert_eq!(u.fragment(), Some("frag"));
        assert_eq!(u.option_parsed::<u32>("timeout_ms").unwrap(), Some(9));
        assert!(u.option_parsed::<u8>("missing").unwrap().is_none());
        let u =
            BackendUrl::parse("sled:///var/lib/x%20y?flush_every_ms=1&flush_every_ms=2").unwrap();
        assert!(u.hosts().is_empty());
        assert_eq!(u.path(), "/var/lib/x y");
        assert!(u
            .check_options(&["flush_every_ms"])
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let u = BackendUrl::parse("MEMORY://?capacity=lots").unwrap();
        assert_eq!(u.scheme(), "memory");
        let e = u.option_parsed::<u64>("capacity").unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        assert_eq!(
            BackendUrl::parse("x://?flag=")
                .unwrap()
                .option_flag("flag")
                .unwrap(),
            Some(true)
        );
        assert!(BackendUrl::parse("x://?flag=maybe")
            .unwrap()
            .option_flag("flag")
            .is_err());
        assert!(BackendUrl::parse("x://h:70000").is_err());
        assert!(BackendUrl::parse("x://::1").is_err(), "IPv6 needs brackets");
    }
}

#[cfg(test)]
mod props {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    use super::*;

    /// Starts and ends every password and appears nowhere else in a built URL.
    const MARK: char = '\u{2603}';

    fn leaks(shown: &str, pw: &str) -> bool {
        shown.contains(MARK)
            || shown.to_ascii_uppercase().contains("%E2%98%83")
            || shown.contains(pw)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_text_parses_or_is_a_config_error(s in "\\PC{0,80}|[a-z]{1,6}://[:@/?#a-z0-9\\[\\],%]{0,40}") {
            let _ = redact(&s);
            match BackendUrl::parse(&s) {
                Ok(u) => {
                    let _ = (u.to_string(), format!("{u:?}"));
                }
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Config),
            }
        }

        #[test]
        fn redact_never_shows_the_password(
            scheme in "redis|rediss|redis\\+cluster|memcache|postgres|sled|x-y\\.z|re dis",
            sep in prop_oneof![4 => Just("://"), 1 => Just(":/"), 1 => Just("")],
            user in "[a-zé]{0,6}",
            body in "[/?#@:a-zé\u{1F600} %]{0,16}",
            encode in any::<bool>(),
            hosts in "[a-z0-9.]{0,8}(:[0-9]{1,5})?(,\\[::1\\](:[0-9]{1,4})?)?|h:port|\\[::1",
            path in "(/[a-z0-9]{0,6})?",
            query in "(\\?[a-z]{1,4}=[a-z0-9%]{0,6}(&[a-z]{1,4}=[a-z0-9]{0,4})?)?",
            fragment in "(#[a-z]{0,4})?",
        ) {
            let pw = format!("{MARK}{body}{MARK}");
            let pw_text = if encode {
                utf8_percent_encode(&pw, NON_ALPHANUMERIC).to_string()
            } else {
                pw.clone()
            };
            let url = format!("{scheme}{sep}{user}:{pw_text}@{hosts}{path}{query}{fragment}");
            let red = redact(&url);
            prop_assert!(!leaks(&red, &pw), "{} -> {}", url, red);
            match BackendUrl::parse(&url) {
                Ok(u) => {
                    prop_assert!(!leaks(&u.to_string(), &pw), "{}", u);
                    let debug = format!("{u:?}");
                    prop_assert!(!leaks(&debug, &pw), "{}", debug);
                    if encode || !body.contains('%') {
                        prop_assert_eq!(u.password(), Some(pw.as_str()));
                        prop_assert_eq!(u.username(), (!user.is_empty()).then_some(user.as_str()));
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Config);
                    prop_assert!(!leaks(&e.to_string(), &pw), "{}", e);
                }
            }
        }
    }
}
