//! Backend URLs come from configuration and environment variables. Parsing any text must not
//! panic, and nothing derived from a URL (`redact`, `Display`, `Debug`, errors) may show its
//! password, whatever the password holds (`/ ? # @ :`, non-ASCII, percent escapes) and
//! however the rest of the URL is broken.
#![no_main]

use arbitrary::Arbitrary;
use larder_cache_api::url::{redact, BackendUrl};
use larder_cache_api::ErrorKind;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Marks every password (start, middle, end) and appears nowhere else in a built URL, so any
/// shown piece of a password that holds a marker is caught.
const MARK: char = '\u{2603}';
const MARK_ENCODED: &str = "%E2%98%83";

#[derive(Debug, Arbitrary)]
enum Breakage {
    None,
    BadPort,
    UnclosedBracket,
    BadScheme,
    NoSchemeSeparator,
    BadEscapeInPassword,
    IPv6WithoutBrackets,
}

#[derive(Debug, Arbitrary)]
struct Parts {
    scheme: u8,
    user: Option<String>,
    pw_a: String,
    pw_b: String,
    encode_password: bool,
    hosts: Vec<(String, Option<u16>, bool)>,
    path: Option<String>,
    options: Vec<(String, String)>,
    fragment: Option<String>,
    breakage: Breakage,
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Text(&'a str),
    Built(Parts),
}

const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+cluster",
    "memcache",
    "postgres",
    "sqlite",
    "sled",
    "memory",
    "x-custom.v1",
];

/// Everything but letters and digits.
const STRICT: &AsciiSet = NON_ALPHANUMERIC;

/// `s` without the marker, raw or percent-encoded as text.
fn unmarked(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| *c != MARK).collect();
    while let Some(i) = out.to_ascii_uppercase().find(MARK_ENCODED) {
        out.replace_range(i..i + MARK_ENCODED.len(), "");
    }
    out
}

fn host_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(40)
        .collect()
}

fn shown_leaks(shown: &str, pw: &str) -> bool {
    shown.contains(MARK)
        || shown.to_ascii_uppercase().contains(MARK_ENCODED)
        || (!pw.is_empty() && shown.contains(pw))
}

fn built(p: Parts) {
    let pw = format!(
        "{MARK}{}{MARK}{}{MARK}",
        unmarked(&p.pw_a),
        unmarked(&p.pw_b)
    );
    // A raw password keeps its `/ ? # @ :` as they are; only `%` would change its meaning.
    let raw_ok = !pw.contains('%');
    let pw_text = match (&p.breakage, p.encode_password) {
        (Breakage::BadEscapeInPassword, _) => format!("{pw}%FF%FE"),
        (_, true) => utf8_percent_encode(&pw, STRICT).to_string(),
        (_, false) => pw.clone(),
    };
    let scheme = match p.breakage {
        Breakage::BadScheme => "re dis",
        _ => SCHEMES[usize::from(p.scheme) % SCHEMES.len()],
    };
    let sep = match p.breakage {
        Breakage::NoSchemeSeparator => ":/",
        _ => "://",
    };
    let user = p.user.as_deref().map(unmarked).unwrap_or_default();
    let mut url = format!(
        "{scheme}{sep}{}:{pw_text}@",
        utf8_percent_encode(&user, STRICT)
    );
    let mut hosts = Vec::new();
    for (h, port, v6) in p.hosts.iter().take(4) {
        let text = match (v6, port) {
            (true, Some(port)) => format!("[::{}]:{port}", port % 0xffff),
            (true, None) => "[::1]".to_owned(),
            (false, Some(port)) => format!("{}:{port}", host_text(h)),
            (false, None) => host_text(h),
        };
        hosts.push(text);
    }
    match p.breakage {
        Breakage::BadPort => hosts.push("h:notaport".into()),
        Breakage::UnclosedBracket => hosts.push("[::1".into()),
        Breakage::IPv6WithoutBrackets => hosts.push("::1:6379".into()),
        _ => {}
    }
    url.push_str(&hosts.join(","));
    if let Some(path) = &p.path {
        url.push('/');
        url.push_str(&utf8_percent_encode(&unmarked(path), STRICT).to_string());
    }
    if !p.options.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in p.options.iter().take(4) {
            q.append_pair(&unmarked(k), &unmarked(v));
        }
        url.push('?');
        url.push_str(&q.finish());
    }
    if let Some(f) = &p.fragment {
        url.push('#');
        url.push_str(&utf8_percent_encode(&unmarked(f), STRICT).to_string());
    }

    let red = redact(&url);
    assert!(!shown_leaks(&red, &pw), "redact leaks:\n{url}\n{red}");
    match BackendUrl::parse(&url) {
        Ok(u) => {
            for shown in [u.to_string(), format!("{u:?}"), redact(u.raw())] {
                assert!(!shown_leaks(&shown, &pw), "shown:\n{url}\n{shown}");
            }
            assert!(matches!(p.breakage, Breakage::None), "{url} parsed");
            if p.encode_password || raw_ok {
                assert_eq!(u.password(), Some(pw.as_str()), "{url}");
            }
            let want_user = (!user.is_empty()).then_some(user.as_str());
            assert_eq!(u.username(), want_user, "{url}");
            let want_hosts = if hosts.concat().is_empty() && hosts.len() <= 1 {
                0
            } else {
                hosts.len()
            };
            assert_eq!(u.hosts().len(), want_hosts, "{url}");
            if let Some(path) = &p.path {
                assert_eq!(u.path(), format!("/{}", unmarked(path)), "{url}");
            }
            assert_eq!(u.fragment(), p.fragment.as_deref().map(unmarked).as_deref());
            // Its own display parses, with no password in it.
            let again = BackendUrl::parse(&u.to_string());
            if let Ok(again) = again {
                assert!(again.password().is_none_or(|p| !p.contains(MARK)));
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(!shown_leaks(&e.to_string(), &pw), "error: {url}\n{e}");
            assert!(!shown_leaks(&format!("{e:?}"), &pw), "error: {url}\n{e:?}");
            // A URL built by the grammar, unbroken, parses.
            let broken = !matches!(p.breakage, Breakage::None) || (!p.encode_password && !raw_ok);
            assert!(broken, "{url}: {e}");
        }
    }
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Text(s) => {
        let _ = redact(s);
        match BackendUrl::parse(s) {
            Ok(u) => {
                let _ = (u.to_string(), format!("{u:?}"));
                let _ = u.check_options(&["a", "b"]);
                let _ = u.option_parsed::<u64>("a");
                let _ = u.option_flag("b");
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Config),
        }
    }
    Input::Built(p) => built(p),
});
