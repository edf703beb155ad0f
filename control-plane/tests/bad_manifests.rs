//! The table of bad manifests (`testdata/bad/*.yaml`): each file starts with
//! `# expect: #DOC KIND NAMESPACE/NAME: FIELD: REASON...` and must produce that error, naming
//! the object and the field, while every good object loaded next to it is still accepted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry_control::api::{Document, ManifestError, parse_documents};
use ferry_control::cli::validate::{ValidateArgs, load, run};
use ferry_control::validate::partition;

fn testdata(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir)
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(testdata(dir))
        .expect("testdata dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Parses files; parse errors are returned alongside.
fn read(files: &[PathBuf]) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("read");
        let name = f.file_name().and_then(|n| n.to_str()).expect("name");
        for d in parse_documents(&text, name) {
            match d {
                Ok(d) => docs.push(d),
                Err(e) => errors.push(e),
            }
        }
    }
    (docs, errors)
}

fn good_files() -> Vec<PathBuf> {
    yaml_files("good")
        .into_iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .expect("read")
                .starts_with("# parse-only")
        })
        .collect()
}

fn expectation(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{} lacks an `# expect:` first line", file.display()))
        .to_owned()
}

#[test]
fn at_least_fifteen_distinct_bad_manifests() {
    let files = yaml_files("bad");
    assert!(files.len() >= 15, "only {} bad manifests", files.len());
    let expectations: BTreeSet<_> = files.iter().map(|f| expectation(f)).collect();
    assert_eq!(
        expectations.len(),
        files.len(),
        "expectations must be distinct"
    );
}

#[test]
fn each_bad_manifest_produces_its_error_naming_object_and_field() {
    let mut failures = Vec::new();
    for file in yaml_files("bad") {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let want = format!("{name}{}", expectation(&file));
        let (docs, mut errors) = read(std::slice::from_ref(&file));
        let (_, invalid) = partition(docs);
        errors.extend(invalid);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        if !lines.iter().any(|l| l.starts_with(&want)) {
            failures.push(format!(
                "{name}: want a line starting with\n    {want}\n  got\n    {}",
                lines.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_bad_manifest_is_skipped_and_everything_else_stays_accepted() {
    let good = good_files();
    let (docs, errors) = read(&good);
    assert!(errors.is_empty(), "{errors:?}");
    let (accepted, errors) = partition(docs);
    assert!(errors.is_empty(), "{errors:?}");
    let baseline: BTreeSet<String> = accepted.iter().map(|d| d.origin.clone()).collect();

    for bad in yaml_files("bad") {
        let mut files = good.clone();
        files.push(bad.clone());
        let (docs, parse_errors) = read(&files);
        let (accepted, errors) = partition(docs);
        assert!(
            !errors.is_empty() || !parse_errors.is_empty(),
            "{}: no error",
            bad.display()
        );
        let now: BTreeSet<String> = accepted
            .iter()
            .map(|d| d.origin.clone())
            .filter(|o| baseline.contains(o))
            .collect();
        assert_eq!(
            now,
            baseline,
            "{}: good objects were dropped",
            bad.display()
        );
    }
}

#[test]
fn validate_command_prints_one_line_per_error_and_fails() {
    let args = ValidateArgs {
        files: vec![testdata("bad")],
    };
    let mut out = Vec::new();
    let summary = run(&args, &mut out).expect("run");
    assert!(!summary.ok());
    let text = String::from_utf8(out).expect("utf8");
    for line in text.lines() {
        // FILE#DOC KIND NAMESPACE/NAME: FIELD: REASON
        let (head, rest) = line.split_once(": ").unwrap_or_else(|| panic!("{line}"));
        assert_eq!(head.split(' ').count(), 3, "{line}");
        assert!(head.contains(".yaml#"), "{line}");
        assert!(rest.contains(": "), "{line}");
    }
    assert!(text.contains("circuit-breaker.yaml#0 DestinationRule default/reviews-cb: spec.trafficPolicy.circuitBreaker: unknown field"), "{text}");
    assert_eq!(summary.errors, text.lines().count());
}

#[test]
fn validate_command_accepts_the_good_manifests() {
    let (ok, errors) = load(&good_files());
    assert!(
        errors.is_empty(),
        "{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ok.len() > 40, "{}", ok.len());
}

#[test]
fn the_binary_exits_one_on_errors_and_zero_on_good_manifests() {
    let bin = env!("CARGO_BIN_EXE_ferry-control");
    let bad = std::process::Command::new(bin)
        .args(["validate", "-f"])
        .arg(testdata("bad"))
        .output()
        .expect("run ferry-control");
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(stdout.contains("undefined-subset.yaml#0 VirtualService default/reviews-v9: spec.http[0].route[0].destination.subset:"), "{stdout}");

    let mut good = std::process::Command::new(bin);
    good.arg("validate");
    for f in good_files() {
        good.arg("-f").arg(f);
    }
    let good = good.output().expect("run ferry-control");
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    assert!(good.stdout.is_empty());

    let crds = std::process::Command::new(bin)
        .arg("crds")
        .output()
        .expect("run ferry-control");
    assert_eq!(crds.status.code(), Some(0));
    let checked_in = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds.yaml"),
    )
    .expect("crds.yaml");
    assert_eq!(String::from_utf8_lossy(&crds.stdout), checked_in);
}
