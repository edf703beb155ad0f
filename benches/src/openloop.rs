//! The open-loop load generator: requests at a fixed rate, latency corrected for coordinated
//! omission, as wrk2 measures it.
//!
//! Debian's `wrk` is closed-loop: a connection sends its next request only when the previous
//! answer is in, so a server that stalls also stops the clock that would have measured the stall
//! (coordinated omission). Here every *lane* (an HTTP/1.1 connection, or one stream slot of an
//! HTTP/2 connection) owns a fixed schedule: request `i` is due at `start + offset + i * interval`.
//! A request sent on time is timed from its send; one that is late because the lane was still
//! waiting for the previous answer is timed from when it was *due*, so a stall shows up in every
//! request it delayed. (The timer's own millisecond slack, when the lane was idle, is not the
//! server's fault and is not counted.) The distribution goes into an HDR histogram in
//! microseconds. Tokio's timer has millisecond resolution, so requests due within the same
//! millisecond leave together, as with wrk2: the load is the same for every path.
//!
//! The generator runs on its own OS thread and single-threaded Tokio runtime, like the upstream,
//! so the harness's orchestration never competes with it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::load::{LoadError, LoadResult};

/// The protocol the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request in flight per connection.
    Http1,
    /// HTTP/2 with prior knowledge, `streams` lanes per connection.
    Http2 {
        /// Concurrent streams (lanes) per connection.
        streams: u32,
    },
}

/// One fixed-rate run.
#[derive(Debug, Clone)]
pub struct RateSpec {
    /// The protocol.
    pub protocol: Protocol,
    /// Connections held open.
    pub connections: u32,
    /// Requests per second over all lanes.
    pub rate: f64,
    /// Run time.
    pub duration: Duration,
    /// The request path.
    pub path: &'static str,
}

impl RateSpec {
    /// Lanes: independent request schedules.
    pub fn lanes(&self) -> u32 {
        let per_connection = match self.protocol {
            Protocol::Http1 => 1,
            Protocol::Http2 { streams } => streams.max(1),
        };
        self.connections.max(1) * per_connection
    }
}

/// Sends requests; an HTTP/2 connection's sender is cloned for each of its lanes.
enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// Runs `spec` against `target` on a thread of its own and returns what it measured.
pub fn run(spec: &RateSpec, target: SocketAddr) -> Result<LoadResult, LoadError> {
    let failed = |output: String| LoadError::Failed {
        tool: "open-loop generator",
        status: "error".into(),
        output,
    };
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        return Err(failed(format!(
            "rate {} is not a positive number",
            spec.rate
        )));
    }
    let spec = spec.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let thread = std::thread::Builder::new()
        .name("bench-openloop".into())
        .spawn(move || runtime.block_on(drive(spec, target)))
        .map_err(|e| failed(e.to_string()))?;
    thread
        .join()
        .map_err(|_| failed("the generator thread panicked".into()))?
        .map_err(failed)
}

async fn connect(protocol: Protocol, target: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http1 => {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Sender::Http1(sender))
        }
        Protocol::Http2 { .. } => {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Sender::Http2(sender))
        }
    }
}

/// One request, its whole body read; `Err` for a transport error or a non-2xx answer.
async fn exchange(sender: &mut Sender, path: &'static str) -> Result<(), String> {
    let response = match sender {
        Sender::Http1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            let request = Request::get(path)
                .header(header::HOST, "bench")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            s.send_request(request).await.map_err(|e| e.to_string())?
        }
        Sender::Http2(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            let request = Request::get(format!("http://bench{path}"))
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            s.send_request(request).await.map_err(|e| e.to_string())?
        }
    };
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| e.to_string())?;
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// What one lane measured.
struct LaneResult {
    histogram: Histogram<u64>,
    errors: u64,
    last_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at three significant digits; fixed bounds, so `new_with_bounds` cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant, valid histogram bounds")
}

async fn drive(spec: RateSpec, target: SocketAddr) -> Result<LoadResult, String> {
    let lanes = spec.lanes();
    let interval = Duration::from_secs_f64(f64::from(lanes) / spec.rate);
    let mut senders = Vec::new();
    for _ in 0..spec.connections.max(1) {
        match connect(spec.protocol, target).await? {
            Sender::Http2(shared) => {
                for _ in 0..lanes / spec.connections.max(1) {
                    senders.push(Sender::Http2(shared.clone()));
                }
            }
            one => senders.push(one),
        }
    }
    // A short lead so every lane is spawned before the first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + spec.duration;
    let mut tasks = Vec::new();
    for (lane, sender) in (0..lanes).zip(senders) {
        let offset = interval.mul_f64(f64::from(lane) / f64::from(lanes));
        let (protocol, path) = (spec.protocol, spec.path);
        tasks.push(tokio::spawn(run_lane(
            sender,
            protocol,
            target,
            path,
            start + offset,
            interval,
            end,
        )));
    }
    let mut total = histogram();
    let mut errors = 0;
    let mut last_error = None;
    for task in tasks {
        let lane = task.await.map_err(|e| format!("lane task: {e}"))?;
        total
            .add(&lane.histogram)
            .map_err(|e| format!("merging histograms: {e}"))?;
        errors += lane.errors;
        last_error = lane.last_error.or(last_error);
    }
    if total.is_empty() {
        return Err(format!(
            "no request succeeded ({errors} errors, last: {})",
            last_error.unwrap_or_default()
        ));
    }
    let quantile = |q| Some(Duration::from_micros(total.value_at_quantile(q)));
    Ok(LoadResult {
        requests: total.len(),
        rps: total.len() as f64 / spec.duration.as_secs_f64(),
        p50: quantile(0.5),
        p99: quantile(0.99),
        p999: quantile(0.999),
        errors,
    })
}

async fn run_lane(
    mut sender: Sender,
    protocol: Protocol,
    target: SocketAddr,
    path: &'static str,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> LaneResult {
    let mut result = LaneResult {
        histogram: histogram(),
        errors: 0,
        last_error: None,
    };
    let mut due = first;
    while due < end {
        let began = if Instant::now() < due {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            // Late because the previous answer took longer than the interval: timed from when
            // the request was due (the coordinated-omission correction).
            due
        };
        match exchange(&mut sender, path).await {
            Ok(()) => {
                let micros = began.elapsed().as_micros().max(1);
                result
                    .histogram
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Err(e) => {
                result.errors += 1;
                result.last_error = Some(e);
                // An HTTP/1.1 lane owns its connection: replace it. HTTP/2 lanes share theirs,
                // and the next attempt shows whether it is still usable.
                if protocol == Protocol::Http1
                    && let Ok(fresh) = connect(protocol, target).await
                {
                    sender = fresh;
                }
            }
        }
        due += interval;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    #[test]
    fn lanes_are_connections_times_streams() {
        let spec = |protocol| RateSpec {
            protocol,
            connections: 4,
            rate: 100.0,
            duration: Duration::from_secs(1),
            path: "/small",
        };
        assert_eq!(spec(Protocol::Http1).lanes(), 4);
        assert_eq!(spec(Protocol::Http2 { streams: 8 }).lanes(), 32);
    }

    #[test]
    fn a_fixed_rate_is_kept_over_both_protocols() {
        let upstream = Upstream::start(1).unwrap();
        for protocol in [Protocol::Http1, Protocol::Http2 { streams: 2 }] {
            let spec = RateSpec {
                protocol,
                connections: 2,
                rate: 200.0,
                duration: Duration::from_secs(1),
                path: "/small",
            };
            let result = run(&spec, upstream.addr()).unwrap();
            assert_eq!(result.errors, 0, "{protocol:?}");
            // Exactly 200 requests are due in the second, whatever the machine's speed.
            assert_eq!(result.requests, 200, "{result:?}");
            assert!(result.p50 <= result.p99 && result.p99 <= result.p999);
        }
    }

    #[test]
    fn errors_are_counted_not_timed() {
        let upstream = Upstream::start(1).unwrap();
        let spec = RateSpec {
            protocol: Protocol::Http1,
            connections: 1,
            rate: 50.0,
            duration: Duration::from_millis(200),
            path: "/missing",
        };
        let err = run(&spec, upstream.addr()).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }
}
