//! Where connections come from: the socket systemd passes (socket activation, `LISTEN_FDS`)
//! when there is one for this process, else a socket we bind ourselves (`--listen`). With
//! activation systemd owns the port, so the daemon can exit when idle and the next request
//! starts it again without being refused.

use std::net::SocketAddr;
use std::os::fd::FromRawFd;

use tokio::net::TcpListener;

use crate::error::StartupError;

/// Where the listener came from, for the start-up message.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    Activated,
    Bound,
}

/// The listening socket: inherited if systemd passed one, else bound to `listen`.
/// Must be called within the Tokio runtime.
pub async fn open(listen: SocketAddr) -> Result<(TcpListener, Origin), StartupError> {
    // listen_fds() ignores descriptors meant for another process (LISTEN_PID) and marks ours
    // close-on-exec, so the worker does not inherit the listening socket.
    let fds = sd_notify::listen_fds()
        .map_err(|e| StartupError::Activation(format!("bad LISTEN_PID or LISTEN_FDS: {e}")))?;
    let fds: Vec<_> = fds.collect();
    match fds.as_slice() {
        [] => {
            let listener =
                TcpListener::bind(listen)
                    .await
                    .map_err(|source| StartupError::Bind {
                        addr: listen,
                        source,
                    })?;
            Ok((listener, Origin::Bound))
        }
        &[fd] => {
            // SAFETY: systemd handed this descriptor to this process (LISTEN_PID matched) and
            // nothing else in the program uses it.
            let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            let activation = |what: &str, e: std::io::Error| {
                StartupError::Activation(format!("fd {fd} {what}: {e}"))
            };
            // Also rejects a Unix or UDP socket with a clear message rather than at accept().
            std_listener
                .local_addr()
                .map_err(|e| activation("is not a TCP socket", e))?;
            // Tokio expects non-blocking sockets; an inherited one is blocking and would stall
            // the runtime on accept().
            std_listener
                .set_nonblocking(true)
                .map_err(|e| activation("cannot be made non-blocking", e))?;
            let listener = TcpListener::from_std(std_listener)
                .map_err(|e| activation("cannot be registered with the runtime", e))?;
            Ok((listener, Origin::Activated))
        }
        many => Err(StartupError::Activation(format!(
            "expected one socket, got {} (use a single ListenStream= in the .socket unit)",
            many.len()
        ))),
    }
}
