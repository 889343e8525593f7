//! Failure notifications: a failed or crashed run, a failed backup, a unit systemd saw die, each
//! told once to whoever the operator named, and a heartbeat in the healthchecks.io style so that
//! a run that never happens is noticed too (a dead man's switch).
//!
//! Three channels, each optional, configured from the environment or from a credential file
//! (never from the command line, which every user can read):
//!
//! ```text
//! QUANTLENS_NOTIFY_WEBHOOK=https://...   POST {"source": "quantlens", "event": ..., ...} (JSON)
//! QUANTLENS_NOTIFY_SLACK=https://...     POST {"text": "<one plain-text line>"} (Slack-compatible)
//! QUANTLENS_HEARTBEAT_URL=https://...    POST <url> after a successful run, <url>/fail after a failed one
//! QUANTLENS_NOTIFY_CREDENTIALS=FILE      the same KEY=VALUE lines from a file (systemd LoadCredential)
//! ```
//!
//! A receiver that is down, slow or answering errors must never fail a run or hold it long: each
//! request has [`ATTEMPT_TIMEOUT`], is tried at most [`ATTEMPTS`] times, and the channels are
//! sent to concurrently, so a notification costs at most about 5 s whatever the receivers do.
//! What happened to each delivery comes back as [`Delivery`] for the caller to log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use url::Url;

pub const WEBHOOK_ENV: &str = "QUANTLENS_NOTIFY_WEBHOOK";
pub const SLACK_ENV: &str = "QUANTLENS_NOTIFY_SLACK";
pub const HEARTBEAT_ENV: &str = "QUANTLENS_HEARTBEAT_URL";
pub const CREDENTIALS_ENV: &str = "QUANTLENS_NOTIFY_CREDENTIALS";

/// How long one request may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per request: a second one after a network error, a timeout or a 5xx.
pub const ATTEMPTS: u32 = 2;
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("reading {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: `{value}` is not an http(s) URL")]
    BadUrl { name: String, value: String },
    #[error("{name} is set both in the environment and in {file}; keep one")]
    Twice { name: String, file: String },
}

/// Where notifications go; every channel is optional.
#[derive(Clone, Debug, Default)]
pub struct Channels {
    pub webhook: Option<Url>,
    pub slack: Option<Url>,
    pub heartbeat: Option<Url>,
}

impl Channels {
    /// The channels named by the process environment (and the credential file it points to).
    pub fn from_env() -> Result<Channels, NotifyError> {
        Channels::from_vars(|name| std::env::var(name).ok())
    }

    /// The channels named by `var` (a lookup like `std::env::var`), for tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Channels, NotifyError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let file = match var(CREDENTIALS_ENV) {
            Some(path) => Some((path.clone(), read_credentials(Path::new(&path))?)),
            None => None,
        };
        let lookup = |name: &str| -> Result<Option<Url>, NotifyError> {
            let from_env = var(name);
            let from_file = file
                .as_ref()
                .and_then(|(_, values)| values.get(name).cloned());
            let value = match (from_env, from_file) {
                (Some(_), Some(_)) => {
                    return Err(NotifyError::Twice {
                        name: name.into(),
                        file: file.as_ref().map(|(p, _)| p.clone()).unwrap_or_default(),
                    })
                }
                (Some(v), None) | (None, Some(v)) => v,
                (None, None) => return Ok(None),
            };
            match Url::parse(value.trim()) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
                _ => Err(NotifyError::BadUrl {
                    name: name.into(),
                    // A URL with a secret in it is not printed whole.
                    value: redact(&value),
                }),
            }
        };
        Ok(Channels {
            webhook: lookup(WEBHOOK_ENV)?,
            slack: lookup(SLACK_ENV)?,
            heartbeat: lookup(HEARTBEAT_ENV)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.slack.is_none() && self.heartbeat.is_none()
    }
}

/// The channels' file (see [`quantlens_runs::credentials`]).
fn read_credentials(path: &Path) -> Result<BTreeMap<String, String>, NotifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyError::Credentials {
        path: path.display().to_string(),
        source,
    })?;
    Ok(quantlens_runs::credentials::key_values(&text).collect())
}

fn redact(value: &str) -> String {
    let visible: String = value.chars().take(12).collect();
    format!("{visible}...")
}

/// What went wrong, said once to every channel.
#[derive(Clone, Debug)]
pub struct Event {
    /// `run_failed`, `run_crashed`, `run_timed_out`, `backup_failed`, `unit_failed`, ...
    pub kind: String,
    pub run_id: Option<String>,
    /// The assets involved, each with its error.
    pub assets: Vec<(String, String)>,
    /// The error in one sentence.
    pub error: String,
}

impl Event {
    /// One plain-text line, no links: what a person reads in a chat or a mail subject.
    pub fn summary(&self) -> String {
        let mut text = format!("QuantLens on {}: {}", host(), self.kind.replace('_', " "));
        if let Some(run_id) = &self.run_id {
            text.push_str(&format!(" (run {run_id})"));
        }
        text.push_str(&format!(": {}", self.error));
        for (asset, error) in &self.assets {
            text.push_str(&format!("; {asset}: {error}"));
        }
        text
    }

    /// The generic webhook's JSON body.
    pub fn payload(&self) -> Value {
        json!({
            "source": "quantlens",
            "event": self.kind,
            "host": host(),
            "run_id": self.run_id,
            "assets": self.assets.iter().map(|(a, e)| json!({"asset": a, "error": e})).collect::<Vec<_>>(),
            "error": self.error,
            "summary": self.summary(),
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }
}

fn host() -> String {
    read_hostname().unwrap_or_else(|| "unknown host".into())
}

fn read_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub channel: &'static str,
    /// The HTTP status of the last attempt, or why there was none.
    pub outcome: Result<u16, String>,
    pub attempts: u32,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(status) => write!(f, "{}: HTTP {status}", self.channel)?,
            Err(error) => write!(f, "{}: {error}", self.channel)?,
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Ok(status) if (200..300).contains(&status))
    }
}

/// Tells `event` to the webhook and Slack channels, and fails the heartbeat.
pub async fn notify(channels: &Channels, event: &Event) -> Vec<Delivery> {
    let client = match client() {
        Ok(client) => client,
        Err(error) => return vec![unsent("all", error)],
    };
    let summary = event.summary();
    let webhook = async {
        match &channels.webhook {
            Some(url) => Some(post(&client, "webhook", url, json_body(&event.payload())).await),
            None => None,
        }
    };
    let slack = async {
        match &channels.slack {
            Some(url) => Some(
                post(
                    &client,
                    "slack",
                    url,
                    json_body(&json!({ "text": summary })),
                )
                .await,
            ),
            None => None,
        }
    };
    let heartbeat = async {
        match &channels.heartbeat {
            Some(url) => {
                Some(post(&client, "heartbeat", &fail_url(url), text_body(&summary)).await)
            }
            None => None,
        }
    };
    let (a, b, c) = tokio::join!(webhook, slack, heartbeat);
    [a, b, c].into_iter().flatten().collect()
}

/// Pings the heartbeat after a successful run (nothing when no heartbeat is configured).
pub async fn heartbeat_ok(channels: &Channels, message: &str) -> Option<Delivery> {
    let url = channels.heartbeat.as_ref()?;
    Some(match client() {
        Ok(client) => post(&client, "heartbeat", url, text_body(message)).await,
        Err(error) => unsent("heartbeat", error),
    })
}

/// healthchecks.io's convention: `<url>/fail` signals a failure.
fn fail_url(url: &Url) -> Url {
    let mut failed = url.clone();
    let path = format!("{}/fail", url.path().trim_end_matches('/'));
    failed.set_path(&path);
    failed
}

fn client() -> Result<reqwest::Client, String> {
    // reqwest is built without a default TLS provider (as object_store uses it): name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
}

fn json_body(value: &Value) -> Body {
    Body {
        content_type: "application/json",
        bytes: value.to_string().into_bytes(),
    }
}

fn text_body(text: &str) -> Body {
    Body {
        content_type: "text/plain; charset=utf-8",
        bytes: text.as_bytes().to_vec(),
    }
}

async fn post(client: &reqwest::Client, channel: &'static str, url: &Url, body: Body) -> Delivery {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = client
            .post(url.clone())
            .header("content-type", body.content_type)
            .header("user-agent", "quantlens-notify")
            .body(body.bytes.clone())
            .send()
            .await;
        let outcome = match result {
            Ok(response) => Ok(response.status().as_u16()),
            // The error's text can hold the URL, and the URL a secret: keep only its kind.
            Err(error) if error.is_timeout() => Err("timed out".to_string()),
            Err(error) if error.is_connect() => Err("could not connect".to_string()),
            Err(_) => Err("request failed".to_string()),
        };
        let retry = match &outcome {
            Ok(status) => *status >= 500,
            Err(_) => true,
        };
        if !retry || attempts >= ATTEMPTS {
            return Delivery {
                channel,
                outcome,
                attempts,
            };
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

fn unsent(channel: &'static str, error: String) -> Delivery {
    Delivery {
        channel,
        outcome: Err(error),
        attempts: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn channels_come_from_the_environment_or_a_credential_file() {
        let none = Channels::from_vars(vars(&[])).unwrap();
        assert!(none.is_empty());
        let env = Channels::from_vars(vars(&[(SLACK_ENV, "https://hooks.example/T/B/x")])).unwrap();
        assert_eq!(env.slack.unwrap().as_str(), "https://hooks.example/T/B/x");

        let dir = std::env::temp_dir().join(format!("ql-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("notify");
        std::fs::write(
            &file,
            "# channels\nQUANTLENS_HEARTBEAT_URL = http://127.0.0.1:9/ping/abc\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let from_file = Channels::from_vars(vars(&[(CREDENTIALS_ENV, &path)])).unwrap();
        assert_eq!(
            from_file.heartbeat.unwrap().as_str(),
            "http://127.0.0.1:9/ping/abc"
        );
        let twice = Channels::from_vars(vars(&[
            (CREDENTIALS_ENV, &path),
            (HEARTBEAT_ENV, "http://127.0.0.1:9/other"),
        ]));
        assert!(matches!(twice, Err(NotifyError::Twice { .. })));
        std::fs::remove_dir_all(&dir).unwrap();

        let bad = Channels::from_vars(vars(&[(WEBHOOK_ENV, "ftp://secret-token-here/x")]));
        let message = bad.unwrap_err().to_string();
        assert!(message.contains("QUANTLENS_NOTIFY_WEBHOOK") && !message.contains("token-here"));
        let missing = Channels::from_vars(vars(&[(CREDENTIALS_ENV, "/nonexistent/notify")]));
        assert!(matches!(missing, Err(NotifyError::Credentials { .. })));
    }

    #[test]
    fn the_fail_url_follows_healthchecks() {
        let url = Url::parse("https://hc-ping.com/5a7c1e/").unwrap();
        assert_eq!(fail_url(&url).as_str(), "https://hc-ping.com/5a7c1e/fail");
        let url = Url::parse("http://127.0.0.1:8000/ping?x=1").unwrap();
        assert_eq!(
            fail_url(&url).as_str(),
            "http://127.0.0.1:8000/ping/fail?x=1"
        );
    }

    #[test]
    fn a_summary_is_one_plain_line() {
        let event = Event {
            kind: "run_failed".into(),
            run_id: Some("r1".into()),
            assets: vec![("gold/x".into(), "blocking check `unique` failed".into())],
            error: "failed or skipped: gold/x".into(),
        };
        let summary = event.summary();
        assert!(
            summary.contains("run failed (run r1): failed or skipped: gold/x; gold/x: blocking")
        );
        assert!(!summary.contains('\n'));
        assert_eq!(event.payload()["assets"][0]["asset"], "gold/x");
    }
}
