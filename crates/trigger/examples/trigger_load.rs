//! A fixed-rate HTTP/1.1 load generator for the trigger daemon's footprint benchmark
//! (bench/trigger_footprint.sh). wrk measures throughput, not latency at a given rate, and
//! wrk2 is not packaged in Debian, so this does the one thing needed: send requests on a fixed
//! schedule over a few keep-alive connections to a loopback address, and report latency
//! percentiles measured from the moment each request was *due*, so a stalled server cannot
//! hide its stall by slowing the sender down (coordinated omission). Service time from the
//! actual send is reported too. Standard library only; one thread per connection, sleeping
//! between requests, so the generator does not steal the daemon's CPU.
//!
//! ```text
//! trigger_load ADDR RATE SECONDS CONNECTIONS "GET /health" ["POST /trigger" ...]
//! ```
//!
//! Requests are taken round-robin from the list. Prints one JSON object.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: trigger_load ADDR RATE SECONDS CONNECTIONS \"METHOD PATH\"...");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR like 127.0.0.1:8787");
    assert!(
        addr.ip().is_loopback(),
        "load is only ever sent to a loopback address"
    );
    let rate: f64 = args[1].parse().expect("RATE in requests per second");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let connections: usize = args[3].parse().expect("CONNECTIONS");
    assert!(rate > 0.0 && rate <= 20_000.0 && seconds > 0.0 && seconds <= 120.0);
    assert!((1..=64).contains(&connections));
    let requests: Vec<Vec<u8>> = args[4..].iter().map(|r| request_bytes(r, addr)).collect();

    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let requests = requests.clone();
            // Connection c sends requests c, c + connections, ... offset so the combined
            // schedule is evenly spaced at 1 / rate.
            let offset = Duration::from_secs_f64(c as f64 / rate);
            let count = (total + connections - 1 - c) / connections;
            std::thread::spawn(move || {
                run_connection(
                    addr,
                    &requests,
                    start + offset,
                    interval,
                    count,
                    (c, connections),
                )
            })
        })
        .collect();
    let mut results = Results::default();
    for worker in workers {
        results.merge(worker.join().expect("connection thread panicked"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    results.report(total, elapsed, rate);
}

#[derive(Default)]
struct Results {
    /// Latency from when the request was due, in microseconds.
    corrected_us: Vec<u64>,
    /// Latency from when it was actually sent.
    service_us: Vec<u64>,
    statuses: std::collections::BTreeMap<u16, usize>,
    errors: usize,
}

impl Results {
    fn merge(&mut self, other: Results) {
        self.corrected_us.extend(other.corrected_us);
        self.service_us.extend(other.service_us);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
    }

    fn report(mut self, planned: usize, elapsed: f64, rate: f64) {
        self.corrected_us.sort_unstable();
        self.service_us.sort_unstable();
        let pct = |v: &[u64], p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[i] as f64 / 1000.0
        };
        let summary = |v: &[u64]| {
            format!(
                "{{\"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}}}",
                pct(v, 50.0),
                pct(v, 90.0),
                pct(v, 99.0),
                pct(v, 99.9),
                pct(v, 100.0)
            )
        };
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("\"{s}\": {n}"))
            .collect();
        println!(
            "{{\"planned\": {planned}, \"completed\": {}, \"errors\": {}, \"target_rate\": {rate}, \
             \"achieved_rate\": {:.1}, \"statuses\": {{{}}}, \"latency_from_schedule\": {}, \
             \"latency_from_send\": {}}}",
            self.corrected_us.len(),
            self.errors,
            self.corrected_us.len() as f64 / elapsed,
            statuses.join(", "),
            summary(&self.corrected_us),
            summary(&self.service_us),
        );
    }
}

fn request_bytes(spec: &str, addr: SocketAddr) -> Vec<u8> {
    let (method, path) = spec.split_once(' ').expect("request like \"GET /health\"");
    let body = if method == "POST" { "{}" } else { "" };
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_owned()
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(stream))
}

fn run_connection(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    first: Instant,
    interval: Duration,
    count: usize,
    (index, connections): (usize, usize),
) -> Results {
    let mut results = Results::default();
    let mut conn = connect(addr).ok();
    for i in 0..count {
        let due = first + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // The i-th request of connection `index` is request number i * connections + index.
        let request = &requests[(i * connections + index) % requests.len()];
        let sent = Instant::now();
        let outcome = match conn.as_mut() {
            Some(c) => exchange(c, request),
            None => Err(std::io::Error::other("not connected")),
        };
        let done = Instant::now();
        match outcome {
            Ok(status) => {
                *results.statuses.entry(status).or_default() += 1;
                results.corrected_us.push((done - due).as_micros() as u64);
                results.service_us.push((done - sent).as_micros() as u64);
            }
            Err(_) => {
                results.errors += 1;
                conn = connect(addr).ok();
            }
        }
    }
    results
}

/// Sends one request and reads the whole response; returns its status.
fn exchange(conn: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<u16> {
    conn.get_mut().write_all(request)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(status)
}
