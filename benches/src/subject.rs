//! The paths a benchmark compares: straight to the upstream, through Envoy, through ferry-proxy.
//!
//! Both proxies run the same bootstrap file (`benches/bootstrap.yaml`) with one worker each:
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
}

impl PathKind {
    /// Every path, in report order.
    pub const ALL: [PathKind; 3] = [PathKind::Direct, PathKind::Envoy, PathKind::Ferry];

    /// Parses `direct`, `envoy` or `ferry`.
    pub fn parse(name: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|p| p.to_string() == name)
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Envoy => "envoy",
            PathKind::Ferry => "ferry",
        })
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
    envoy: Option<Envoy>,
    ferry: Option<(Process, tempfile::TempDir)>,
}

impl Subject {
    /// Starts the path `kind` in front of `upstream`.
    pub async fn start(kind: PathKind, upstream: SocketAddr) -> Result<Subject, SubjectError> {
        let subject = match kind {
            PathKind::Direct => Subject {
                kind,
                target: upstream,
                envoy: None,
                ferry: None,
            },
            PathKind::Envoy => {
                let envoy = Envoy::try_start(&bootstrap(upstream, 0, 0)).await?;
                let target = envoy.wait_listener("bench").await;
                Subject {
                    kind,
                    target,
                    envoy: Some(envoy),
                    ferry: None,
                }
            }
            PathKind::Ferry => {
                let listen = net::free_port();
                let dir = tempfile::tempdir()?;
                let path: PathBuf = dir.path().join("bootstrap.yaml");
                std::fs::write(&path, bootstrap(upstream, listen, net::free_port()))?;
                let file = path.to_string_lossy().into_owned();
                let process =
                    Process::spawn_binary("ferry-proxy", &["-c", &file, "--concurrency", "1"])?;
                let target = net::loopback(listen);
                Subject {
                    kind,
                    target,
                    envoy: None,
                    ferry: Some((process, dir)),
                }
            }
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

    /// The proxy's process id (none for the direct path).
    pub fn pid(&self) -> Option<u32> {
        match (&self.envoy, &self.ferry) {
            (Some(envoy), _) => Some(envoy.pid()),
            (_, Some((process, _))) => Some(process.pid()),
            _ => None,
        }
    }

    fn log_tail(&self) -> String {
        let log = match (&self.envoy, &self.ferry) {
            (Some(envoy), _) => envoy.log(),
            (_, Some((process, _))) => process.log(),
            _ => return String::new(),
        };
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("; log tail:\n{}", tail.join("\n"))
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
