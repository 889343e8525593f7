//! The status page, embedded in both binaries. The trigger daemon serves [`INDEX_HTML`],
//! [`APP_CSS`] and [`APP_JS`] as three files under a strict Content-Security-Policy (no inline
//! script or style), and the script fetches the API. [`report`] turns the same three files into
//! one self-contained HTML document with the API's answers inlined, which the same script reads
//! instead of fetching: one page and one code path, whether it is live or mailed as a file.
//!
//! The page is plain HTML, CSS and JavaScript under `web/`, with no build step and nothing
//! fetched from elsewhere (no CDN, no web fonts).

use serde_json::Value;

/// The page's HTML shell: views are drawn by the script.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The page's stylesheet, served as `/app.css`.
pub const APP_CSS: &str = include_str!("../web/app.css");
/// The page's script, served as `/app.js`.
pub const APP_JS: &str = include_str!("../web/app.js");

/// The Content-Security-Policy the live page is served with: its own script, style and API,
/// nothing else, and never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// How many runs the runs view lists (`GET /runs?limit=...`), and how many log lines a run's
/// view shows (`GET /runs/{id}/log?tail=...`): a report inlines the answers to exactly these.
pub const RUNS_SHOWN: usize = 50;
pub const LOG_TAIL: usize = 200;

const STYLESHEET_TAG: &str = r#"<link rel="stylesheet" href="app.css">"#;
const SCRIPT_TAG: &str = r#"<script src="app.js"></script>"#;

/// One self-contained HTML document: the page with its stylesheet and script inlined and
/// `responses` (API path, e.g. `/assets` or `/runs/{id}`, to the JSON body the daemon would
/// answer) embedded as data. Opened from `file://`, it makes no request at all.
pub fn report(responses: &Value) -> String {
    // `<` is escaped in the data so that no string in it can close the script element.
    let data = responses.to_string().replace('<', "\\u003c");
    let script = format!(
        "<script type=\"application/json\" id=\"report-data\">{data}</script>\n<script>\n{}\n</script>",
        APP_JS
    );
    INDEX_HTML
        .replacen(STYLESHEET_TAG, &format!("<style>\n{APP_CSS}\n</style>"), 1)
        .replacen(SCRIPT_TAG, &script, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_its_files_once() {
        assert_eq!(INDEX_HTML.matches(STYLESHEET_TAG).count(), 1);
        assert_eq!(INDEX_HTML.matches(SCRIPT_TAG).count(), 1);
        // The script is inlined into the report as is: it must not close its own element.
        assert!(!APP_JS.to_ascii_lowercase().contains("</script"));
        assert!(!APP_CSS.to_ascii_lowercase().contains("</style"));
    }

    #[test]
    fn the_script_asks_for_what_a_report_holds() {
        assert!(APP_JS.contains(&format!("const RUNS_SHOWN = {RUNS_SHOWN};")));
        assert!(APP_JS.contains(&format!("const LOG_TAIL = {LOG_TAIL};")));
    }

    #[test]
    fn a_report_is_self_contained_and_its_data_cannot_escape() {
        let html = report(&serde_json::json!({"/assets": {"note": "</script><script>alert(1)"}}));
        assert!(!html.contains(STYLESHEET_TAG) && !html.contains(SCRIPT_TAG));
        assert!(html.contains(APP_JS) && html.contains(APP_CSS));
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "only the two script elements close"
        );
        let start = html.find(r#"id="report-data">"#).unwrap() + r#"id="report-data">"#.len();
        let end = start + html[start..].find("</script>").unwrap();
        let data: Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(data["/assets"]["note"], "</script><script>alert(1)");
    }
}
