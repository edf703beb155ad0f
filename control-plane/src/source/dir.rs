//! The directory source (`ferry-control serve --config-dir DIR`): every `*.yaml`, `*.yml` and
//! `*.json` below DIR, multi-document, the same objects users `kubectl apply`. The directory is
//! watched (inotify and friends through `notify`); changes are debounced and the files re-read,
//! and a new model is published when the objects changed. Hidden entries (editor swap files,
//! Kubernetes ConfigMap `..data` links) are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, sleep_until};
use tracing::{debug, warn};

use super::manifest::{Document, parse_documents};
use super::publish::{Publisher, SourceHandle};
use super::store::{Event, Store};
use crate::model::{self, Model, ModelError};

/// Quiet period after the last file event before the directory is re-read.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a burst of events can hold back a re-read.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why the directory source could not start.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The path is missing or not a directory.
    #[error("config dir {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("config dir {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The file watcher could not be set up.
    #[error("cannot watch config dir: {0}")]
    Watch(#[from] notify::Error),
    /// The blocking read task failed.
    #[error("reading the config dir failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Reads every manifest below `dir` once: the objects, and the documents that failed to parse.
pub fn read_dir(dir: &Path) -> Result<(Store, Vec<ModelError>), DirError> {
    let mut files = Files::new(dir.to_owned())?;
    files.refresh()?;
    Ok(files.store())
}

/// Reads `dir` once and builds the model (errors from parsing and building together, sorted).
pub fn model_from_dir(dir: &Path) -> Result<(Model, Vec<ModelError>), DirError> {
    let (store, parse_errors) = read_dir(dir)?;
    Ok(build_with(&store, parse_errors))
}

/// Builds the model from manifest text (one or more documents), as if it were one file named
/// `origin` in a config dir. For tests and golden cases.
pub fn model_from_yaml(text: &str, origin: &str) -> (Model, Vec<ModelError>) {
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from(origin), parsed(text, origin));
    let (store, parse_errors) = store_of(&files);
    build_with(&store, parse_errors)
}

fn build_with(store: &Store, mut errors: Vec<ModelError>) -> (Model, Vec<ModelError>) {
    let (model, build_errors) = model::build(store);
    errors.extend(build_errors);
    errors.sort();
    (model, errors)
}

/// Starts the directory source: reads `dir` completely, then watches it. Returns once the
/// initial model is built, so nothing partial is ever published. The watch task ends when every
/// receiver of the handle's `models` is dropped.
pub async fn watch_dir(dir: impl Into<PathBuf>) -> Result<SourceHandle, DirError> {
    let mut files = Files::new(dir.into())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Watch before the first read, so a change made during the read is not missed.
    let mut watcher = notify::recommended_watcher(move |event| {
        // The receiver is gone only when the source stopped.
        let _ = tx.send(event);
    })?;
    watcher.watch(&files.root, RecursiveMode::Recursive)?;
    files = tokio::task::spawn_blocking(move || files.refresh().map(|_| files)).await??;
    let (store, errors) = files.store();
    let (publisher, handle) = Publisher::start(&store, errors, "dir");

    let root = files.root.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = publisher.closed() => break,
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    if !relevant(&event) {
                        continue;
                    }
                    debounce(&mut rx).await;
                    let result = tokio::task::spawn_blocking(move || {
                        let changed = files.refresh();
                        (files, changed)
                    })
                    .await;
                    let Ok((returned, changed)) = result else { break };
                    files = returned;
                    match changed {
                        Ok(true) => {
                            let (store, errors) = files.store();
                            publisher.publish(&store, errors);
                        }
                        Ok(false) => debug!("config dir event without content change"),
                        Err(err) => warn!(error = %err, "config dir unreadable; keeping the current model"),
                    }
                }
            }
        }
        debug!(dir = %root.display(), "config dir watch stopped");
    });
    Ok(handle)
}

fn relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        // Our own reads open the files; only changes matter.
        Ok(event) => !matches!(event.kind, EventKind::Access(_)),
        Err(err) => {
            warn!(error = %err, "config dir watch error; re-reading");
            true
        }
    }
}

/// Waits until no relevant event came for [`DEBOUNCE`], at most [`MAX_DELAY`].
async fn debounce(rx: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>) {
    let max = Instant::now() + MAX_DELAY;
    let mut deadline = (Instant::now() + DEBOUNCE).min(max);
    loop {
        tokio::select! {
            _ = sleep_until(deadline) => return,
            event = rx.recv() => match event {
                Some(event) if relevant(&event) => deadline = (Instant::now() + DEBOUNCE).min(max),
                Some(_) => {}
                None => return,
            },
        }
    }
}

/// The manifests of a config dir: each file's text and its parsed documents, by path relative
/// to the root.
struct Files {
    root: PathBuf,
    files: BTreeMap<PathBuf, ParsedFile>,
}

struct ParsedFile {
    /// The file's text, or why it could not be read.
    content: Result<String, String>,
    documents: Vec<Result<Document, ModelError>>,
}

fn parsed(text: &str, origin: &str) -> ParsedFile {
    ParsedFile {
        content: Ok(text.to_owned()),
        documents: parse_documents(text, origin),
    }
}

impl Files {
    fn new(root: PathBuf) -> Result<Files, DirError> {
        let meta = std::fs::metadata(&root).map_err(|source| DirError::Io {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DirError::NotADirectory(root));
        }
        Ok(Files {
            root,
            files: BTreeMap::new(),
        })
    }

    /// Re-reads every manifest, re-parsing only files whose text changed. Returns whether any
    /// file appeared, vanished or changed.
    fn refresh(&mut self) -> Result<bool, DirError> {
        let mut paths = Vec::new();
        walk(&self.root, &self.root, &mut paths).map_err(|source| DirError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut changed = false;
        let mut next = BTreeMap::new();
        for rel in paths {
            let origin = rel.display().to_string();
            let content = match std::fs::read(self.root.join(&rel)) {
                Ok(bytes) => String::from_utf8(bytes).map_err(|_| "file is not UTF-8".to_owned()),
                // Vanished between listing and reading: the next event will tell.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => Err(format!("cannot read file: {err}")),
            };
            let file = match self.files.remove(&rel) {
                Some(old) if old.content == content => old,
                _ => {
                    changed = true;
                    match content {
                        Ok(text) => parsed(&text, &origin),
                        Err(reason) => ParsedFile {
                            documents: vec![Err(ModelError::document(&origin, reason.clone()))],
                            content: Err(reason),
                        },
                    }
                }
            };
            next.insert(rel, file);
        }
        changed |= !self.files.is_empty();
        self.files = next;
        Ok(changed)
    }

    fn store(&self) -> (Store, Vec<ModelError>) {
        store_of(&self.files)
    }
}

/// The store of every parsed object, with the documents that failed. An object defined twice is
/// kept where it appears first (file path order) and the later copy reported.
fn store_of(files: &BTreeMap<PathBuf, ParsedFile>) -> (Store, Vec<ModelError>) {
    let mut store = Store::new();
    let mut errors = Vec::new();
    for file in files.values() {
        for document in &file.documents {
            match document {
                Ok(Document::Object(object)) => {
                    if let Some(first) = store.get(&object.key) {
                        let name = format!("{}/{}", object.key.namespace, object.key.name);
                        errors.push(
                            ModelError::document(
                                &object.origin,
                                format!("duplicate object, already defined at {}", first.origin),
                            )
                            .object(object.key.kind.as_str(), name),
                        );
                        continue;
                    }
                    store.apply(Event::Apply(object.clone()));
                }
                Ok(Document::Ignored(message)) => debug!(%message, "document ignored"),
                Err(err) => errors.push(err.clone()),
            }
        }
    }
    (store, errors)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Follows symlinks: ConfigMap mounts link every file.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if let (true, Ok(rel)) = (is_manifest(&path), path.strip_prefix(root)) {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> notify::Result<notify::Event> {
        Ok(notify::Event::new(EventKind::Modify(
            notify::event::ModifyKind::Any,
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_but_not_forever() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Quiet after two events 50 ms apart: done 100 ms after the last one.
        let start = Instant::now();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = sender.send(event());
        });
        debounce(&mut rx).await;
        assert_eq!(start.elapsed(), Duration::from_millis(150));

        // A steady stream of events: done after the maximum delay.
        let start = Instant::now();
        let sender = tx.clone();
        let stream = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if sender.send(event()).is_err() {
                    return;
                }
            }
        });
        debounce(&mut rx).await;
        assert_eq!(start.elapsed(), MAX_DELAY);
        stream.abort();

        // Our own reads (access events) do not extend the wait.
        let start = Instant::now();
        tx.send(Ok(notify::Event::new(EventKind::Access(
            notify::event::AccessKind::Any,
        ))))
        .expect("send");
        debounce(&mut rx).await;
        assert_eq!(start.elapsed(), DEBOUNCE);
    }

    #[test]
    fn hidden_entries_and_other_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("..data")).expect("mkdir");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        for file in [
            "a.yaml",
            "b.yml",
            "c.json",
            "..data/x.yaml",
            ".a.yaml.swp",
            "notes.txt",
            "sub/d.yaml",
        ] {
            std::fs::write(root.join(file), "").expect("write");
        }
        let mut files = Vec::new();
        walk(root, root, &mut files).expect("walk");
        files.sort();
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.json", "sub/d.yaml"]);
    }
}
