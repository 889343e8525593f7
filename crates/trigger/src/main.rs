//! `quantlens-trigger` is the small HTTP daemon that starts QuantLens worker runs
//! (`quantlens materialize`) and reports on them. It is the only resident process of a
//! QuantLens VM, so it is built to cost little: one Tokio thread, HTTP/1 only, a handful of
//! dependencies, socket activation by systemd and an optional exit when idle. It never computes
//! or touches a Delta table; it spawns the worker in its own process group with the run lock
//! already taken and handed over, watches it (timeout, crash, leftovers) and reads the run
//! records the worker writes under STATE_DIR.
//!
//! The modules follow a request: `config` (flags), `listener` (LISTEN_FDS or bind), `api`
//! (the endpoints) with `auth` and `idempotency`, `lock` and `supervise` (starting and minding
//! a run), `health`, `notify` (sd_notify), and `server`, which ties them together and owns
//! shutdown.

mod alert;
mod api;
mod auth;
mod config;
mod connections;
mod error;
mod health;
mod idempotency;
mod listener;
mod notify;
mod page;
mod server;
mod supervise;

use std::process::ExitCode;

use crate::config::Command;
use crate::error::{chain, StartupError};

fn main() -> ExitCode {
    let result = config::from_process().and_then(|command| match command {
        Command::Print(text) => {
            println!("{text}");
            Ok(())
        }
        Command::Run(config) => {
            // One thread: the daemon waits on sockets and one child, and every thread costs RSS.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartupError::Runtime)?
                .block_on(server::run(*config))
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quantlens-trigger: error: {}", chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}
