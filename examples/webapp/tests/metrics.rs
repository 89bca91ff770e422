//! `GET /metrics` scraped during an end-to-end run, on one instance with the embedded
//! defaults and on two instances sharing PostgreSQL and Redis: the Prometheus text parses,
//! the request counters count exactly the requests sent, and the cache hit and latency
//! series those requests must produce are above zero, in `/metrics` and in the status
//! page's last minute.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{AppProcess, Client, Instances};

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (version 0.0.4): `# TYPE` lines into `types`,
/// samples into the list. Panics, naming the line, on anything malformed.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect(line);
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = l.split_once("=\"").expect(line);
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect(line) {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect(line).1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key.trim_start_matches(',').to_owned(), value);
                l = &after[end + 1..];
            }
        }
        let value = rest.split_whitespace().next().expect(line);
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (types, samples)
}

/// A scrape of one instance.
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    async fn of(base: &str) -> Scrape {
        let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let (types, samples) = parse(&resp.text().await.unwrap());
        Scrape { types, samples }
    }

    /// The sum over the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn requests(&self, route: &str) -> f64 {
        self.sum(
            "larder_webapp_requests_total",
            &[("route", route), ("status", "200")],
        )
    }
}

/// Logs in on the first instance, increments the counter round-robin and reads it back
/// twice on every instance; then checks every instance's `/metrics` and status page.
async fn exercise_and_scrape(bases: &[String]) {
    let mut c = Client::new();
    c.login(&bases[0], "ada").await;
    const INCREMENTS: usize = 6;
    for i in 0..INCREMENTS {
        let v = c
            .post_json(&format!("{}/counter", bases[i % bases.len()]), "")
            .await;
        assert_eq!(v["counter"], i as u64 + 1);
    }
    for b in bases {
        for _ in 0..2 {
            assert_eq!(c.whoami(b).await["user"], "ada");
        }
    }

    for (i, b) in bases.iter().enumerate() {
        let m = Scrape::of(b).await;
        for (name, kind) in [
            ("larder_webapp_requests_total", "counter"),
            ("larder_session_cache_hits_total", "counter"),
            ("larder_cache_hits_total", "counter"),
            ("larder_cache_op_seconds", "histogram"),
            ("larder_session_db_op_seconds", "histogram"),
        ] {
            assert_eq!(
                m.types.get(name).map(String::as_str),
                Some(kind),
                "{b}: # TYPE of {name}"
            );
        }
        // Exactly the requests this instance answered (a scrape counts once it is answered).
        let sent_here = (0..INCREMENTS).filter(|n| n % bases.len() == i).count() as f64;
        assert_eq!(m.requests("/counter"), sent_here, "{b}: /counter requests");
        assert_eq!(m.requests("/whoami"), 2.0, "{b}: /whoami requests");
        assert_eq!(
            m.requests("/login"),
            if i == 0 { 1.0 } else { 0.0 },
            "{b}: /login requests"
        );
        // The second read of the session on this instance at least came from the cache.
        let session_hits = m.sum("larder_session_cache_hits_total", &[]);
        assert!(session_hits > 0.0, "{b}: no session cache hit");
        assert!(
            m.sum("larder_cache_hits_total", &[]) > 0.0,
            "{b}: no hit counted by the cache layer"
        );
        assert!(
            m.sum("larder_cache_op_seconds_count", &[("op", "get")]) > 0.0,
            "{b}: no timed cache get"
        );
        assert!(
            m.sum("larder_session_db_op_seconds_count", &[]) > 0.0,
            "{b}: no timed database call"
        );
        if i == 0 {
            assert!(
                m.sum("larder_session_db_op_seconds_count", &[("op", "create")]) >= 1.0,
                "{b}: the login's insert was not timed"
            );
        }

        // The status page's last minute shows the same traffic.
        let status = c.status(b).await;
        let last = &status["last_minute"];
        assert!(last["hits"].as_u64().unwrap() > 0, "{b}: {last}");
        assert!(
            last["hits"].as_f64().unwrap() <= session_hits,
            "{b}: the window counts more hits than /metrics: {last}"
        );
        assert!(
            last["cache_seconds"]["count"].as_u64().unwrap() > 0,
            "{b}: {last}"
        );
        assert!(
            last["database_seconds"]["count"].as_u64().unwrap() > 0,
            "{b}: {last}"
        );
        let p50 = last["database_seconds"]["p50"].as_f64().unwrap();
        let p99 = last["database_seconds"]["p99"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99, "{b}: {last}");
        let html = reqwest::get(format!("{b}/status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let svg = &html[html.find("<svg id=\"last-minute\"").expect(&html)..];
        assert!(svg.contains("<g id=\"db-p99\""), "{svg}");
        assert!(svg.matches("<circle").count() >= 4, "{svg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_one_embedded_instance() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppProcess::start(&[
        "--data-dir".to_string(),
        dir.path().to_str().unwrap().to_string(),
    ]);
    exercise_and_scrape(&[app.url("")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_two_instances_over_postgres_and_redis() {
    let instances = Instances::start(&["web-1", "web-2"]).await;
    exercise_and_scrape(&instances.bases()).await;
}

#[test]
fn the_parser_reads_labels_with_braces_and_escapes() {
    let (types, samples) = parse(
        "# HELP x_total help text\n# TYPE x_total counter\n\
         x_total{route=\"/notes/{key}\",q=\"a\\\"b\\\\c\"} 3\nup 1 1700000000\n",
    );
    assert_eq!(types["x_total"], "counter");
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].labels["route"], "/notes/{key}");
    assert_eq!(samples[0].labels["q"], "a\"b\\c");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!((samples[1].name.as_str(), samples[1].value), ("up", 1.0));
}
