//! An index of Envoy's descriptor set, so a document's descriptor pool holds only the files the
//! document needs.
//!
//! Decoding the whole set into a `prost_reflect::DescriptorPool` builds every Envoy message (514
//! files), and a sidecar needs one only to read its bootstrap, which touches a small part of
//! Envoy's API (a bootstrap's files and their imports are about 75). The
//! index reads no more of each `FileDescriptorProto` than its name, dependencies and message names
//! (prost skips every other field unread) and keeps the file's bytes as a slice of the embedded
//! set, not a copy. For a document, the caller names the messages it uses (the root message and
//! every `@type` inside it); the index takes the closure of their files' dependencies and decodes
//! just those files into a pool of their own.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use prost::Message;
use prost_reflect::DescriptorPool;

/// Why the index or a pool built from it could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The bytes are not a serialized `FileDescriptorSet`.
    #[error("cannot decode the descriptor set: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A file imports one the set does not contain.
    #[error("descriptor file {file} imports {dependency}, which the set lacks")]
    MissingDependency {
        /// The importing file.
        file: String,
        /// The import the set lacks.
        dependency: String,
    },
    /// prost-reflect refused the selected files.
    #[error("cannot build a descriptor pool: {0}")]
    Pool(#[from] prost_reflect::DescriptorError),
}

/// `google.protobuf.FileDescriptorSet` with each file left as bytes (borrowed from the input).
#[derive(Clone, PartialEq, Message)]
struct RawSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

/// The fields of `google.protobuf.FileDescriptorProto` the index needs.
#[derive(Clone, PartialEq, Message)]
struct FileSummary {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    package: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<MessageSummary>,
}

/// The fields of `google.protobuf.DescriptorProto` the index needs.
#[derive(Clone, PartialEq, Message)]
struct MessageSummary {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "3")]
    nested_type: Vec<MessageSummary>,
}

/// One file of the set: its serialized `FileDescriptorProto` and the files it imports.
#[derive(Debug)]
struct IndexedFile {
    bytes: Bytes,
    dependencies: Vec<usize>,
}

/// Which file defines each message, and which files each file imports.
#[derive(Debug)]
pub struct DescriptorIndex {
    files: Vec<IndexedFile>,
    messages: HashMap<String, usize>,
}

impl DescriptorIndex {
    /// Indexes a serialized `FileDescriptorSet`. With a `Bytes` over static data (the embedded
    /// set) the files' bytes are slices of it, so the index itself is small (message names).
    pub fn new(set: Bytes) -> Result<Self, IndexError> {
        let raw = RawSet::decode(set)?;
        let summaries = raw
            .file
            .iter()
            .map(|bytes| FileSummary::decode(bytes.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<&str, usize> = summaries
            .iter()
            .enumerate()
            .map(|(i, file)| (file.name.as_str(), i))
            .collect();
        let mut messages = HashMap::new();
        let mut files = Vec::with_capacity(summaries.len());
        for (i, (summary, bytes)) in summaries.iter().zip(raw.file).enumerate() {
            let dependencies = summary
                .dependency
                .iter()
                .map(|dependency| {
                    by_name.get(dependency.as_str()).copied().ok_or_else(|| {
                        IndexError::MissingDependency {
                            file: summary.name.clone(),
                            dependency: dependency.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut pending: Vec<(String, &MessageSummary)> = summary
                .message_type
                .iter()
                .map(|message| (qualify(&summary.package, &message.name), message))
                .collect();
            while let Some((full_name, message)) = pending.pop() {
                pending.extend(
                    message
                        .nested_type
                        .iter()
                        .map(|nested| (qualify(&full_name, &nested.name), nested)),
                );
                messages.insert(full_name, i);
            }
            files.push(IndexedFile {
                bytes,
                dependencies,
            });
        }
        Ok(Self { files, messages })
    }

    /// How many files the set holds.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Whether the set defines this message (full name, no leading dot).
    pub fn contains(&self, message: &str) -> bool {
        self.messages.contains_key(message)
    }

    /// The files defining these messages plus everything they import, transitively, as indices
    /// in the set's order. Names the set does not define are left out: the pool then lacks
    /// them, and whoever looks one up reports it by name.
    fn closure<'a>(&self, messages: impl IntoIterator<Item = &'a str>) -> BTreeSet<usize> {
        let mut pending: Vec<usize> = messages
            .into_iter()
            .filter_map(|name| self.messages.get(name).copied())
            .collect();
        let mut selected = BTreeSet::new();
        while let Some(file) = pending.pop() {
            if selected.insert(file) {
                pending.extend(&self.files[file].dependencies);
            }
        }
        selected
    }

    /// A pool of the files these messages need: their own, and those they import, transitively.
    pub fn pool_for<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a str>,
    ) -> Result<DescriptorPool, IndexError> {
        let selected = self.closure(messages);
        let mut set = Vec::with_capacity(
            selected
                .iter()
                .map(|&file| self.files[file].bytes.len() + 6)
                .sum(),
        );
        for &file in &selected {
            prost::encoding::bytes::encode(1, &self.files[file].bytes, &mut set);
        }
        Ok(DescriptorPool::decode(set.as_slice())?)
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> DescriptorIndex {
        DescriptorIndex::new(Bytes::from_static(crate::json::descriptor_set())).unwrap()
    }

    #[test]
    fn files_are_slices_of_the_set_not_copies() {
        let set = crate::json::descriptor_set().as_ptr_range();
        let index = index();
        assert!(index.file_count() > 500, "{}", index.file_count());
        for file in &index.files {
            let bytes = file.bytes.as_ptr_range();
            assert!(set.start <= bytes.start && bytes.end <= set.end);
        }
    }

    #[test]
    fn nested_messages_are_indexed_under_their_parent() {
        let index = index();
        assert!(index.contains("envoy.config.bootstrap.v3.Bootstrap"));
        assert!(index.contains("envoy.config.bootstrap.v3.Bootstrap.StaticResources"));
        assert!(index.contains("google.protobuf.Any"));
        assert!(!index.contains("envoy.config.bootstrap.v3.Nope"));
    }

    #[test]
    fn a_pool_holds_the_closure_of_the_named_messages_only() {
        let index = index();
        let pool = index.pool_for(["google.protobuf.Duration"]).unwrap();
        assert_eq!(pool.files().len(), 1);
        let pool = index
            .pool_for(["envoy.extensions.filters.http.router.v3.Router"])
            .unwrap();
        assert!(
            pool.get_message_by_name("envoy.extensions.filters.http.router.v3.Router")
                .is_some()
        );
        // Router imports the access log config, which imports core types, but not a listener.
        assert!(
            pool.get_message_by_name("envoy.config.listener.v3.Listener")
                .is_none()
        );
        assert!(pool.files().len() < index.file_count() / 4);
    }

    #[test]
    fn unknown_names_add_no_files() {
        let pool = index().pool_for(["no.such.Message"]).unwrap();
        assert_eq!(pool.files().len(), 0);
    }

    #[test]
    fn a_set_with_a_missing_import_is_refused_with_both_names() {
        let file = FileSummary {
            name: "a.proto".into(),
            dependency: vec!["b.proto".into()],
            ..Default::default()
        };
        let set = RawSet {
            file: vec![file.encode_to_vec().into()],
        };
        let err = DescriptorIndex::new(set.encode_to_vec().into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "descriptor file a.proto imports b.proto, which the set lacks"
        );
    }
}
