//! A real browser (headless Chromium through chromedriver, driven with fantoccini) logs in
//! through the HTML form, sees the status page's last-minute chart drawn from its requests,
//! and stays logged in across a restart of the app.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::AppProcess;
use fantoccini::{ClientBuilder, Locator};
use larder_tests::{eventually, wait_until, Patience};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> String {
    for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if Path::new(p).is_file() {
            return p.to_owned();
        }
    }
    panic!(
        "chromedriver is not installed; the browser test needs Debian's Chromium: \
         apt-get install -y chromium chromium-driver"
    );
}

/// Waits until the element with this id shows `want`: the page may still be navigating, so
/// missing and stale elements are retried for up to 15 s.
async fn wait_text(browser: &fantoccini::Client, id: &str, want: &str) {
    let patience = Patience::new(Duration::from_secs(15)).every(Duration::from_millis(100));
    eventually(patience, format!("#{id} shows {want:?}"), async || {
        let last = match browser.find(Locator::Id(id)).await {
            Ok(el) => match el.text().await {
                Ok(t) if t == want => return Ok(()),
                Ok(t) => t,
                Err(e) => format!("(error: {e})"),
            },
            Err(_) => String::from("(not found)"),
        };
        // The page goes into the report, should this be the last look.
        let page = browser.source().await.unwrap_or_default();
        Err(format!("#{id} shows {last:?}; page: {page}"))
    })
    .await;
}

/// The element's rendered size through WebDriver.
async fn rendered_size(
    el: &fantoccini::elements::Element,
) -> Result<(f64, f64), fantoccini::error::CmdError> {
    let (_, _, w, h) = el.rectangle().await?;
    Ok((w, h))
}

/// Opens the status page and checks its "last minute" chart in the browser.
async fn check_status_chart(
    browser: &fantoccini::Client,
    url: &str,
) -> Result<(), fantoccini::error::CmdError> {
    browser.goto(url).await?;
    let svg = browser
        .wait()
        .for_element(Locator::Id("last-minute"))
        .await?;
    let (w, h) = rendered_size(&svg).await?;
    assert!(w > 100.0 && h > 100.0, "the chart renders at {w}x{h}");
    for (group, mark) in [
        ("hit-ratio-bars", "rect"),
        ("cache-p50", "circle"),
        ("cache-p99", "circle"),
        ("db-p50", "circle"),
        ("db-p99", "circle"),
    ] {
        let marks = browser
            .find_all(Locator::Css(&format!("#{group} > {mark}")))
            .await?;
        assert!(!marks.is_empty(), "#{group} has no {mark}: no data");
        for m in &marks {
            let (w, h) = rendered_size(m).await?;
            assert!(
                w > 0.0 && h > 0.0,
                "a {mark} of #{group} renders at {w}x{h}"
            );
        }
    }
    let ratio = browser.find(Locator::Id("hit-ratio")).await?.text().await?;
    assert!(
        ratio.ends_with("session loads") && !ratio.starts_with("no "),
        "hit ratio: {ratio:?}"
    );
    let db = browser
        .find(Locator::Id("db-latency"))
        .await?
        .text()
        .await?;
    assert!(db.contains(" ms"), "database latency: {db:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_stays_logged_in_across_a_restart() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing; the browser test needs Debian's Chromium: \
         apt-get install -y chromium chromium-driver"
    );
    let data = tempfile::tempdir().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut app = AppProcess::start(&[
        "--data-dir".to_string(),
        data.path().to_str().unwrap().to_string(),
    ]);

    let port = larder_tests::free_port();
    let _driver = Driver(
        Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    wait_until(Duration::from_secs(20), "chromedriver listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromedriver session");

    let result = async {
        let base = app.url("/");
        browser.goto(&base).await?;
        browser
            .wait()
            .for_element(Locator::Id("user"))
            .await?
            .send_keys("hopper")
            .await?;
        browser.find(Locator::Id("login")).await?.click().await?;
        wait_text(&browser, "whoami", "hopper").await;
        browser
            .find(Locator::Id("increment"))
            .await?
            .click()
            .await?;
        // The page before the redirect shows 0.
        wait_text(&browser, "counter", "1").await;

        // The status page charts the last minute from these requests: the SVG renders, and
        // the hit ratio and every latency series have marks that render too.
        check_status_chart(&browser, &app.url("/status")).await?;
        browser.goto(&base).await?;
        wait_text(&browser, "whoami", "hopper").await;

        // Restart the app (clean stop, same data directory), reload the page.
        app.terminate();
        app.spawn();
        // Take "who am I" off the old page first, so only the reloaded page can show it.
        browser
            .execute("document.getElementById('whoami').remove()", vec![])
            .await?;
        assert!(browser.find(Locator::Id("whoami")).await.is_err());
        browser.refresh().await?;
        wait_text(&browser, "whoami", "hopper").await;
        wait_text(&browser, "counter", "1").await;

        // And logging out in the browser shows the form again.
        browser.find(Locator::Id("logout")).await?.click().await?;
        browser.wait().for_element(Locator::Id("user")).await?;
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = browser.close().await;
    result.unwrap();
}
