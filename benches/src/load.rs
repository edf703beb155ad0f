//! Load generators: `wrk` for HTTP/1.1 and `h2load` for HTTP/2, run as child processes, their
//! text reports parsed into [`LoadResult`].
//!
//! They are the standard tools the issue names (Debian packages `wrk` and `nghttp2-client`,
//! installed by `scripts/install-deps`); parsing their reports keeps the harness free of a
//! load generator of its own whose biases nobody knows. Neither corrects for coordinated
//! omission: the latencies here are closed-loop figures at saturation (see BENCHMARKS.md).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Running or reading a load generator failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The tool is not installed.
    #[error("{tool} not found: scripts/install-deps installs it ({package})")]
    Missing {
        /// `wrk` or `h2load`.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// The tool exited unsuccessfully.
    #[error("{tool} failed ({status}): {output}")]
    Failed {
        /// `wrk` or `h2load`.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// Its report lacked a figure the harness needs.
    #[error("{tool} report has no {what}:\n{output}")]
    Unparsable {
        /// `wrk` or `h2load`.
        tool: &'static str,
        /// The missing figure.
        what: &'static str,
        /// The report.
        output: String,
    },
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadResult {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency (wrk's distribution; h2load reports only the mean, used instead).
    pub p50: Option<Duration>,
    /// 99th percentile latency (wrk and the open-loop generator).
    pub p99: Option<Duration>,
    /// 99.9th percentile latency (the open-loop generator only).
    pub p999: Option<Duration>,
    /// Responses that were not 2xx/3xx plus socket errors that lost requests.
    pub errors: u64,
}

/// How the load generator talks to the path under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// wrk, HTTP/1.1 keep-alive.
    Http1,
    /// wrk with `Connection: close`: a new TCP connection per request.
    Http1NewConnection,
    /// h2load, HTTP/2 prior knowledge with this many concurrent streams per connection.
    Http2 {
        /// Streams per connection (`h2load -m`).
        streams: u32,
    },
}

/// One load run: who, where, how hard, how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The client protocol.
    pub client: Client,
    /// Connections held open.
    pub connections: u32,
    /// Run time.
    pub duration: Duration,
    /// The request path (selects the upstream's body size).
    pub path: &'static str,
}

/// Runs `spec` against `target` and parses the tool's report.
pub fn run(spec: &LoadSpec, target: SocketAddr) -> Result<LoadResult, LoadError> {
    let url = format!("http://{target}{}", spec.path);
    let secs = spec.duration.as_secs().max(1).to_string();
    let connections = spec.connections.max(1).to_string();
    let (tool, package, mut command) = match spec.client {
        Client::Http1 | Client::Http1NewConnection => ("wrk", "wrk", Command::new("wrk")),
        Client::Http2 { .. } => ("h2load", "nghttp2-client", Command::new("h2load")),
    };
    match spec.client {
        Client::Http1 => command.args(["-t1", "-c", &connections, "-d", &secs, "--latency", &url]),
        Client::Http1NewConnection => command.args([
            "-t1",
            "-c",
            &connections,
            "-d",
            &secs,
            "--latency",
            "-H",
            "Connection: close",
            &url,
        ]),
        Client::Http2 { streams } => command.args([
            "-t1",
            "-c",
            &connections,
            "-m",
            &streams.to_string(),
            "-D",
            &secs,
            &url,
        ]),
    };
    let output = command
        .output()
        .map_err(|_| LoadError::Missing { tool, package })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(LoadError::Failed {
            tool,
            status: output.status.to_string(),
            output: text,
        });
    }
    match spec.client {
        Client::Http1 => parse_wrk(&text, false),
        Client::Http1NewConnection => parse_wrk(&text, true),
        Client::Http2 { .. } => parse_h2load(&text),
    }
}

/// Parses wrk's report. With `closing` (a `Connection: close` run), wrk counts every server
/// close as a read error, so read errors are not failures there.
pub fn parse_wrk(report: &str, closing: bool) -> Result<LoadResult, LoadError> {
    let missing = |what| LoadError::Unparsable {
        tool: "wrk",
        what,
        output: report.to_owned(),
    };
    let rps = value_after(report, "Requests/sec:").ok_or_else(|| missing("Requests/sec"))?;
    let requests = report
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| missing("request count"))?;
    let mut errors = value_after(report, "Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    if let Some(line) = report.lines().find(|l| l.contains("Socket errors:")) {
        for part in line.split(':').nth(1).unwrap_or("").split(',') {
            let mut words = part.split_whitespace();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            if !(closing && kind == "read") {
                errors += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let percentile = |p: &str| {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|rest| parse_duration(rest.trim()))
    };
    Ok(LoadResult {
        requests,
        rps,
        p50: percentile("50%"),
        p99: percentile("99%"),
        p999: None,
        errors,
    })
}

/// Parses h2load's report.
pub fn parse_h2load(report: &str) -> Result<LoadResult, LoadError> {
    let missing = |what| LoadError::Unparsable {
        tool: "h2load",
        what,
        output: report.to_owned(),
    };
    let finished = report
        .lines()
        .find(|l| l.starts_with("finished in"))
        .ok_or_else(|| missing("`finished in` line"))?;
    let rps = finished
        .split(',')
        .nth(1)
        .and_then(|s| s.trim().strip_suffix("req/s"))
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| missing("req/s"))?;
    let requests_line = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .ok_or_else(|| missing("requests line"))?;
    let count = |name: &str| -> u64 {
        requests_line
            .split(',')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("requests:")
                    .trim()
                    .strip_suffix(name)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let mean = report
        .lines()
        .find(|l| l.starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(parse_duration);
    Ok(LoadResult {
        requests: count("succeeded"),
        rps,
        p50: mean,
        p99: None,
        p999: None,
        // h2load's `failed` already includes errored and timed-out requests and non-2xx/3xx
        // answers.
        errors: count("failed"),
    })
}

fn value_after(report: &str, label: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `302.00us`, `1.87ms`, `2.1s` as the tools print them.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 1s test @ http://127.0.0.1:18080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.19ms    1.45ms   8.45ms   82.90%
    Req/Sec     6.32k     1.18k    9.57k    90.00%
  Latency Distribution
     50%  302.00us
     75%    1.87ms
     90%    3.49ms
     99%    5.61ms
  6336 requests in 1.01s, 1.47MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:   6287.50
Transfer/sec:      1.46MB
";

    const H2LOAD: &str = "finished in 1.01s, 24310.00 req/s, 3.26MB/s
requests: 24310 total, 24326 started, 24310 done, 24300 succeeded, 10 failed, 0 errored, 0 timeout
status codes: 24300 2xx, 0 3xx, 0 4xx, 10 5xx
traffic: 3.29MB (3449960) total, 71.39KB (73106) headers (space savings 95.01%), 3.02MB (3168000) data
                     min         max         mean         sd        +/- sd
time for request:       62us      3.41ms       612us       201us    80.01%
";

    #[test]
    fn wrk_reports_are_parsed() {
        let result = parse_wrk(WRK, false).unwrap();
        assert_eq!(result.requests, 6336);
        assert!((result.rps - 6287.5).abs() < 1e-9);
        assert_eq!(result.p50, Some(Duration::from_micros(302)));
        assert_eq!(result.p99, Some(Duration::from_micros(5610)));
        assert_eq!(result.errors, 3 + 1 + 2);
    }

    #[test]
    fn read_errors_are_expected_when_every_connection_closes() {
        assert_eq!(parse_wrk(WRK, true).unwrap().errors, 1 + 2);
    }

    #[test]
    fn h2load_reports_are_parsed() {
        let result = parse_h2load(H2LOAD).unwrap();
        assert_eq!(result.requests, 24300);
        assert!((result.rps - 24310.0).abs() < 1e-9);
        assert_eq!(result.p50, Some(Duration::from_micros(612)));
        assert_eq!(result.errors, 10);
    }

    #[test]
    fn a_report_without_figures_is_an_error() {
        assert!(matches!(
            parse_wrk("nothing", false),
            Err(LoadError::Unparsable { .. })
        ));
        assert!(matches!(
            parse_h2load("nothing"),
            Err(LoadError::Unparsable { .. })
        ));
    }
}
