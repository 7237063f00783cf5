//! The live page: one HTML file with no build step (`live.html`, embedded) that lists the
//! resources of a collection (`?collection=NAME`, default `power`) from `GET /{collection}` and
//! applies the events of `/realtime` to the table as they come.
//!
//! It keeps the cursor of the last event (or of its first subscription): after a disconnection
//! (the server went away, or told it "too slow") it subscribes again with `"since": cursor` and
//! applies the events it missed, without listing the collection again. When the server answers
//! `cursor_expired` (or `bad_cursor`), it starts a new stream and lists the collection.
//!
//! It is served at `/live`, and at `/` to browsers (an `Accept` that prefers `text/html`);
//! API clients asking `/` for JSON (or anything, or nothing) keep getting `{"resources": [...]}`.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page, as served.
pub(crate) const LIVE_HTML: &str = include_str!("live.html");

/// The `Content-Security-Policy` of the page: its own inline script (pinned by hash) and style,
/// requests to its own origin only.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let script = inline_script(LIVE_HTML);
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

/// The text of the one inline `<script>` of `html`.
fn inline_script(html: &str) -> &str {
    let start = html.find("<script>").map(|i| i + "<script>".len());
    let end = html.rfind("</script>");
    match (start, end) {
        (Some(start), Some(end)) if start <= end => &html[start..end],
        _ => "",
    }
}

/// `GET /live`: the page.
pub(crate) async fn live() -> Response {
    response()
}

/// The page with its headers.
pub(crate) fn response() -> Response {
    let csp = HeaderValue::from_str(&CSP).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::VARY, HeaderValue::from_static("Accept")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        LIVE_HTML,
    )
        .into_response()
}

/// Whether a request for `/` wants the page rather than JSON: its `Accept` gives `text/html` a
/// higher quality than `application/json`. Browsers send `text/html,...,*/*;q=0.8`; API clients
/// send `application/json`, `*/*` or nothing, and a tie goes to JSON.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    let mut html = 0.0_f32;
    let mut json = 0.0_f32;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    let is_q = k.trim().eq_ignore_ascii_case("q");
                    if is_q {
                        v.trim().parse::<f32>().ok()
                    } else {
                        None
                    }
                })
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "text/html" | "application/xhtml+xml" => html = html.max(q),
                "application/json" | "application/*" => json = json.max(q),
                _ => {}
            }
        }
    }
    html > 0.0 && html > json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_json() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                       image/webp,*/*;q=0.8";
        assert!(wants_html(&accept(browser)));
        assert!(wants_html(&accept("text/html")));
        assert!(wants_html(&accept("application/json;q=0.5, text/html")));
        assert!(!wants_html(&HeaderMap::new()));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("application/json, text/html")));
        assert!(!wants_html(&accept("text/html;q=0")));
        assert!(!wants_html(&accept("text/plain")));
    }

    #[test]
    fn the_script_is_pinned_by_its_hash() {
        let script = inline_script(LIVE_HTML);
        assert!(script.contains("realtime"));
        assert!(script.len() > 1000, "the page's script was not found");
        assert!(
            !script.contains("<script"),
            "the page must have a single script"
        );
        assert!(CSP.contains("script-src 'sha256-"));
        assert!(
            !LIVE_HTML.contains("innerHTML"),
            "insert data with textContent only"
        );
    }

    #[test]
    fn the_page_resumes_from_its_cursor() {
        let script = inline_script(LIVE_HTML);
        for needed in [
            "message.since = cursor",
            "msg.data.cursor",
            "cursor_expired",
        ] {
            assert!(script.contains(needed), "{needed}");
        }
    }
}
