//! Child processes in tests: the built `ferry-*` binaries and peers such as Envoy.
//!
//! A [`Process`] owns its child: output goes to a log file in its own temporary directory, the
//! child is killed when the handle drops (so a failing test never leaks a proxy holding ports),
//! and if the test is failing at that moment the log is printed, because a proxy's log is usually
//! the only explanation of why the test failed.
//!
//! The workspace's binaries are found next to the test executable (`target/<profile>/`), where
//! `cargo build --bins` (run by `scripts/test`) puts them. Tests never build them: a missing binary
//! is a clear error, not a hidden nested cargo invocation. Prefer driving the libraries in-process;
//! use binaries only for what needs a real process (flags, signals, exit codes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use tempfile::TempDir;

/// Starting or controlling a child process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A workspace binary is not next to the test executable.
    #[error("{name} not found at {}: run `cargo build --bins` first (scripts/test does)", .path.display())]
    MissingBinary {
        /// The binary's name.
        name: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// The OS refused to create the log directory or spawn the child.
    #[error("spawn {name}: {source}")]
    Spawn {
        /// The process's label.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("signal {signal} to {name}: {reason}")]
    Signal {
        /// The process's label.
        name: String,
        /// The signal's name, e.g. `TERM`.
        signal: &'static str,
        /// Why.
        reason: String,
    },
}

/// A running child process with its output captured to a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log_path: PathBuf,
    dir: TempDir,
}

impl Process {
    /// Spawns `command` labelled `name`, with stdout and stderr appended to one log file.
    pub fn spawn(name: &str, mut command: Command) -> Result<Process, ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            name: name.to_owned(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-{name}-"))
            .tempdir()
            .map_err(spawn_error)?;
        let log_path = dir.path().join("log");
        let log = File::create(&log_path).map_err(spawn_error)?;
        let log_err = log.try_clone().map_err(spawn_error)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(spawn_error)?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log_path,
            dir,
        })
    }

    /// Spawns the workspace binary `binary` (e.g. `ferry-proxy`) with `args`.
    pub fn spawn_binary(binary: &str, args: &[&str]) -> Result<Process, ProcessError> {
        let mut command = Command::new(workspace_binary(binary)?);
        command.args(args);
        Process::spawn(binary, command)
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A private scratch directory living as long as the process (config files, address files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, the signal Kubernetes sends a container on shutdown.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        let signal_error = |reason: String| ProcessError::Signal {
            name: self.name.clone(),
            signal: "TERM",
            reason,
        };
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status()
            .map_err(|e| signal_error(e.to_string()))?;
        if status.success() {
            Ok(())
        } else {
            Err(signal_error(status.to_string()))
        }
    }

    /// Waits for the process to exit (for use after [`Process::terminate`]).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- log of {} (pid {}) -----", self.name, self.child.id());
            eprintln!("{}", self.log());
            eprintln!("----- end of log of {} -----", self.name);
        }
    }
}

/// The path of a workspace binary built next to the running test executable.
///
/// A test executable lives in `target/<profile>/deps/`; `cargo build --bins` puts binaries in
/// `target/<profile>/`.
pub fn workspace_binary(name: &str) -> Result<PathBuf, ProcessError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .unwrap_or_else(|| Path::new("."));
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProcessError::MissingBinary {
            name: name.to_owned(),
            path,
        })
    }
}

/// Whether this run is CI's (env `CI` set to anything but empty, `0` or `false`), where a test
/// whose peer is missing must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_captured_and_the_child_is_killed_on_drop() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; exec sleep 600"]);
        let process = Process::spawn("sleeper", command).unwrap();
        let log = crate::poll::poll_until("the echo", crate::poll::PATIENCE, || async {
            Some(process.log()).filter(|l| l.contains("started"))
        })
        .await;
        assert_eq!(log.trim(), "started");
        let pid = process.pid();
        drop(process);
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        // Drop waits for the child, so it is reaped by now: no zombie left behind.
        assert!(!proc_dir.exists(), "child {pid} still exists after drop");
    }

    #[tokio::test]
    async fn terminate_sends_sigterm() {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 1; done",
        ]);
        let mut process = Process::spawn("trapper", command).unwrap();
        crate::poll::poll_until("the trap", crate::poll::PATIENCE, || async {
            process.log().contains("ready").then_some(())
        })
        .await;
        process.terminate().unwrap();
        let status = process.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(process.log().contains("got TERM"));
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = workspace_binary("no-such-binary").unwrap_err();
        assert!(err.to_string().contains("cargo build --bins"), "{err}");
    }
}
