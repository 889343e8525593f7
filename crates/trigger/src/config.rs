//! Command-line flags, each with an environment variable so a systemd unit can set it with an
//! `Environment=` line, turned into a checked [`Config`] once at start-up. Mistakes that would
//! otherwise surface at the first trigger (a worker binary that is not there, an empty token
//! file, two token sources) stop the daemon with exit code 2 before it answers anything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::auth::Token;
use crate::error::StartupError;

/// Read by the daemon itself, never passed on: the token is a secret and command lines are not.
pub const TOKEN_ENV: &str = "QUANTLENS_TRIGGER_TOKEN";

const ENVIRONMENT_HELP: &str = "\
Environment:
  QUANTLENS_TRIGGER_TOKEN  The bearer token itself (instead of --token-file). There is no flag
                           for it: command lines are visible to every user of the machine.
  DATA_ROOT, LANDING_DIR   Not read by the daemon; passed through to the worker.
  PATH HOME LANG LC_* TZ TMPDIR RUST_LOG RUST_BACKTRACE AWS_* QUANTLENS_KEEP_RUNS
                           Also passed through to the worker. Nothing else is: the worker starts
                           with a clean environment (no NOTIFY_SOCKET, LISTEN_*, token).
  LISTEN_FDS, LISTEN_PID   Socket activation: when LISTEN_PID is this process and LISTEN_FDS=1,
                           serve on the inherited fd 3 and ignore --listen.
  NOTIFY_SOCKET            sd_notify: READY=1 once serving, STOPPING=1 when shutting down.
  WATCHDOG_USEC            With WatchdogSec= set: WATCHDOG=1 every half period.

The worker is started as `WORKER materialize --select SEL --run-id ID` in its own process group,
with STATE_DIR, QUANTLENS_LOCK_FD (the run lock, already taken), QUANTLENS_TRIGGER=http and
QUANTLENS_LOG_CAPTURED=1 set, and stdout and stderr appended to STATE_DIR/runs/ID/worker.log.

Exit codes: 0 after SIGTERM, SIGINT or --idle-exit; 1 on a runtime failure (e.g. the port is
taken); 2 on a configuration error.

The HTTP API is described in docs/http-api.md.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "quantlens-trigger",
    version,
    about = "The QuantLens trigger daemon: starts `quantlens materialize` runs over HTTP and reports on them.",
    long_about = "The QuantLens trigger daemon: a small HTTP service on a private port that starts \
`quantlens materialize` runs (POST /trigger) and reports on them (GET /runs, GET /runs/ID, \
GET /runs/ID/log, GET /health). One run at a time per state directory, shared with the CLI and \
the timer through the run lock. Meant to be socket-activated by systemd and to exit when idle.",
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    /// Address to listen on when systemd passes no socket. Keep it on loopback or a private
    /// interface: the daemon speaks plain HTTP.
    #[arg(
        long,
        env = "QUANTLENS_TRIGGER_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8787"
    )]
    listen: SocketAddr,

    /// The worker binary to run [default: `quantlens` in the directory of this executable].
    #[arg(long, env = "QUANTLENS_WORKER", value_name = "PATH")]
    worker: Option<PathBuf>,

    /// Run records and the run lock; created if missing, and passed to the worker as STATE_DIR.
    #[arg(long, env = "STATE_DIR", value_name = "DIR", default_value = "./state")]
    state_dir: PathBuf,

    /// Stop a run that takes longer than this: SIGTERM to its process group, SIGKILL after
    /// --kill-grace. The run is recorded as timed_out. Fractions are allowed.
    #[arg(long, env = "QUANTLENS_RUN_TIMEOUT", value_name = "SECONDS", default_value = "7200",
          value_parser = positive_seconds)]
    run_timeout: Duration,

    /// How long a worker (and whatever it left in its process group) gets between SIGTERM and
    /// SIGKILL, on timeout, on shutdown, and for leftovers after the worker exits.
    #[arg(long, env = "QUANTLENS_KILL_GRACE", value_name = "SECONDS", default_value = "30",
          value_parser = seconds)]
    kill_grace: Duration,

    /// GET /health answers 503 when the last successful run finished longer ago than this, so an
    /// uptime check notices a stalled pipeline. The default, 26 hours, suits a daily pipeline.
    #[arg(long, env = "QUANTLENS_MAX_AGE", value_name = "SECONDS", default_value = "93600",
          value_parser = positive_seconds)]
    max_age: Duration,

    /// Exit with code 0 after this long without a request while no run is in progress, so a
    /// socket-activated daemon costs nothing between triggers. 0 never exits.
    #[arg(long, env = "QUANTLENS_IDLE_EXIT", value_name = "SECONDS", default_value = "0",
          value_parser = seconds)]
    idle_exit: Duration,

    /// Require `Authorization: Bearer TOKEN` on every endpoint but /health, TOKEN being this
    /// file's content without surrounding whitespace (e.g. a systemd credential). See also
    /// QUANTLENS_TRIGGER_TOKEN below.
    #[arg(long, env = "QUANTLENS_TRIGGER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// The checked configuration the daemon runs with.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub worker: PathBuf,
    pub state_dir: PathBuf,
    pub run_timeout: Duration,
    pub kill_grace: Duration,
    pub max_age: Duration,
    /// `None`: never exit for idleness.
    pub idle_exit: Option<Duration>,
    pub token: Option<Token>,
}

impl Config {
    /// Checks `cli` against the file system and the environment.
    pub fn from_cli(cli: Cli) -> Result<Config, StartupError> {
        let worker = match cli.worker {
            Some(path) => path,
            None => default_worker()?,
        };
        check_executable(&worker)?;
        Ok(Config {
            listen: cli.listen,
            worker,
            state_dir: cli.state_dir,
            run_timeout: cli.run_timeout,
            kill_grace: cli.kill_grace,
            max_age: cli.max_age,
            idle_exit: Some(cli.idle_exit).filter(|d| !d.is_zero()),
            token: Token::load(cli.token_file.as_deref(), std::env::var_os(TOKEN_ENV))?,
        })
    }
}

/// `quantlens` beside our own executable: that is how both are installed.
fn default_worker() -> Result<PathBuf, StartupError> {
    let exe = std::env::current_exe().map_err(StartupError::OwnExecutable)?;
    Ok(exe.with_file_name("quantlens"))
}

fn check_executable(path: &Path) -> Result<(), StartupError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |reason: String| StartupError::Worker {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(fail("not executable".into()));
    }
    Ok(())
}

/// The most any duration flag may say: far beyond any sensible value, and small enough that
/// adding it to an `Instant` cannot overflow.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=MAX_SECONDS).contains(&value) {
        return Err(format!(
            "`{text}` is out of range (0 to {MAX_SECONDS} seconds)"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn positive_seconds(text: &str) -> Result<Duration, String> {
    match seconds(text)? {
        d if d.is_zero() => Err("must be more than 0 seconds".into()),
        d => Ok(d),
    }
}

/// For tests: a `Cli` from arguments alone, ignoring the environment's values.
#[cfg(test)]
pub fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("quantlens-trigger").chain(args.iter().copied()))
}

/// The flag names, for the test that `--help` explains each of them.
#[cfg(test)]
pub fn flag_names() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_fractions_and_reject_nonsense() {
        assert_eq!(seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(seconds("0").unwrap(), Duration::ZERO);
        for bad in ["", "-1", "NaN", "inf", "1e30", "ten"] {
            assert!(seconds(bad).is_err(), "{bad:?}");
        }
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("0.01").is_ok());
    }

    #[test]
    fn defaults_are_loopback_and_documented_values() {
        let cli = parse_args(&["--state-dir", "/tmp/x"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(cli.run_timeout, Duration::from_secs(7200));
        assert_eq!(cli.kill_grace, Duration::from_secs(30));
        assert_eq!(cli.max_age, Duration::from_secs(26 * 3600));
        assert_eq!(cli.idle_exit, Duration::ZERO);
    }

    #[test]
    fn a_missing_worker_is_a_startup_error() {
        let cli = parse_args(&["--worker", "/nonexistent/quantlens"]).unwrap();
        let err = Config::from_cli(cli).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/quantlens"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn help_explains_every_flag_and_variable() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in flag_names() {
            assert!(help.contains(&format!("--{flag}")), "--{flag} missing");
        }
        for var in [
            "QUANTLENS_TRIGGER_LISTEN",
            "QUANTLENS_WORKER",
            "STATE_DIR",
            "QUANTLENS_RUN_TIMEOUT",
            "QUANTLENS_KILL_GRACE",
            "QUANTLENS_MAX_AGE",
            "QUANTLENS_IDLE_EXIT",
            "QUANTLENS_TRIGGER_TOKEN_FILE",
            TOKEN_ENV,
            "DATA_ROOT",
            "LANDING_DIR",
            "LISTEN_FDS",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "QUANTLENS_LOCK_FD",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }
}
