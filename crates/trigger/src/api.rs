//! The HTTP API, one handler per endpoint, in the order docs/http-api.md describes them:
//!
//! ```text
//! POST /trigger            {"select": "..."}?  202 started | 409 already_running
//! GET  /runs?limit=N       the newest run records
//! GET  /runs/{id}          one run record
//! GET  /runs/{id}/log?tail=N   the end of its worker.log
//! GET  /runs/{id}/events?limit=N   its last events
//! GET  /assets             the catalog snapshot of the last run
//! GET  /health             200 fresh | 503 stale or never succeeded (no token needed)
//! GET  /status             the same verdict, always 200 (no token needed)
//! GET  /, /app.js, /app.css   the status page (no token needed: it holds no data)
//! GET  /openapi.json       this API as an OpenAPI 3 document (no token needed)
//! ```
//!
//! Everything is JSON in and out. Every failure is a 4xx or 5xx with a JSON body
//! (`{"status": "<code>", "error": "<sentence>"}`), including the ones axum would answer
//! itself (unknown path, wrong method, oversized body). Handlers read small local files on the
//! runtime thread: a run record is a few kilobytes, and a thread pool would cost more memory
//! than the microseconds it saves.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use quantlens_runs::RunId;
use serde::{Deserialize, Serialize};

use crate::auth::{self, Token};
use crate::error::{chain, ApiError};
use crate::health::Health;
use crate::idempotency::{self, Keys, Seen};
use crate::server::Activity;
use crate::supervise::{Runner, Start, StartError};

/// Largest accepted request body. A trigger body is a selection of at most 512 bytes.
const MAX_BODY: usize = 16 * 1024;
/// `GET /runs` without `limit`, and the most it may ask for (the worker keeps 200 by default).
const DEFAULT_RUNS: usize = 20;
const MAX_RUNS: usize = 1000;
/// `GET /runs/{id}/log` without `tail`, and the most lines it may ask for.
const DEFAULT_TAIL: usize = 100;
const MAX_TAIL: usize = 10_000;
/// `GET /runs/{id}/events` without `limit`, and the most events it may ask for.
const DEFAULT_EVENTS: usize = 500;
const MAX_EVENTS: usize = 10_000;

/// Everything the handlers share.
pub struct App {
    runner: Arc<Runner>,
    health: Health,
    keys: Mutex<idempotency::Keys>,
    token: Option<Token>,
    activity: Arc<Activity>,
}

impl App {
    pub fn new(
        runner: Arc<Runner>,
        health: Health,
        token: Option<Token>,
        activity: Arc<Activity>,
    ) -> App {
        App {
            runner,
            health,
            keys: Mutex::new(Keys::default()),
            token,
            activity,
        }
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }
}

pub fn router(app: Arc<App>) -> Router {
    let protected = Router::new()
        .route(
            "/trigger",
            post(trigger).layer(middleware::from_fn(crate::connections::deadline_body)),
        )
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/log", get(get_log))
        .route("/runs/{id}/events", get(get_events))
        .route("/assets", get(get_assets))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/openapi.json", get(openapi))
        .merge(crate::page::routes())
        .merge(protected)
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .with_state(app)
}

/// docs/openapi.yaml as JSON (scripts/openapi-json writes it; tests/test_api_contract.py checks
/// that it matches the YAML and that the daemon matches it).
const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// The body of `POST /trigger`. Unknown fields are refused: a typo such as `"selct"` would
/// otherwise silently run everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    select: Option<String>,
}

#[derive(Serialize)]
struct Started<'a> {
    status: &'static str,
    run_id: &'a RunId,
    selection: &'a str,
}

#[derive(Serialize)]
struct AlreadyRunning<'a> {
    status: &'static str,
    run_id: Option<&'a str>,
    error: String,
}

/// `POST /trigger`: start a run of the selection (default `*`), or say which run is in the way.
async fn trigger(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(ApiError::from_body)?;
    let selection = parse_trigger_body(&headers, &body)?;
    let key = idempotency_key(&headers)?;

    // Held across the start so two retries with the same key cannot both start.
    let mut keys = app.keys.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(key) = key {
        match keys.lookup(key, &selection) {
            Seen::New => {}
            Seen::Replay(run_id) => {
                let mut response = started(&run_id, &selection);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
            Seen::Conflict { run_id, selection } => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    format!(
                        "this Idempotency-Key already started run {run_id} with selection \
                         `{selection}`; use a new key for a different request"
                    ),
                ))
            }
        }
    }
    match app.runner.start(&selection) {
        Ok(Start::Started(run_id)) => {
            if let Some(key) = key {
                keys.remember(key, run_id.clone(), &selection);
            }
            Ok(started(&run_id, &selection))
        }
        Ok(Start::AlreadyRunning(holder)) => {
            let error = match &holder {
                Some(id) => format!("run {id} is in progress; try again when it has finished"),
                None => "another run is in progress; try again when it has finished".to_owned(),
            };
            let body = AlreadyRunning {
                status: "already_running",
                run_id: holder.as_deref(),
                error,
            };
            Ok(json(StatusCode::CONFLICT, &body))
        }
        Err(StartError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            StartError::ShuttingDown.to_string(),
        )),
        Err(err) if err.is_no_space() => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            chain(&err),
        )),
        Err(err) => Err(ApiError::internal(chain(&err))),
    }
}

fn started(run_id: &RunId, selection: &str) -> Response {
    let body = Started {
        status: "started",
        run_id,
        selection,
    };
    let mut response = json(StatusCode::ACCEPTED, &body);
    if let Ok(location) = HeaderValue::from_str(&format!("/runs/{run_id}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// The selection a trigger body asks for. An empty body means "everything"; a non-empty one
/// must be a JSON object with nothing but `select`.
fn parse_trigger_body(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let parsed = if body.is_empty() {
        TriggerBody::default()
    } else {
        if !is_json(headers) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        // Through a map first: serde would also accept the struct as an array (`["*"]`).
        serde_json::from_slice::<serde_json::Map<_, _>>(body)
            .and_then(|map| serde_json::from_value(map.into()))
            .map_err(|err| {
                let code = if err.is_data() {
                    "invalid_body"
                } else {
                    "invalid_json"
                };
                ApiError::bad_request(code, format!("invalid request body: {err}"))
            })?
    };
    let selection = parsed.select.unwrap_or_else(|| "*".to_owned());
    // The selection becomes one argv element of the worker (never a shell string); holding
    // it to the selection alphabet keeps anything odd out of logs and the worker's parser.
    if !quantlens_graph::is_selection_syntax(&selection) {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "`select` must be 1 to 512 characters of a-z 0-9 _ / : + * , and space, \
             e.g. \"silver/prices+\" or \"group:gold\"",
        ));
    }
    Ok(selection)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if idempotency::valid_key(key) => Ok(Some(key)),
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {} printable ASCII characters without spaces",
                idempotency::MAX_KEY_LEN
            ),
        )),
    }
}

#[derive(Serialize)]
struct RunList {
    runs: Vec<quantlens_runs::RunRecord>,
}

/// `GET /runs?limit=N`: the newest run records, newest first.
async fn list_runs(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let limit = query_number(query.as_deref(), "limit", DEFAULT_RUNS, MAX_RUNS)?;
    let runs = app
        .runner
        .state()
        .list_runs(limit)
        .map_err(ApiError::from_runs)?;
    Ok(json(StatusCode::OK, &RunList { runs }))
}

/// `GET /runs/{id}`: one run record, as the worker (or the daemon) last wrote it.
async fn get_run(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = run_id(id)?;
    let record = app
        .runner
        .state()
        .read_run(&id)
        .map_err(ApiError::from_runs)?;
    Ok(json(StatusCode::OK, &record))
}

#[derive(Serialize)]
struct LogTail<'a> {
    run_id: &'a RunId,
    tail: usize,
    log: String,
}

/// `GET /runs/{id}/log?tail=N`: the last N lines of the run's worker.log.
async fn get_log(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = run_id(id)?;
    let tail = query_number(query.as_deref(), "tail", DEFAULT_TAIL, MAX_TAIL)?;
    let state = app.runner.state();
    if !state.run_dir(&id).is_dir() {
        return Err(ApiError::not_found(format!("no run {id}")));
    }
    let log = state
        .run_files(&id)
        .read_log_tail(tail)
        .map_err(ApiError::from_runs)?;
    Ok(json(
        StatusCode::OK,
        &LogTail {
            run_id: &id,
            tail,
            log,
        },
    ))
}

#[derive(Serialize)]
struct Events<'a> {
    run_id: &'a RunId,
    events: Vec<serde_json::Value>,
}

/// `GET /runs/{id}/events?limit=N`: the last N events of the run, oldest first.
async fn get_events(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = run_id(id)?;
    let limit = query_number(query.as_deref(), "limit", DEFAULT_EVENTS, MAX_EVENTS)?;
    let state = app.runner.state();
    if !state.run_dir(&id).is_dir() {
        return Err(ApiError::not_found(format!("no run {id}")));
    }
    let events = state
        .run_files(&id)
        .read_events(limit)
        .map_err(ApiError::from_runs)?;
    Ok(json(
        StatusCode::OK,
        &Events {
            run_id: &id,
            events,
        },
    ))
}

/// `GET /assets`: the catalog snapshot the worker wrote at the end of the last run (every asset
/// with its table, freshness, kind and last checks, and the lineage edges), served as written.
async fn get_assets(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let catalog = app
        .runner
        .state()
        .read_catalog()
        .map_err(ApiError::from_runs)?
        .ok_or_else(|| {
            ApiError::not_found("no catalog yet: the first run writes it when it finishes")
        })?;
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        catalog,
    )
        .into_response())
}

/// `GET /health`: 200 while the last success is fresh, 503 otherwise (see `health`).
async fn health(State(app): State<Arc<App>>) -> Response {
    let (status, report) = app.health.check(&app.runner);
    json(status, &report)
}

/// `GET /status`: the health verdict with 200 whatever it says, for the status page and scripts
/// that read the body (a browser logs every 503 it fetches as an error).
async fn status(State(app): State<Arc<App>>) -> Response {
    let (_, report) = app.health.check(&app.runner);
    json(StatusCode::OK, &report)
}

async fn unknown_path() -> ApiError {
    ApiError::not_found(
        "no such endpoint; see POST /trigger, GET /runs, GET /runs/{id}, GET /runs/{id}/log, GET /runs/{id}/events, GET /assets, GET /health, GET /status, and the page at /",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method (POST /trigger; GET for the others)",
    )
}

/// Counts requests for `--idle-exit`: the daemon is busy while any is in flight.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let _busy = app.activity.begin();
    next.run(request).await
}

fn run_id(path: Result<Path<String>, PathRejection>) -> Result<RunId, ApiError> {
    let Path(id) = path.map_err(ApiError::from_path)?;
    RunId::parse(&id).map_err(ApiError::from_runs)
}

/// The value of query parameter `name`: a whole number from 1 to `max`, `default` when absent.
/// Any other parameter is refused, so a typo is not silently ignored.
fn query_number(
    query: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let mut value = default;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown query parameter `{key}`; this endpoint takes `{name}`"),
            ));
        }
        value = raw
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`{name}` must be a whole number from 1 to {max}"),
                )
            })?;
    }
    Ok(value)
}

/// A JSON response. Serialising our own types cannot fail in practice; if it ever did the
/// client still gets JSON.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            bytes,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            &br#"{"status":"internal_error","error":"cannot serialise the response"}"#[..],
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    fn code(result: Result<String, ApiError>) -> (StatusCode, String) {
        let response = result.unwrap_err().into_response();
        let status = response.status();
        let text = format!("{:?}", response.headers().get(CONTENT_TYPE));
        (status, text)
    }

    #[test]
    fn trigger_bodies() {
        let json_ct = headers(Some("application/json; charset=utf-8"));
        assert_eq!(parse_trigger_body(&headers(None), b"").unwrap(), "*");
        assert_eq!(
            parse_trigger_body(&json_ct, br#"{"select": "silver/prices+"}"#).unwrap(),
            "silver/prices+"
        );
        assert_eq!(parse_trigger_body(&json_ct, b"{}").unwrap(), "*");
        assert_eq!(
            parse_trigger_body(&json_ct, br#"{"select": null}"#).unwrap(),
            "*"
        );

        let cases: [(&HeaderMap, &[u8], StatusCode); 8] = [
            (
                &headers(None),
                br#"{"select":"*"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                &headers(Some("text/plain")),
                b"*",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (&json_ct, b"{", StatusCode::BAD_REQUEST),
            (&json_ct, br#"{"selct": "*"}"#, StatusCode::BAD_REQUEST),
            (&json_ct, br#"{"select": 5}"#, StatusCode::BAD_REQUEST),
            (&json_ct, br#"["*"]"#, StatusCode::BAD_REQUEST),
            (
                &json_ct,
                br#"{"select": "x; rm -rf /"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (&json_ct, br#"{"select": ""}"#, StatusCode::BAD_REQUEST),
        ];
        for (h, body, expected) in cases {
            let (status, ct) = code(parse_trigger_body(h, body));
            assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
            assert!(ct.contains("application/json"), "{ct}");
        }
    }

    #[test]
    fn query_numbers() {
        assert_eq!(query_number(None, "limit", 20, 1000).unwrap(), 20);
        assert_eq!(query_number(Some(""), "limit", 20, 1000).unwrap(), 20);
        assert_eq!(query_number(Some("limit=5"), "limit", 20, 1000).unwrap(), 5);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "limit=",
            "lmit=5",
            "limit=-1",
        ] {
            assert!(query_number(Some(bad), "limit", 20, 1000).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", HeaderValue::from_static("abc-123"));
        assert_eq!(idempotency_key(&h).unwrap(), Some("abc-123"));
        h.insert("idempotency-key", HeaderValue::from_static("two words"));
        assert!(idempotency_key(&h).is_err());
    }
}
