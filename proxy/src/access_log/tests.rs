use super::*;
use xds_proto::envoy::config::core::v3::{DataSource, SubstitutionFormatString};

fn file_log(format: Option<file_access_log::AccessLogFormat>) -> AccessLogProto {
    let file = FileAccessLog {
        path: "/dev/stdout".into(),
        access_log_format: format,
    };
    AccessLogProto {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(xds_proto::any::pack(
            &file,
        ))),
        ..Default::default()
    }
}

#[test]
fn istio_text_and_json_file_logs_are_accepted() {
    let text = file_log(Some(file_access_log::AccessLogFormat::LogFormat(
        SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(
                DataSource {
                    specifier: Some(data_source::Specifier::InlineString(
                        "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n".into(),
                    )),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
    )));
    let log = AccessLog::try_from(&text).unwrap();
    assert_eq!(log.path, PathBuf::from("/dev/stdout"));
    assert!(matches!(log.format, LineFormat::Text(_)));
    let default = AccessLog::try_from(&file_log(None)).unwrap();
    assert_eq!(
        default.format,
        LineFormat::Text(Template::parse(format::DEFAULT_FORMAT).unwrap())
    );
    let json: xds_proto::google::protobuf::Struct = xds_proto::json::from_value(
        serde_json::json!({ "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%" }),
    )
    .unwrap();
    let json = file_log(Some(file_access_log::AccessLogFormat::LogFormat(
        SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(json)),
            ..Default::default()
        },
    )));
    assert!(matches!(
        AccessLog::try_from(&json).unwrap().format,
        LineFormat::Json(ref fields) if fields.len() == 2
    ));
}

#[test]
#[allow(deprecated)]
fn other_loggers_filters_and_operators_are_refused() {
    let mut filtered = file_log(None);
    filtered.filter = Some(Default::default());
    assert_eq!(AccessLog::try_from(&filtered).unwrap_err().field, "filter");
    let grpc = AccessLogProto {
        name: "envoy.access_loggers.http_grpc".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(
            xds_proto::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig".into(),
                value: vec![],
            },
        )),
        ..Default::default()
    };
    let e = AccessLog::try_from(&grpc).unwrap_err();
    assert!(e.reason.contains("http_grpc"), "{e}");
    let bad = file_log(Some(file_access_log::AccessLogFormat::Format(
        "%FILTER_STATE(x)%".into(),
    )));
    let e = AccessLog::try_from(&bad).unwrap_err();
    assert!(e.reason.contains("FILTER_STATE"), "{e}");
}
