//! The zero-configuration default: SQLite and sled under the data directory; a restart
//! keeps everyone logged in.
#![allow(clippy::unwrap_used)]

mod common;

use common::{AppProcess, Client};

#[tokio::test]
async fn embedded_default_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--data-dir".to_string(),
        dir.path().to_str().unwrap().to_string(),
    ];
    let mut app = AppProcess::start(&args);
    let base = app.url("");
    let mut c = Client::new();
    assert!(c.whoami(&base).await["user"].is_null());
    c.login(&base, "grace").await;
    for n in 1..=3 {
        assert_eq!(
            c.post_json(&format!("{base}/counter"), "").await["counter"],
            n
        );
    }
    let status = c.status(&base).await;
    assert!(status["database"].as_str().unwrap().starts_with("sqlite "));
    assert!(status["cache"].as_str().unwrap().starts_with("sled "));
    assert_eq!(status["sessions"], 1);
    let html = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("cache hits / misses / errors"), "{html}");
    assert!(html.contains("larder.session-expiry"), "{html}");
    let anonymous = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(anonymous.contains("action=\"/login\""), "{anonymous}");

    // A clean stop (SIGTERM) and a start on the same data directory.
    app.terminate();
    assert!(dir.path().join("sessions.db").exists());
    app.spawn();
    let v = c.whoami(&base).await;
    assert_eq!(v["user"], "grace", "logged out by a restart");
    assert_eq!(v["counter"], 3);

    // Log out: the cookie no longer names a session.
    let (status, _) = {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{base}/logout"))
            .header("cookie", c.cookie.clone().unwrap())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 303);
    assert!(c.whoami(&base).await["user"].is_null());
}
