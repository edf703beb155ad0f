//! The HCM `access_log` istiod adds to every sidecar HTTP connection manager when
//! `meshConfig.accessLogFile` is set: Envoy's file logger with Istio's default text format (or
//! `accessLogFormat`), or, with `accessLogEncoding: JSON`, Istio's default JSON fields (or
//! `accessLogFormat` as a JSON object of operators). Applied as a pass over the finished
//! listeners, like tracing.

use xds_proto::envoy::config::accesslog::v3::{AccessLog, access_log};
use xds_proto::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};

use super::TranslateError;
use super::envoy::any;
use super::filter_chain::for_each_hcm;
use crate::mesh_config::{AccessLogSettings, MeshConfig};

/// Istio's default text format (`EnvoyTextLogFormat`).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON_FIELDS: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// The file logger for `settings`.
pub fn file_access_log(settings: &AccessLogSettings) -> Result<AccessLog, TranslateError> {
    let format = if settings.json {
        let value = match &settings.format {
            Some(text) => serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                TranslateError::new(
                    "MeshConfig",
                    "accessLogFormat",
                    format!("with accessLogEncoding JSON it must be a JSON object: {e}"),
                )
            })?,
            None => serde_json::Value::Object(
                ISTIO_JSON_FIELDS
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                    .collect(),
            ),
        };
        let json = xds_proto::json::from_value(value)
            .map_err(|e| TranslateError::new("MeshConfig", "accessLogFormat", e.to_string()))?;
        substitution_format_string::Format::JsonFormat(json)
    } else {
        let mut text = settings
            .format
            .clone()
            .unwrap_or_else(|| ISTIO_TEXT_FORMAT.to_owned());
        if !text.ends_with('\n') {
            text.push('\n');
        }
        substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text)),
            ..Default::default()
        })
    };
    let file = FileAccessLog {
        path: settings.path.clone(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(format),
                ..Default::default()
            },
        )),
    };
    Ok(AccessLog {
        name: "envoy.access_loggers.file".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&file))),
        ..Default::default()
    })
}

/// Puts the file logger on every HCM of `listeners` when the mesh config asks for one.
pub fn apply(mesh: &MeshConfig, listeners: &mut [Listener], errors: &mut Vec<TranslateError>) {
    let Some(settings) = &mesh.access_log else {
        return;
    };
    let log = match file_access_log(settings) {
        Ok(log) => log,
        Err(e) => {
            errors.push(e);
            return;
        }
    };
    for_each_hcm(listeners, |hcm| hcm.access_log = vec![log.clone()]);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bookinfo, productpage};
    use super::super::{Options, generate};
    use crate::mesh_config::MeshConfig;

    fn logs(options: &Options) -> Vec<serde_json::Value> {
        let out = generate(&bookinfo(), &productpage(), options);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let mut found = Vec::new();
        for l in &out.listeners {
            let l = xds_proto::json::to_value(l).unwrap();
            for chain in l["filter_chains"].as_array().cloned().unwrap_or_default() {
                for f in chain["filters"].as_array().cloned().unwrap_or_default() {
                    if f["name"] == super::super::filter_chain::HCM {
                        found.push(f["typed_config"]["access_log"].clone());
                    }
                }
            }
        }
        found
    }

    #[test]
    fn access_log_file_puts_istios_file_logger_on_every_hcm() {
        assert!(logs(&Options::default()).iter().all(|l| l.is_null()));
        let options = Options {
            mesh: MeshConfig::from_yaml("accessLogFile: /dev/stdout").unwrap(),
            ..Options::default()
        };
        let all = logs(&options);
        assert!(!all.is_empty());
        for l in &all {
            let c = &l[0]["typed_config"];
            assert_eq!(l[0]["name"], "envoy.access_loggers.file");
            assert_eq!(c["path"], "/dev/stdout");
            assert_eq!(
                c["log_format"]["text_format_source"]["inline_string"],
                super::ISTIO_TEXT_FORMAT
            );
        }
        let json = Options {
            mesh: MeshConfig::from_yaml("accessLogFile: /dev/stdout\naccessLogEncoding: JSON")
                .unwrap(),
            ..Options::default()
        };
        let l = &logs(&json)[0];
        assert_eq!(
            l[0]["typed_config"]["log_format"]["json_format"]["response_flags"],
            "%RESPONSE_FLAGS%"
        );
    }
}
