//! HTTP access logs: the HCM's `access_log` with Envoy's file logger
//! (`envoy.access_loggers.file`, `FileAccessLog`): a text or JSON line per request, in Envoy's
//! format language ([`format`]), written when the response ends. Lines go to a bounded queue per
//! file and a writer task appends them, so a slow disk never blocks a request (a full queue
//! drops the line and counts it in `access_logs.file.dropped`).

pub mod details;
pub mod format;
mod logged_body;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use xds_proto::envoy::config::accesslog::v3::{AccessLog as AccessLogProto, access_log};
use xds_proto::envoy::config::core::v3::{data_source, substitution_format_string};
use xds_proto::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};

pub use details::{Details, response_code_details};
pub use format::{Entry, Template};
pub use logged_body::{CountedBody, Pending};

use crate::stats::{Counter, Store};

const FILE_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
/// Lines that may wait for a file's writer.
pub const QUEUE_CAPACITY: usize = 4096;

/// An access log Ferry cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidAccessLog {
    /// The field inside the `access_log` entry.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> InvalidAccessLog {
    InvalidAccessLog {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// How lines look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    /// A text template (its own line ending, as in Envoy).
    Text(Template),
    /// A JSON object per line, one template per key.
    Json(Vec<(String, Template)>),
}

/// A validated file access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// The file (`/dev/stdout` works).
    pub path: PathBuf,
    /// The format.
    pub format: LineFormat,
}

impl AccessLog {
    /// The line for `entry`.
    pub fn render(&self, entry: &Entry<'_>) -> String {
        match &self.format {
            LineFormat::Text(t) => t.render(entry),
            LineFormat::Json(fields) => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.render_json(entry)))
                    .collect();
                let mut line = serde_json::Value::Object(object).to_string();
                line.push('\n');
                line
            }
        }
    }
}

fn json_fields(
    s: &xds_proto::google::protobuf::Struct,
    field: &str,
) -> Result<LineFormat, InvalidAccessLog> {
    use xds_proto::google::protobuf::value::Kind;
    let mut fields = Vec::new();
    for (key, value) in &s.fields {
        let Some(Kind::StringValue(text)) = &value.kind else {
            return Err(invalid(
                &format!("{field}.{key}"),
                "only string values are implemented by ferry-proxy",
            ));
        };
        let t = Template::parse(text).map_err(|e| invalid(&format!("{field}.{key}"), e.0))?;
        fields.push((key.clone(), t));
    }
    Ok(LineFormat::Json(fields))
}

impl TryFrom<&AccessLogProto> for AccessLog {
    type Error = InvalidAccessLog;

    fn try_from(a: &AccessLogProto) -> Result<Self, InvalidAccessLog> {
        if a.filter.is_some() {
            return Err(invalid("filter", "not implemented by ferry-proxy"));
        }
        let Some(access_log::ConfigType::TypedConfig(any)) = &a.config_type else {
            return Err(invalid("typed_config", "required"));
        };
        if any.type_url != FILE_TYPE {
            return Err(invalid(
                "typed_config",
                format!(
                    "access logger {} ({}) is not implemented by ferry-proxy; only envoy.access_loggers.file is",
                    a.name, any.type_url
                ),
            ));
        }
        let file: FileAccessLog =
            xds_proto::any::unpack(any).map_err(|e| invalid("typed_config", e.to_string()))?;
        if file.path.is_empty() {
            return Err(invalid("typed_config.path", "required"));
        }
        #[allow(deprecated)]
        let format = match &file.access_log_format {
            None => LineFormat::Text(
                Template::parse(format::DEFAULT_FORMAT)
                    .map_err(|e| invalid("typed_config", e.0))?,
            ),
            Some(file_access_log::AccessLogFormat::Format(text)) => LineFormat::Text(
                Template::parse(text).map_err(|e| invalid("typed_config.format", e.0))?,
            ),
            Some(file_access_log::AccessLogFormat::JsonFormat(s)) => {
                json_fields(s, "typed_config.json_format")?
            }
            Some(file_access_log::AccessLogFormat::LogFormat(f)) => {
                let field = "typed_config.log_format";
                if f.omit_empty_values
                    || !f.content_type.is_empty()
                    || !f.formatters.is_empty()
                    || f.json_format_options.is_some()
                {
                    return Err(invalid(
                        field,
                        "omit_empty_values, content_type, formatters and json_format_options are not implemented by ferry-proxy",
                    ));
                }
                use substitution_format_string::Format as F;
                match &f.format {
                    Some(F::TextFormat(text)) => {
                        LineFormat::Text(Template::parse(text).map_err(|e| invalid(field, e.0))?)
                    }
                    Some(F::TextFormatSource(source)) => match &source.specifier {
                        Some(data_source::Specifier::InlineString(text)) => LineFormat::Text(
                            Template::parse(text).map_err(|e| invalid(field, e.0))?,
                        ),
                        _ => {
                            return Err(invalid(
                                &format!("{field}.text_format_source"),
                                "only inline_string is implemented by ferry-proxy",
                            ));
                        }
                    },
                    Some(F::JsonFormat(s)) => json_fields(s, &format!("{field}.json_format"))?,
                    None => LineFormat::Text(
                        Template::parse(format::DEFAULT_FORMAT).map_err(|e| invalid(field, e.0))?,
                    ),
                }
            }
            Some(_) => {
                return Err(invalid(
                    "typed_config.typed_json_format",
                    "not implemented by ferry-proxy; use log_format.json_format",
                ));
            }
        };
        Ok(Self {
            path: PathBuf::from(file.path),
            format,
        })
    }
}

/// The writers of every access log file, one task per path, started on first use.
#[derive(Debug)]
pub struct Writers {
    files: Mutex<HashMap<PathBuf, mpsc::Sender<String>>>,
    written: Arc<Counter>,
    failed: Arc<Counter>,
    dropped: Arc<Counter>,
}

impl Writers {
    /// Writers counting in `store` (`access_logs.file.write_completed`, `write_failed`,
    /// `dropped`).
    pub fn new(store: &Store) -> Self {
        Self {
            files: Mutex::new(HashMap::new()),
            written: store.counter("access_logs.file.write_completed"),
            failed: store.counter("access_logs.file.write_failed"),
            dropped: store.counter("access_logs.file.dropped"),
        }
    }

    /// Queues `line` for `path`.
    pub fn write(&self, path: &std::path::Path, line: String) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let tx = files
            .entry(path.to_path_buf())
            .or_insert_with(|| self.spawn(path.to_path_buf()));
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.inc();
        }
    }

    fn spawn(&self, path: PathBuf) -> mpsc::Sender<String> {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE_CAPACITY);
        let (written, failed) = (self.written.clone(), self.failed.clone());
        tokio::spawn(async move {
            let mut file = None;
            while let Some(line) = rx.recv().await {
                if file.is_none() {
                    file = open(&path)
                        .await
                        .map_err(|error| {
                            tracing::warn!(path = %path.display(), %error, "access log: cannot open");
                        })
                        .ok();
                }
                let Some(f) = file.as_mut() else {
                    failed.inc();
                    continue;
                };
                // Flushed per line: the file's writer holds bytes until flushed.
                let wrote = async {
                    f.write_all(line.as_bytes()).await?;
                    f.flush().await
                };
                match wrote.await {
                    Ok(()) => written.inc(),
                    Err(error) => {
                        tracing::debug!(%error, "access log: write failed");
                        failed.inc();
                        file = None;
                    }
                }
            }
        });
        tx
    }
}

/// Where a log's lines go. As in Envoy, `/dev/stdout` and `/dev/stderr` are the process's own
/// streams (a duplicate of its descriptor), not files to open: reopening them fails for a proxy
/// that dropped privileges (Istio's uid 1337) when its output belongs to root.
async fn open(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let stream = match path.to_str() {
        Some("/dev/stdout") => std::io::stdout().as_fd().try_clone_to_owned()?,
        Some("/dev/stderr") => std::io::stderr().as_fd().try_clone_to_owned()?,
        _ => {
            return tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await;
        }
    };
    Ok(tokio::fs::File::from_std(std::fs::File::from(stream)))
}

/// What the HCM records when a logged request starts.
#[derive(Debug)]
pub struct Start {
    /// Wall-clock start.
    pub start: SystemTime,
    /// Monotonic start.
    pub started: tokio::time::Instant,
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Authority.
    pub authority: String,
    /// HTTP version.
    pub version: http::Version,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Request body bytes, counted by the router as the body streams.
    pub received: Arc<AtomicU64>,
}

#[cfg(test)]
mod tests;
