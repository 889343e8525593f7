//! Optional bearer-token authentication. The port is private and firewalled, so the token is a
//! second fence, not the only one: it comes from a file (a systemd credential) or an environment
//! variable, never from the command line, and is compared in constant time so response timing
//! does not reveal how much of a guess was right. /health, /status, the page's own files and
//! /openapi.json stay open so an uptime check needs no secret; they tell nothing beyond the
//! health verdict and the API's shape, and the page asks for the token before it reads any data.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::App;
use crate::error::{ApiError, StartupError};

/// The secret every protected request must present.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token from `file` or from `env` (the value of QUANTLENS_TRIGGER_TOKEN), or `None`
    /// when neither is set. Surrounding whitespace is dropped: files end with a newline.
    pub fn load(file: Option<&Path>, env: Option<OsString>) -> Result<Option<Token>, StartupError> {
        let env = env.filter(|v| !v.is_empty());
        let (bytes, source_name) = match (file, env) {
            (Some(_), Some(_)) => return Err(StartupError::TwoTokens),
            (None, None) => return Ok(None),
            (Some(path), None) => (
                std::fs::read(path).map_err(|source| StartupError::TokenFile {
                    path: path.to_owned(),
                    source,
                })?,
                path.display().to_string(),
            ),
            (None, Some(value)) => (
                value.into_encoded_bytes(),
                crate::config::TOKEN_ENV.to_owned(),
            ),
        };
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(StartupError::EmptyToken { source_name });
        }
        Ok(Some(Token(token.into())))
    }

    /// Whether `presented` is the token. The time taken depends only on the length of
    /// `presented`, which the caller already knows.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        let mut diff = u8::from(presented.len() != expected.len());
        for (i, &b) in presented.iter().enumerate() {
            // `expected` is never empty (see `load`); cycling through it keeps every iteration
            // the same work whatever the lengths.
            diff |= b ^ expected[i % expected.len()];
        }
        std::hint::black_box(diff) == 0
    }
}

/// Middleware for the protected routes: 401 unless `Authorization: Bearer <token>` matches.
pub async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = app.token() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()));
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not valid"),
        None => unauthorized("this endpoint needs an `Authorization: Bearer <token>` header"),
    }
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response()
}

/// The credentials of a `Bearer` authorization header (the scheme is case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = header.split_at_checked(SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::load(None, Some(s.into())).unwrap().unwrap()
    }

    #[test]
    fn matches_only_the_exact_token() {
        let t = token("s3cret-token");
        assert!(t.matches(b"s3cret-token"));
        for wrong in [
            &b""[..],
            b"s3cret-toke",
            b"s3cret-token!",
            b"S3cret-token",
            b"s3cret-tokens3cret-token",
        ] {
            assert!(!t.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn loads_from_file_or_env_but_not_both() {
        let dir = std::env::temp_dir().join(format!("ql-trigger-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let t = Token::load(Some(&file), None).unwrap().unwrap();
        assert!(t.matches(b"from-file"));
        assert!(Token::load(None, None).unwrap().is_none());
        assert!(Token::load(None, Some("".into())).unwrap().is_none());
        assert!(matches!(
            Token::load(Some(&file), Some("x".into())),
            Err(StartupError::TwoTokens)
        ));
        std::fs::write(&file, "\n \n").unwrap();
        assert!(matches!(
            Token::load(Some(&file), None),
            Err(StartupError::EmptyToken { .. })
        ));
        assert!(matches!(
            Token::load(Some(&dir.join("missing")), None),
            Err(StartupError::TokenFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
