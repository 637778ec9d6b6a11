//! The web console: the static files under `services/gateway/console/`, embedded in the
//! binary and served at `/` (the page) and `/console/...` (its scripts and styles), so
//! that it works on a machine without internet access. The console is a client of the
//! public API like any other: it sends the key the user types in as a Bearer header.
//!
//! Every answer here carries strict security headers: a Content-Security-Policy that
//! allows only this origin's own scripts and styles (no inline script, no other origin,
//! no framing), `nosniff`, no referrer. Files are revalidated by their SHA-256 ETag.

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{self, HeaderValue},
    web,
};
use rust_embed::{EmbeddedFile, RustEmbed};

#[derive(RustEmbed)]
#[folder = "console/"]
struct Files;

/// The policy of every console answer: this origin's files and API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Binds `/` and `/console/{file}` (GET, and HEAD for checks like `curl -I`).
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/")
                .route(web::get().to(index))
                .route(web::head().to(index)),
        )
        .service(
            web::resource("/console/{file:.+}")
                .route(web::get().to(file))
                .route(web::head().to(file)),
        );
}

async fn index(request: HttpRequest) -> HttpResponse {
    serve(&request, "index.html")
}

async fn file(request: HttpRequest, path: web::Path<String>) -> HttpResponse {
    serve(&request, &path)
}

/// Answers embedded file `name`, or a 404 page that says what is missing.
fn serve(request: &HttpRequest, name: &str) -> HttpResponse {
    let Some(file) = Files::get(name) else {
        let mut response = HttpResponse::NotFound();
        secure(&mut response);
        return response
            .content_type("text/plain; charset=utf-8")
            .body(format!("the console has no file {name:?}"));
    };
    let etag = etag(&file);
    let fresh = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|value| value.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    secure(&mut response);
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if fresh {
        return response.finish();
    }
    response
        .content_type(content_type(name))
        .body(file.data.into_owned())
}

fn etag(file: &EmbeddedFile) -> String {
    let hash = file.metadata.sha256_hash();
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

fn secure(response: &mut actix_web::HttpResponseBuilder) {
    response
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        .insert_header((
            "Permissions-Policy",
            "camera=(), microphone=(), geolocation=()",
        ));
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Every embedded file's name, for the scan in the tests.
pub fn names() -> impl Iterator<Item = String> {
    Files::iter().map(|name| name.into_owned())
}

/// An embedded file's text, for the scan in the tests.
pub fn text(name: &str) -> Option<String> {
    Files::get(name).map(|file| String::from_utf8_lossy(&file.data).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one URL that may appear in the console's code: SVG's XML namespace, a name
    /// the browser never fetches.
    const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

    #[test]
    fn the_console_has_no_inline_script_no_inline_style_and_no_external_url() {
        let names: Vec<String> = names().collect();
        assert!(names.iter().any(|name| name == "index.html"), "{names:?}");
        for name in &names {
            let text = text(name).unwrap();
            let lower = text.to_lowercase();
            let without_namespace = lower.replace(SVG_NAMESPACE, "");
            for scheme in ["http://", "https://", "//cdn", "ws://", "wss://"] {
                assert!(
                    !without_namespace.contains(scheme),
                    "{name} refers to another origin ({scheme})"
                );
            }
            for forbidden in [
                "innerhtml",
                "outerhtml",
                "insertadjacenthtml",
                "eval(",
                "new function",
            ] {
                assert!(
                    !lower.contains(forbidden),
                    "{name} uses {forbidden}, which the console avoids"
                );
            }
            if name.ends_with(".html") {
                // Every script is a file of this origin; no handler attributes, no
                // style attributes or blocks (the policy would refuse them).
                for (at, _) in lower.match_indices("<script") {
                    let tag = &lower[at..at + lower[at..].find('>').unwrap()];
                    assert!(
                        tag.contains("src=\"/console/"),
                        "{name}: inline script {tag}"
                    );
                }
                assert!(!lower.contains("<style"), "{name} has a style block");
                assert!(!lower.contains(" style="), "{name} has a style attribute");
                let handler = lower
                    .split(|c: char| c.is_whitespace())
                    .any(|word| word.starts_with("on") && word.contains("=\""));
                assert!(!handler, "{name} has an inline event handler");
                assert!(
                    !lower.contains("javascript:"),
                    "{name} has a javascript: URL"
                );
            }
        }
    }

    #[test]
    fn the_policy_allows_only_this_origin_and_no_framing() {
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(part), "{part}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
