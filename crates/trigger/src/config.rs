//! Command-line flags, each with an environment variable so a systemd unit can set it with an
//! `Environment=` line (a flag wins over its variable, which wins over the default), turned
//! into a checked [`Config`] once at start-up. Mistakes that would otherwise surface at the first
//! trigger (a worker binary that is not there, an empty token file, two token sources) stop the
//! daemon with exit code 2 before it answers anything.
//!
//! The parser is a table and a loop rather than clap: eight flags do not need a framework, and
//! clap was an eighth of the binary and of its resident pages.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quantlens_runs::health::{Bound, DiskCheck};

use crate::auth::Token;
use crate::error::StartupError;

/// Read by the daemon itself, never passed on: the token is a secret and command lines are not.
pub const TOKEN_ENV: &str = "QUANTLENS_TRIGGER_TOKEN";

/// One command-line flag.
struct Flag {
    name: &'static str,
    env: &'static str,
    value: &'static str,
    default: Option<&'static str>,
    help: &'static str,
}

const LISTEN: usize = 0;
const WORKER: usize = 1;
const STATE_DIR: usize = 2;
const RUN_TIMEOUT: usize = 3;
const KILL_GRACE: usize = 4;
const MAX_AGE: usize = 5;
const IDLE_EXIT: usize = 6;
const TOKEN_FILE: usize = 7;
const SCHEDULE: usize = 8;
const SCHEDULE_GRACE: usize = 9;
const MIN_FREE_MB: usize = 10;

/// Every flag, in the order `--help` lists them; the constants above index it.
const FLAGS: [Flag; 11] = [
    Flag {
        name: "listen",
        env: "QUANTLENS_TRIGGER_LISTEN",
        value: "ADDR",
        default: Some("127.0.0.1:8787"),
        help: "Address to listen on when systemd passes no socket. Keep it on loopback or a \
               private interface: the daemon speaks plain HTTP.",
    },
    Flag {
        name: "worker",
        env: "QUANTLENS_WORKER",
        value: "PATH",
        default: None,
        help: "The worker binary to run. Default: `quantlens` in the directory of this \
               executable.",
    },
    Flag {
        name: "state-dir",
        env: "STATE_DIR",
        value: "DIR",
        default: Some("./state"),
        help: "Run records and the run lock; created if missing, and passed to the worker as \
               STATE_DIR.",
    },
    Flag {
        name: "run-timeout",
        env: "QUANTLENS_RUN_TIMEOUT",
        value: "SECONDS",
        default: Some("7200"),
        help: "Stop a run that takes longer than this: SIGTERM to its process group, SIGKILL \
               after --kill-grace. The run is recorded as timed_out. Fractions are allowed.",
    },
    Flag {
        name: "kill-grace",
        env: "QUANTLENS_KILL_GRACE",
        value: "SECONDS",
        default: Some("30"),
        help: "How long a worker (and whatever it left in its process group) gets between \
               SIGTERM and SIGKILL: on timeout, on shutdown, and for leftovers after it exits.",
    },
    Flag {
        name: "max-age",
        env: "QUANTLENS_MAX_AGE",
        value: "SECONDS",
        default: Some("93600"),
        help: "GET /health answers 503 when the last successful run finished longer ago than \
               this, so an uptime check notices a stalled pipeline. The default, 26 hours, \
               suits a daily pipeline.",
    },
    Flag {
        name: "idle-exit",
        env: "QUANTLENS_IDLE_EXIT",
        value: "SECONDS",
        default: Some("0"),
        help: "Exit with code 0 after this long without a request while no run is in \
               progress, so a socket-activated daemon costs nothing between triggers. 0 never \
               exits.",
    },
    Flag {
        name: "token-file",
        env: "QUANTLENS_TRIGGER_TOKEN_FILE",
        value: "PATH",
        default: None,
        help: "Require `Authorization: Bearer TOKEN` on every endpoint but /health, /status and the page's files, TOKEN being \
               this file's content without surrounding whitespace (e.g. a systemd credential). \
               See also QUANTLENS_TRIGGER_TOKEN below.",
    },
    Flag {
        name: "schedule",
        env: "QUANTLENS_SCHEDULE",
        value: "CALENDAR",
        default: None,
        help: "The materialisation timer's calendar, e.g. `Mon..Fri *-*-* 22:30:00 UTC` \
               (weekdays, HH:MM[:SS], UTC). With it, GET /health follows the schedule instead \
               of --max-age: 503 only when the latest scheduled run that started \
               --schedule-grace ago has not succeeded, so the days without a run are not \
               outages.",
    },
    Flag {
        name: "schedule-grace",
        env: "QUANTLENS_SCHEDULE_GRACE",
        value: "SECONDS",
        default: Some("7200"),
        help: "With --schedule: how long a scheduled run may take to succeed.",
    },
    Flag {
        name: "min-free-mb",
        env: "QUANTLENS_MIN_FREE_MB",
        value: "MB",
        default: Some("64"),
        help: "GET /health answers 503 `disk_full` when the state directory's filesystem, or a \
               local DATA_ROOT's, has less free space than this many MiB: the next run would \
               fail to write.",
    },
];

const ABOUT: &str = "\
quantlens-trigger: the QuantLens trigger daemon.

A small HTTP service on a private port that starts `quantlens materialize` runs (POST /trigger)
and reports on them (GET /runs, GET /runs/ID, GET /runs/ID/log, GET /health, and a status page
at /). One run at a time
per state directory, shared with the CLI and the timer through the run lock. Meant to be
socket-activated by systemd and to exit when idle. The HTTP API is described in docs/http-api.md.

Usage: quantlens-trigger [OPTIONS]";

const ENVIRONMENT: &str = "\
Environment:
  Each option above can also be set with the variable shown; the option wins.
  QUANTLENS_TRIGGER_TOKEN  The bearer token itself (instead of --token-file). There is no flag
                           for it: command lines are visible to every user of the machine.
  DATA_ROOT                Passed through to the worker; when local, GET /health also watches
                           its filesystem's free space (--min-free-mb).
  LANDING_DIR, ASSETS_DIR  Not read by the daemon; passed through to the worker.
  PATH HOME LANG LC_* TZ TMPDIR RUST_LOG RUST_BACKTRACE AWS_* QUANTLENS_KEEP_RUNS
  QUANTLENS_CACHE_DIR QUANTLENS_DUCKDB_MEMORY QUANTLENS_PIECE_ROWS QUANTLENS_S3_CREDENTIALS
  QUANTLENS_REPORT QUANTLENS_MAX_AGE QUANTLENS_SCHEDULE QUANTLENS_SCHEDULE_GRACE
  QUANTLENS_MIN_FREE_MB
  QUANTLENS_NOTIFY_WEBHOOK QUANTLENS_NOTIFY_SLACK QUANTLENS_HEARTBEAT_URL
  QUANTLENS_NOTIFY_CREDENTIALS
  CREDENTIALS_DIRECTORY    Also passed through to the worker. Nothing else is: the worker starts
                           with a clean environment (no NOTIFY_SOCKET, LISTEN_*, token).
  LISTEN_FDS, LISTEN_PID   Socket activation: when LISTEN_PID is this process and LISTEN_FDS=1,
                           serve on the inherited fd 3 and ignore --listen.
  NOTIFY_SOCKET            sd_notify: READY=1 once serving, STOPPING=1 when shutting down.
  WATCHDOG_USEC            With WatchdogSec= set: WATCHDOG=1 every half period.

The worker is started as `WORKER materialize --select SEL --run-id ID` in its own process group,
with STATE_DIR, QUANTLENS_LOCK_FD (the run lock, already taken), QUANTLENS_TRIGGER=http and
QUANTLENS_LOG_CAPTURED=1 set, and stdout and stderr appended to STATE_DIR/runs/ID/worker.log.

Exit codes: 0 after SIGTERM, SIGINT or --idle-exit; 1 on a runtime failure (e.g. the port is
taken); 2 on a configuration error.";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    /// Print this and exit 0 (`--help`, `--version`).
    Print(String),
}

/// The checked configuration the daemon runs with.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub worker: PathBuf,
    pub state_dir: PathBuf,
    pub run_timeout: Duration,
    pub kill_grace: Duration,
    /// How old the last success may be for GET /health: --max-age, or the --schedule.
    pub bound: Bound,
    /// The filesystems GET /health watches for free space.
    pub disks: DiskCheck,
    /// `None`: never exit for idleness.
    pub idle_exit: Option<Duration>,
    pub token: Option<Token>,
}

/// Reads the command line and the environment of this process.
pub fn from_process() -> Result<Command, StartupError> {
    parse(std::env::args_os().skip(1), |name| std::env::var_os(name))
}

/// `args` without the program name; `env` looks a variable up.
fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Command, StartupError> {
    let mut given: [Option<OsString>; FLAGS.len()] = Default::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "-h" | "--help" => return Ok(Command::Print(help())),
            "-V" | "--version" => {
                return Ok(Command::Print(format!(
                    "quantlens-trigger {}",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            _ => {}
        }
        let Some(flag) = text.strip_prefix("--") else {
            return Err(usage(format!("unexpected argument `{text}`")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(OsString::from(value))),
            None => (flag, None),
        };
        let index = FLAGS
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| usage(format!("unknown option `--{name}`")))?;
        if given[index].is_some() {
            return Err(usage(format!("`--{name}` given twice")));
        }
        let value = match inline {
            Some(value) => value,
            None => args.next().ok_or_else(|| {
                usage(format!("`--{name}` needs a value ({})", FLAGS[index].value))
            })?,
        };
        given[index] = Some(value);
    }

    // Flag, then variable, then default; each value keeps a note of where it came from, so an
    // error can say which setting to fix.
    let setting = |index: usize| -> Option<(OsString, String)> {
        let flag = &FLAGS[index];
        if let Some(value) = given[index].clone() {
            return Some((value, format!("--{}", flag.name)));
        }
        if let Some(value) = env(flag.env).filter(|v| !v.is_empty()) {
            return Some((value, flag.env.to_owned()));
        }
        flag.default.map(|d| (d.into(), format!("--{}", flag.name)))
    };
    let text = |index| -> Result<Option<(String, String)>, StartupError> {
        match setting(index) {
            None => Ok(None),
            Some((value, source)) => match value.into_string() {
                Ok(value) => Ok(Some((value, source))),
                Err(_) => Err(usage(format!("{source}: not valid UTF-8"))),
            },
        }
    };
    let duration = |index, positive| -> Result<Duration, StartupError> {
        let (value, source) = text(index)?.expect("duration flags have defaults");
        seconds(&value, positive).map_err(|reason| usage(format!("{source}: {reason}")))
    };

    let (listen, source) = text(LISTEN)?.expect("--listen has a default");
    let listen = listen.parse().map_err(|_| {
        usage(format!(
            "{source}: `{listen}` is not an address like 127.0.0.1:8787"
        ))
    })?;
    let worker = match setting(WORKER) {
        Some((path, _)) => PathBuf::from(path),
        None => default_worker()?,
    };
    check_executable(&worker)?;
    let state_dir = PathBuf::from(setting(STATE_DIR).expect("--state-dir has a default").0);
    let token_file = setting(TOKEN_FILE).map(|(path, _)| PathBuf::from(path));
    Ok(Command::Run(Box::new(Config {
        listen,
        worker,
        state_dir,
        run_timeout: duration(RUN_TIMEOUT, true)?,
        kill_grace: duration(KILL_GRACE, false)?,
        bound: match text(SCHEDULE)? {
            None => Bound::MaxAge(duration(MAX_AGE, true)?),
            Some((calendar, source)) => Bound::Schedule {
                schedule: calendar
                    .parse()
                    .map_err(|e| usage(format!("{source}: {e}")))?,
                grace: duration(SCHEDULE_GRACE, false)?,
            },
        },
        disks: {
            let (value, source) = text(MIN_FREE_MB)?.expect("--min-free-mb has a default");
            let min_free_mb = value
                .trim()
                .parse::<u64>()
                .map_err(|_| usage(format!("{source}: `{value}` is not a whole number of MiB")))?;
            let data_root = env("DATA_ROOT").map(|root| root.to_string_lossy().into_owned());
            DiskCheck::new(data_root.as_deref(), min_free_mb)
        },
        idle_exit: Some(duration(IDLE_EXIT, false)?).filter(|d| !d.is_zero()),
        token: Token::load(token_file.as_deref(), env(TOKEN_ENV))?,
    })))
}

fn usage(message: String) -> StartupError {
    StartupError::Usage(message)
}

/// The `--help` text, built from the flag table so it cannot forget one.
fn help() -> String {
    let mut out = format!("{ABOUT}\n\nOptions:\n");
    for flag in &FLAGS {
        out.push_str(&format!("  --{} <{}>\n", flag.name, flag.value));
        for line in wrap(flag.help, 88) {
            out.push_str(&format!("          {line}\n"));
        }
        let default = flag
            .default
            .map(|d| format!("  [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!("          [env: {}]{default}\n\n", flag.env));
    }
    out.push_str("  -h, --help     Print this help\n  -V, --version  Print the version\n\n");
    out.push_str(ENVIRONMENT);
    out
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
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

/// The most any duration may be: far beyond any sensible value, and small enough that adding
/// it to an `Instant` cannot overflow.
const MAX_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

fn seconds(text: &str, positive: bool) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=MAX_SECONDS).contains(&value) {
        return Err(format!(
            "`{text}` is out of range (0 to {MAX_SECONDS} seconds)"
        ));
    }
    if positive && value == 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, StartupError> {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let mut argv = vec!["--worker", "/bin/sh"];
        argv.extend_from_slice(args);
        parse(argv.into_iter().map(OsString::from), |name| {
            env.get(name).cloned()
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env).unwrap() {
            Command::Run(config) => *config,
            other => panic!("{other:?}"),
        }
    }

    fn error(args: &[&str], env: &[(&str, &str)]) -> String {
        let err = run(args, env).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn defaults_are_loopback_and_documented_values() {
        let c = config(&[], &[]);
        assert_eq!(c.listen, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(c.state_dir, Path::new("./state"));
        assert_eq!(c.run_timeout, Duration::from_secs(7200));
        assert_eq!(c.kill_grace, Duration::from_secs(30));
        assert!(matches!(c.bound, Bound::MaxAge(d) if d == Duration::from_secs(26 * 3600)));
        assert_eq!(c.idle_exit, None);
        assert!(c.token.is_none());
    }

    #[test]
    fn flags_win_over_variables_which_win_over_defaults() {
        let env = [
            ("QUANTLENS_RUN_TIMEOUT", "60"),
            ("QUANTLENS_IDLE_EXIT", "300"),
            ("STATE_DIR", "/var/lib/quantlens/state"),
        ];
        let c = config(&["--run-timeout", "1.5", "--listen=127.0.0.1:9000"], &env);
        assert_eq!(c.run_timeout, Duration::from_millis(1500));
        assert_eq!(c.idle_exit, Some(Duration::from_secs(300)));
        assert_eq!(c.state_dir, Path::new("/var/lib/quantlens/state"));
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        // An empty variable counts as unset, as systemd's `Environment=X=` intends.
        let c = config(&[], &[("QUANTLENS_RUN_TIMEOUT", "")]);
        assert_eq!(c.run_timeout, Duration::from_secs(7200));
    }

    #[test]
    fn a_schedule_replaces_the_max_age() {
        let c = config(
            &[],
            &[("QUANTLENS_SCHEDULE", "Mon..Fri *-*-* 22:30:00 UTC")],
        );
        let Bound::Schedule { schedule, grace } = c.bound else {
            panic!("{:?}", c.bound)
        };
        assert_eq!(schedule.to_string(), "Mon..Fri *-*-* 22:30:00 UTC");
        assert_eq!(grace, Duration::from_secs(7200));
        let err = error(&["--schedule", "weekdays at ten"], &[]);
        assert!(
            err.contains("--schedule: `weekdays at ten` is not a schedule"),
            "{err}"
        );
    }

    #[test]
    fn mistakes_name_the_setting_to_fix() {
        assert!(error(&["--run-timeout", "0"], &[]).contains("--run-timeout: must be more"));
        assert!(error(&[], &[("QUANTLENS_MAX_AGE", "a day")])
            .contains("QUANTLENS_MAX_AGE: `a day` is not a number of seconds"));
        assert!(error(&["--listen", "0.0.0.0"], &[]).contains("not an address"));
        assert!(error(&["--idle-exit"], &[]).contains("needs a value"));
        assert!(error(&["--verbose"], &[]).contains("unknown option `--verbose`"));
        assert!(error(&["serve"], &[]).contains("unexpected argument `serve`"));
        assert!(error(&["--max-age", "1", "--max-age=2"], &[]).contains("given twice"));
        assert!(error(&["--kill-grace", "-1"], &[]).contains("out of range"));
        assert!(error(&["--kill-grace", "NaN"], &[]).contains("out of range"));
    }

    #[test]
    fn a_missing_worker_is_a_startup_error() {
        let err = parse(
            ["--worker", "/nonexistent/quantlens"].map(OsString::from),
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/quantlens"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn help_explains_every_flag_and_variable() {
        let Command::Print(help) = run(&["--help"], &[]).unwrap() else {
            panic!("no help");
        };
        for flag in &FLAGS {
            assert!(help.contains(&format!("--{} <{}>", flag.name, flag.value)));
            assert!(help.contains(&format!("[env: {}]", flag.env)));
        }
        for var in [
            TOKEN_ENV,
            "DATA_ROOT",
            "LANDING_DIR",
            "LISTEN_FDS",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "QUANTLENS_LOCK_FD",
            "127.0.0.1:8787",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
        assert!(help.lines().all(|l| l.len() <= 100), "{help}");
        let Command::Print(version) = run(&["-V"], &[]).unwrap() else {
            panic!("no version");
        };
        assert!(version.starts_with("quantlens-trigger "));
    }
}
