//! The web view in a real browser: headless Chromium driven by Playwright
//! (`tests/browser/web.mjs`) against the real system. Needs `chromium` (`CHROMIUM`, else
//! /usr/bin/chromium) and `playwright-core` (`PLAYWRIGHT_DIR`, the folder holding its
//! node_modules); `.ci/run` installs both. Without them the test says so and passes, unless
//! `REQUIRE_BROWSER=1` (as in `.ci/run`), where their absence fails it.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let playwright = PathBuf::from(std::env::var_os("PLAYWRIGHT_DIR")?);
    (chromium.exists() && playwright.join("node_modules/playwright-core").exists())
        .then_some((chromium, playwright))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_starts_follows_cancels_and_refunds_orders_from_the_page() {
    let Some((chromium, playwright)) = browser() else {
        assert!(
            std::env::var("REQUIRE_BROWSER").as_deref() != Ok("1"),
            "REQUIRE_BROWSER=1 but no chromium or playwright-core (CHROMIUM, PLAYWRIGHT_DIR)"
        );
        eprintln!("skipped: no chromium or playwright-core (set CHROMIUM and PLAYWRIGHT_DIR)");
        return;
    };
    let app = spawn_app().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/web.mjs");
    let shots = std::env::var("SCREENSHOT_DIR").unwrap_or_default();
    let url = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(url)
            .args((!shots.is_empty()).then_some(shots))
            .env("CHROMIUM", chromium)
            .env("PLAYWRIGHT_DIR", playwright)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}
