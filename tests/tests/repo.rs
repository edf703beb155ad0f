//! The repository's promises to a newcomer, checked so they cannot rot: the README's two commands
//! exist, CI runs the README's test command, and the local mesh's manifests are valid and agree
//! with the addresses `scripts/local-mesh` starts its processes on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .into()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn assert_executable(path: &str) {
    let mode = std::fs::metadata(repo().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{path} is not executable");
}

#[test]
fn the_readme_gives_exactly_two_commands_and_they_exist() {
    let readme = read("README.md");
    let block = readme
        .split("```sh")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a sh code block");
    let commands: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands, ["scripts/local-mesh", "scripts/test"]);
    for command in commands {
        assert_executable(command);
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    assert_executable(".ci/run");
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec scripts/test"),
        ".ci/run:\n{ci}"
    );
    assert_executable("benches/run");
    assert!(
        read("scripts/test").contains("benches/run --smoke"),
        "the bench smoke run must stay in the test command"
    );
}

#[test]
fn the_local_mesh_manifests_are_valid() {
    let dir = repo().join("samples/local-mesh");
    let (docs, errors) = ferry_control::cli::validate::load(&[dir]);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "samples/local-mesh:\n{}",
        errors.join("\n")
    );
    assert!(docs.len() >= 6, "{} documents", docs.len());
}

#[test]
fn the_local_mesh_script_starts_pods_on_their_pod_ips() {
    let script = read("scripts/local-mesh");
    let manifests =
        read("samples/local-mesh/reviews.yaml") + &read("samples/local-mesh/client.yaml");
    for (variable, ip) in [
        ("CLIENT_IP", "127.0.0.10"),
        ("REVIEWS_V1_IP", "127.0.0.2"),
        ("REVIEWS_V2_IP", "127.0.0.3"),
    ] {
        assert!(
            script.contains(&format!("{variable}={ip}\n")),
            "scripts/local-mesh: {variable} != {ip}"
        );
        assert!(
            manifests.contains(&format!("podIP: {ip}\n")),
            "no pod has podIP {ip}"
        );
    }
}
