//! The browser demo: every file under `web/`, embedded at compile time.

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/web");

/// What to open in a browser for a server listening on `addr`. Browsers
/// allow the camera only on HTTPS or localhost, so a server on every
/// interface is opened as localhost, not as 0.0.0.0.
pub fn open_hint(addr: std::net::SocketAddr) -> String {
    let port = addr.port();
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        let host = if ip.is_loopback() {
            ip.to_string()
        } else {
            "localhost".to_owned()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("open http://{host}:{port}/#demo in two browser tabs to start a call")
    } else {
        format!(
            "open http://localhost:{port}/#demo on this machine; browsers on other machines need \
             HTTPS in front of http://{addr} to use the camera"
        )
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Hosts we echo into the CSP: name or address characters only.
fn safe_host(host: &str) -> Option<&str> {
    (!host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    .then_some(host)
}

fn csp(headers: &HeaderMap) -> String {
    // `connect-src 'self'` covers same-origin ws: in current browsers; the
    // explicit ws(s) origins cover older ones.
    let ws = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(safe_host)
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob: mediastream:; connect-src 'self'{ws}; object-src 'none'; \
         base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
}

/// Whether the embedded page has a file at `path` (without the leading `/`).
pub fn has_file(path: &str) -> bool {
    WEB.get_file(path).is_some()
}

/// `GET /` and `GET /<file>`.
pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(file) = WEB.get_file(path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":{"code":"not_found","message":"no such page"}}"#,
        )
            .into_response();
    };
    let mut response = file.contents().into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Ok(v) = HeaderValue::from_str(&csp(&headers)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_hint_names_an_address_where_the_camera_works() {
        let all: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(super::open_hint(all).contains("http://localhost:8080/#demo"));
        let loopback: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert!(super::open_hint(loopback).contains("http://127.0.0.1:9000/#demo"));
        let lan: std::net::SocketAddr = "192.0.2.5:8080".parse().unwrap();
        let hint = super::open_hint(lan);
        assert!(
            hint.contains("http://localhost:8080/#demo") && hint.contains("HTTPS"),
            "{hint}"
        );
    }
}
