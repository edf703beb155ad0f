//! The paths a benchmark compares: straight to the upstream, through Envoy, through ferry-proxy,
//! and through two of either in series (client-side sidecar, then server-side sidecar: the path a
//! request takes in a mesh).
//!
//! Every proxy runs the same bootstrap file (`benches/bootstrap.yaml`) with one worker:
//! Envoy via the test harness's launcher (`--concurrency 1`), ferry-proxy as the binary built
//! next to the harness (`ferry-proxy -c FILE --concurrency 1`). A path is ready when a request
//! through it is answered 200, so no round measures a proxy that is still starting.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_tests::envoy::{Envoy, EnvoyError};
use ferry_tests::net;
use ferry_tests::poll::{self, PATIENCE};
use ferry_tests::process::{Process, ProcessError};

/// The bootstrap both proxies run; `${...}` placeholders are filled per run.
pub const BOOTSTRAP: &str = include_str!("../bootstrap.yaml");

/// Which path a measurement took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// Load generator straight to the upstream: the floor.
    Direct,
    /// Through Envoy 1.40: the baseline.
    Envoy,
    /// Through ferry-proxy.
    Ferry,
    /// Through two Envoys in series (client-side sidecar, then server-side sidecar).
    EnvoyPair,
    /// Through two ferry-proxies in series.
    FerryPair,
}

impl PathKind {
    /// Every path, in report order.
    pub const ALL: [PathKind; 5] = [
        PathKind::Direct,
        PathKind::Envoy,
        PathKind::Ferry,
        PathKind::EnvoyPair,
        PathKind::FerryPair,
    ];

    /// Parses `direct`, `envoy`, `ferry`, `envoy-envoy` or `ferry-ferry`.
    pub fn parse(name: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|p| p.to_string() == name)
    }

    /// Whether the path is two sidecars in series (the mesh path).
    pub fn is_series(self) -> bool {
        matches!(self, PathKind::EnvoyPair | PathKind::FerryPair)
    }

    /// The Envoy path this one is compared with: Envoy for one proxy, two Envoys for two.
    pub fn baseline(self) -> PathKind {
        if self.is_series() {
            PathKind::EnvoyPair
        } else {
            PathKind::Envoy
        }
    }

    fn proxy(self) -> Option<Flavour> {
        match self {
            PathKind::Direct => None,
            PathKind::Envoy | PathKind::EnvoyPair => Some(Flavour::Envoy),
            PathKind::Ferry | PathKind::FerryPair => Some(Flavour::Ferry),
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Envoy => "envoy",
            PathKind::Ferry => "ferry",
            PathKind::EnvoyPair => "envoy-envoy",
            PathKind::FerryPair => "ferry-ferry",
        })
    }
}

/// Which proxy binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Envoy,
    Ferry,
}

/// One running proxy of a path.
#[derive(Debug)]
enum Proxy {
    Envoy(Envoy),
    Ferry {
        process: Process,
        _dir: tempfile::TempDir,
    },
}

impl Proxy {
    /// Starts one proxy of `flavour` in front of `upstream`; returns it and where it listens.
    async fn start(
        flavour: Flavour,
        upstream: SocketAddr,
    ) -> Result<(Proxy, SocketAddr), SubjectError> {
        match flavour {
            Flavour::Envoy => {
                let envoy = Envoy::try_start(&bootstrap(upstream, 0, 0)).await?;
                let target = envoy.wait_listener("bench").await;
                Ok((Proxy::Envoy(envoy), target))
            }
            Flavour::Ferry => {
                let listen = net::free_port();
                let dir = tempfile::tempdir()?;
                let path: PathBuf = dir.path().join("bootstrap.yaml");
                std::fs::write(&path, bootstrap(upstream, listen, net::free_port()))?;
                let file = path.to_string_lossy().into_owned();
                let process =
                    Process::spawn_binary("ferry-proxy", &["-c", &file, "--concurrency", "1"])?;
                let proxy = Proxy::Ferry { process, _dir: dir };
                Ok((proxy, net::loopback(listen)))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Proxy::Envoy(envoy) => envoy.pid(),
            Proxy::Ferry { process, .. } => process.pid(),
        }
    }

    fn log(&self) -> String {
        match self {
            Proxy::Envoy(envoy) => envoy.log(),
            Proxy::Ferry { process, .. } => process.log(),
        }
    }
}

/// A path could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// Envoy failed to start.
    #[error(transparent)]
    Envoy(#[from] EnvoyError),
    /// ferry-proxy failed to start.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Writing the bootstrap failed.
    #[error("writing the bootstrap: {0}")]
    Io(#[from] std::io::Error),
    /// The path never answered 200.
    #[error("{path} did not answer 200 through {addr}: {reason}{log}")]
    NotReady {
        /// The path.
        path: PathKind,
        /// Where requests were sent.
        addr: SocketAddr,
        /// The last failure.
        reason: String,
        /// The tail of the proxy's log.
        log: String,
    },
}

/// A path that is up and answering.
#[derive(Debug)]
pub struct Subject {
    kind: PathKind,
    target: SocketAddr,
    /// Client side first.
    proxies: Vec<Proxy>,
}

impl Subject {
    /// Starts the path `kind` in front of `upstream`. A series path starts its server-side
    /// proxy in front of the upstream, then its client-side proxy in front of that one, both
    /// from the same bootstrap.
    pub async fn start(kind: PathKind, upstream: SocketAddr) -> Result<Subject, SubjectError> {
        let mut proxies = Vec::new();
        let mut target = upstream;
        if let Some(flavour) = kind.proxy() {
            let hops = if kind.is_series() { 2 } else { 1 };
            for _ in 0..hops {
                let (proxy, listen) = Proxy::start(flavour, target).await?;
                proxies.insert(0, proxy);
                target = listen;
            }
        }
        let subject = Subject {
            kind,
            target,
            proxies,
        };
        subject.wait_ready().await?;
        Ok(subject)
    }

    /// The path's name.
    pub fn kind(&self) -> PathKind {
        self.kind
    }

    /// Where the load generator sends requests.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The proxy's process id (the client-side one of a series path; none for direct).
    pub fn pid(&self) -> Option<u32> {
        self.proxies.first().map(Proxy::pid)
    }

    /// Every proxy process of the path (CPU is summed over them).
    pub fn pids(&self) -> Vec<u32> {
        self.proxies.iter().map(Proxy::pid).collect()
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for proxy in &self.proxies {
            let log = proxy.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            out.push_str(&format!(
                "; log tail of {}:\n{}",
                proxy.pid(),
                tail.join("\n")
            ));
        }
        out
    }

    async fn wait_ready(&self) -> Result<(), SubjectError> {
        let answered = poll::try_poll(&format!("{} to answer", self.kind), PATIENCE, || async {
            let reply = net::get(self.target, "bench", "/small")
                .await
                .map_err(|e| e.to_string())?;
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(format!("status {}", reply.status))
            }
        })
        .await;
        answered.map_err(|e| SubjectError::NotReady {
            path: self.kind,
            addr: self.target,
            reason: e.last_error.clone().unwrap_or_else(|| e.to_string()),
            log: self.log_tail(),
        })
    }
}

/// The benchmark bootstrap pointing at `upstream`, listening on `listen`, admin on `admin`.
pub fn bootstrap(upstream: SocketAddr, listen: u16, admin: u16) -> String {
    BOOTSTRAP
        .replace("${UPSTREAM_PORT}", &upstream.port().to_string())
        .replace("${LISTEN_PORT}", &listen.to_string())
        .replace("${ADMIN_PORT}", &admin.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_has_no_placeholders_left() {
        let text = bootstrap(net::loopback(1234), 5678, 9012);
        assert!(!text.contains("${"), "{text}");
        assert!(text.contains("port_value: 1234") && text.contains("port_value: 5678"));
    }

    #[test]
    fn path_names_round_trip() {
        for kind in PathKind::ALL {
            assert_eq!(PathKind::parse(&kind.to_string()), Some(kind));
        }
        assert_eq!(PathKind::parse("linkerd"), None);
    }
}
