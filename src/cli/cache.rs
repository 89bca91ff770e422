//! `larder cache ...`: a round trip, and what the backend declares about itself.

use std::fmt::Write as _;
use std::time::Instant;

use larder_cache_api::url::redact;
use larder_cache_api::{Cache, Error, ErrorKind, Key, Result, Ttl};

use super::render::{ms, now_ms};
use super::{need, open_cache, Cli};

pub(super) async fn ping(cli: &Cli) -> Result<String> {
    let t0 = Instant::now();
    let backend = open_cache(cli).await?;
    let connect = t0.elapsed();
    let name = backend.capabilities().name;
    let cache = Cache::new(backend);
    let key = Key::new(format!(
        "larder:cli:ping:{}:{}",
        std::process::id(),
        now_ms()
    ))?;
    let value = format!("ping {}", now_ms());
    let ttl = Ttl::from_secs(60)?;

    let t = Instant::now();
    cache.set(&key, value.as_str(), Some(ttl)).await?;
    let put = t.elapsed();
    let t = Instant::now();
    let got: Option<String> = cache.get(&key).await?;
    let get = t.elapsed();
    let t = Instant::now();
    let deleted = cache.delete(&key).await?;
    let del = t.elapsed();

    if got.as_deref() != Some(value.as_str()) {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("{name}: read back {got:?} right after writing {value:?}"),
        ));
    }
    if !deleted {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("{name}: the scratch key was gone before it was deleted"),
        ));
    }
    Ok(format!(
        "OK {name}: connect {}, put {}, get {}, delete {}\n",
        ms(connect),
        ms(put),
        ms(get),
        ms(del)
    ))
}

pub(super) async fn stats(cli: &Cli) -> Result<String> {
    let url = need(&cli.cache_url, "--cache-url", "LARDER_CACHE_URL")?;
    let backend = crate::connect(url).await?;
    let c = backend.capabilities();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<(&str, String)> = vec![
        ("backend", c.name.to_owned()),
        ("url", redact(url)),
        ("cas", yn(c.cas).to_owned()),
        ("linearizable cas", yn(c.linearizable_cas).to_owned()),
        ("touch", yn(c.touch).to_owned()),
        ("may evict", yn(c.may_evict).to_owned()),
        ("persistent", yn(c.persistent).to_owned()),
        ("shared", yn(c.shared).to_owned()),
        ("ttl precision", ms(c.ttl_precision)),
        ("max value size", format!("{} bytes", c.max_value_size)),
        ("max key length", format!("{} bytes", c.max_key_len)),
        ("coordination", {
            use larder_coord::{check_backend, Durability};
            match (
                check_backend(&backend, Durability::Required),
                check_backend(&backend, Durability::AcceptLoss),
            ) {
                (Ok(()), _) => "yes (leases and periodic tasks)".to_owned(),
                (Err(e), Ok(())) => format!(
                    "only with Durability::AcceptLoss (a period may run twice after the \
                         store lost its data): {}",
                    e.message()
                ),
                (_, Err(e)) => format!("no: {}", e.message()),
            }
        }),
    ];
    // What the backend tells about its own configuration.
    rows.extend(backend.details());
    let t = Instant::now();
    backend.get(&Key::new("larder:cli:stats-probe")?).await?;
    rows.push(("round trip", ms(t.elapsed())));
    rows.push((
        "counters",
        "hit/miss counters live in the application (larder::layer::Instrumented, \
         CachedStore::stats())"
            .to_owned(),
    ));
    let mut out = String::new();
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<18} {value}");
    }
    Ok(out)
}
