//! The connections the daemon serves, bounded so that a client on the private port cannot tie it
//! up: at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's listen queue), a request's
//! head (request line and headers) within [`HEAD_TIMEOUT`] of the connection being ready for it
//! (a connection that sends nothing, a slow sender and an idle keep-alive connection are all
//! closed), at most [`MAX_HEADERS`] header fields (hyper answers 431 beyond), and a request body
//! complete within [`BODY_TIMEOUT`] ([`deadline_body`], a 400 otherwise). On shutdown each
//! connection finishes the request it is in and closes; [`serve`] returns when all have.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body::{Body as HttpBody, Frame};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Connections served at once; the rest wait in the listen queue (systemd's `Backlog=`). Far
/// above what a frontend and an operator open (a burst of 500 concurrent POSTs is still answered
/// in full, tests/test_trigger.py), and a bound on what a flood can hold: each idle connection is
/// a few KB of buffers for at most [`HEAD_TIMEOUT`], and the unit allows 65,536 descriptors.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client has to send a request's head once the connection is ready for one.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send a whole request body (at most 16 KiB).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Header fields a request may have.
pub const MAX_HEADERS: usize = 100;

/// Serves `router` on `listener` until `stopped` turns true, then lets open connections finish.
pub async fn serve(listener: TcpListener, router: Router, stopped: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = wait_stop(stopped.clone()) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    eprintln!("quantlens-trigger: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = wait_stop(stopped.clone()) => break,
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_headers(MAX_HEADERS)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let stop = stopped.clone();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = wait_stop(stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection holds a permit until it ends.
    let all = u32::try_from(MAX_CONNECTIONS).expect("a small number");
    let _ = permits.acquire_many(all).await;
}

pub async fn wait_stop(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once shutdown has begun.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Middleware: the request body must be complete within [`BODY_TIMEOUT`] of the head, however
/// slowly it trickles in; after that, reading it fails and the handler answers 400.
pub async fn deadline_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(BODY_TIMEOUT)),
    });
    next.run(Request::from_parts(parts, body)).await
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(format!(
                "the request body did not arrive in full within {} s",
                BODY_TIMEOUT.as_secs()
            )))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
