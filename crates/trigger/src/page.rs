//! The status page's three files (quantlens-page), served from memory. They hold no data, so
//! they need no token; the script asks for one when the API answers 401. Every response carries
//! the page's Content-Security-Policy: the browser runs no script and applies no style but these
//! files, and talks to no server but this one.

use std::sync::Arc;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::api::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/",
            get(|| page("text/html; charset=utf-8", quantlens_page::INDEX_HTML)),
        )
        .route(
            "/app.js",
            get(|| page("text/javascript; charset=utf-8", quantlens_page::APP_JS)),
        )
        .route(
            "/app.css",
            get(|| page("text/css; charset=utf-8", quantlens_page::APP_CSS)),
        )
}

async fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (
                CONTENT_SECURITY_POLICY,
                quantlens_page::CONTENT_SECURITY_POLICY,
            ),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
            // The files change only with the binary; a restart after an upgrade must show.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
