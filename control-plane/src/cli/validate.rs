//! `ferry-control validate -f FILE... [-f DIR]`: checks manifests offline, before
//! `kubectl apply`, with the same parser and rules the control plane applies when serving.
//! Prints one line per error, `FILE#DOC KIND NAMESPACE/NAME: FIELD: REASON`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::api::{Document, Manifest, ManifestError, parse_documents};
use crate::validate::partition;

/// Flags of `ferry-control validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Manifest files, or directories whose *.yaml, *.yml and *.json files are read.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// What a validation run found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Documents read (including ignored kinds and bad ones).
    pub documents: usize,
    /// Documents of kinds ferry-control does not read.
    pub ignored: usize,
    /// Errors found.
    pub errors: usize,
}

impl Summary {
    /// True when no error was found.
    pub fn ok(&self) -> bool {
        self.errors == 0
    }
}

/// The manifest files named by `paths`: files as given, directories' `*.yaml`, `*.yml` and
/// `*.json` files (not recursive, like `kubectl apply -f DIR`), sorted by name.
pub fn manifest_files(paths: &[PathBuf]) -> Vec<Result<PathBuf, ManifestError>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(Ok(path.clone()));
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_manifest(p))
                    .collect();
                files.sort();
                out.extend(files.into_iter().map(Ok));
            }
            Err(e) => out.push(Err(read_error(path, &e))),
        }
    }
    out
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read_error(path: &Path, e: &io::Error) -> ManifestError {
    ManifestError {
        origin: path.display().to_string(),
        kind: "-".into(),
        name: "-".into(),
        field: ".".into(),
        reason: format!("cannot read: {e}"),
    }
}

/// Reads, parses and validates the manifests under `paths`: the documents that pass and every
/// error, in file and document order.
pub fn load(paths: &[PathBuf]) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    // Each error with the position of its document in reading order, to report in file order.
    let mut errors: Vec<(usize, ManifestError)> = Vec::new();
    let mut order: BTreeMap<String, usize> = BTreeMap::new();
    for file in manifest_files(paths) {
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                errors.push((order.len(), e));
                continue;
            }
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for doc in parse_documents(&text, &file.display().to_string()) {
                    match doc {
                        Ok(d) => {
                            order.insert(d.origin.clone(), order.len());
                            docs.push(d);
                        }
                        Err(e) => {
                            let seq = order.len();
                            order.insert(e.origin.clone(), seq);
                            errors.push((seq, e));
                        }
                    }
                }
            }
            Err(e) => errors.push((order.len(), read_error(&file, &e))),
        }
    }
    let (ok, invalid) = partition(docs);
    errors.extend(
        invalid
            .into_iter()
            .map(|e| (order.get(&e.origin).copied().unwrap_or(usize::MAX), e)),
    );
    errors.sort_by_key(|(seq, _)| *seq);
    (ok, errors.into_iter().map(|(_, e)| e).collect())
}

/// Runs `ferry-control validate`: prints each error to `out` and returns the summary; the
/// caller exits 1 unless [`Summary::ok`].
pub fn run(args: &ValidateArgs, out: &mut dyn Write) -> io::Result<Summary> {
    let (ok, errors) = load(&args.files);
    for e in &errors {
        writeln!(out, "{e}")?;
    }
    let ignored = ok
        .iter()
        .filter(|d| matches!(d.manifest, Manifest::Ignored(_)))
        .count();
    // Documents with errors may have several; count each object once.
    let mut bad: Vec<&str> = errors.iter().map(|e| e.origin.as_str()).collect();
    bad.dedup();
    Ok(Summary {
        documents: ok.len() + bad.len(),
        ignored,
        errors: errors.len(),
    })
}
