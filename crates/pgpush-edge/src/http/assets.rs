//! The pages and files every node serves: `/`, `/stats`, the browser client, and the pages the
//! binary adds (the demos').

use http::{HeaderValue, Response, StatusCode, header};

use crate::http::{Body, full};

const HTML: &str = "text/html; charset=utf-8";

/// (path, content type, body), compiled into the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../web/index.html")),
    ("/stats", HTML, include_str!("../../web/stats.html")),
    (
        "/site.css",
        "text/css; charset=utf-8",
        include_str!("../../web/site.css"),
    ),
    (
        "/site.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/site.js"),
    ),
    (
        "/pgpush.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../clients/js/pgpush.js"),
    ),
    (
        "/pgpush.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../../../../clients/js/pgpush.d.ts"),
    ),
];

/// The response for a GET of `path`, when it is one of the files or of the `extra` HTML pages
/// (path, text).
pub(crate) fn get(path: &str, extra: &[(&'static str, &'static str)]) -> Option<Response<Body>> {
    let (content_type, body) = ASSETS
        .iter()
        .map(|(p, content_type, body)| (*p, *content_type, *body))
        .chain(extra.iter().map(|(p, body)| (*p, HTML, *body)))
        .find(|(p, _, _)| *p == path)
        .map(|(_, content_type, body)| (content_type, body))?;
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Pages and the client change with the binary; let browsers revalidate rather than guess.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}
