//! The web client is served from inside the binary: `GET /` is the HTML page, every asset
//! answers 200 with its content type and the security headers, and every file under `web/`
//! is embedded (a file added to the directory but not to `web::ASSETS` fails here).

use std::path::{Path, PathBuf};

use magpie_server::testing::TestServer;
use magpie_server::web;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// Every file under `dir`, relative to `root`, with `/` separators.
fn files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap();
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn expected_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap() {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        other => panic!("no expected type for .{other}"),
    }
}

#[test]
fn every_file_under_web_is_embedded() {
    let root = web_dir();
    let mut on_disk = Vec::new();
    files(&root, &root, &mut on_disk);
    on_disk.sort();
    let mut embedded: Vec<String> = web::ASSETS.iter().map(|a| a.path.to_owned()).collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "web/ and web::ASSETS must list the same files"
    );
    for a in web::ASSETS {
        let disk = std::fs::read(root.join(a.path)).unwrap();
        assert_eq!(disk, a.body, "{} embeds stale bytes", a.path);
        assert_eq!(a.content_type, expected_type(a.path), "{}", a.path);
    }
}

#[tokio::test]
async fn root_serves_the_page_and_assets_have_their_types() {
    let server = TestServer::start().await;
    let base = server.base_url();
    let http = reqwest::Client::new();

    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self' ws://"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(html.contains("<div id=\"app\""));
    assert!(html.contains("/app/js/main.js"));

    for a in web::ASSETS {
        let url = if a.path == "index.html" {
            format!("{base}/")
        } else {
            format!("{base}/{}", a.path)
        };
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.headers()["content-type"], a.content_type, "{url}");
        assert!(r.headers().contains_key("content-security-policy"), "{url}");
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(r.bytes().await.unwrap().as_ref(), a.body, "{url}");
        // Revalidation: the same ETag answers 304 without a body.
        let again = http
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{url}");
    }

    let missing = http
        .get(format!("{base}/app/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The API is untouched by the static routes.
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    server.stop().await;
}
