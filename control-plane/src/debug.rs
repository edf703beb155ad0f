//! The control plane's debug and monitoring HTTP endpoint (port 15014, like istiod's):
//!
//! - `/debug/syncz` (alias `/debug/connections`): every connected proxy with, per type, the
//!   version sent and ACKed, the pending nonce and the last NACK's error — what
//!   `istioctl proxy-status` shows.
//! - `/debug/config_dump?proxyID=ID`: the config generated for one proxy, as proto3 JSON.
//! - `/debug/errors`: the objects the sources currently refuse, with why.
//! - `/debug/warnings`: the objects accepted but not enforced yet (PeerAuthentication,
//!   AuthorizationPolicy), with why.
//! - `/metrics`: Prometheus text; `/ready`: 200 once the sources' initial sync is served.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::{ModelError, ModelWarning};
use crate::xds::connection::Registry;
use crate::xds::debounce::Epochs;
use crate::xds::metrics::Metrics;

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct DebugState {
    /// The ADS server's connections.
    pub registry: Registry,
    /// The metrics to expose.
    pub metrics: Metrics,
    /// The sources' current validation errors.
    pub errors: watch::Receiver<Arc<Vec<ModelError>>>,
    /// The objects of the current model that are accepted but not enforced.
    pub warnings: watch::Receiver<Arc<Vec<ModelWarning>>>,
    /// Push epochs: ready once the first one is published.
    pub epochs: Epochs,
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: DebugState) {
    tracing::info!(addr = ?listener.local_addr().ok(), "debug endpoint listening");
    let state = Arc::new(state);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "debug endpoint accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "debug connection ended");
            }
        });
    }
}

/// Answers one request.
fn handle(state: &DebugState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/debug/syncz" | "/debug/connections" => {
            let list: Vec<Value> = state
                .registry
                .list()
                .iter()
                .map(|c| {
                    let mut view = c.to_json();
                    view["synced"] = c.synced().into();
                    view
                })
                .collect();
            json_response(StatusCode::OK, &Value::Array(list))
        }
        "/debug/config_dump" => config_dump(state, req.uri().query().unwrap_or("")),
        "/debug/errors" => {
            let errors: Vec<Value> = state
                .errors
                .borrow()
                .iter()
                .map(|e| {
                    json!({
                        "origin": e.origin,
                        "kind": e.kind,
                        "name": e.name,
                        "field": e.field,
                        "reason": e.reason,
                        "message": e.to_string(),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &Value::Array(errors))
        }
        "/debug/warnings" => {
            let warnings: Vec<Value> = state
                .warnings
                .borrow()
                .iter()
                .map(|w| {
                    json!({
                        "origin": w.origin,
                        "kind": w.kind,
                        "name": w.name,
                        "reason": w.reason,
                        "message": w.to_string(),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &Value::Array(warnings))
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::xds::metrics::CONTENT_TYPE),
            );
            response
        }
        "/ready" if state.epochs.borrow().is_some() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the initial sync of the sources\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /debug/syncz /debug/config_dump?proxyID= /debug/errors /debug/warnings /metrics /ready\n"
                .into(),
        ),
    }
}

fn config_dump(state: &DebugState, query: &str) -> Response<Full<Bytes>> {
    let Some(id) = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "proxyID")
        .map(|(_, v)| v.into_owned())
    else {
        return text(StatusCode::BAD_REQUEST, "missing ?proxyID=\n".into());
    };
    let Some(connection) = state.registry.find(&id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no connected proxy {id:?}\n"),
        );
    };
    let Some(snapshot) = connection.snapshot else {
        let reason = connection
            .generate_error
            .unwrap_or_else(|| "no config generated yet (waiting for the sources)".into());
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    };
    let mut configs = serde_json::Map::new();
    for (ty, entry) in snapshot.all() {
        let resource = match xds_proto::json::any_to_value(&entry.resource) {
            Ok(resource) => resource,
            Err(e) => json!({ "error": e.to_string() }),
        };
        let list = configs
            .entry(ty.label())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            list.push(
                json!({ "name": entry.name, "version": entry.version, "resource": resource }),
            );
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "proxy": connection.proxy.id,
            "connection_id": connection.connection_id,
            "epoch": connection.epoch,
            "generate_error": connection.generate_error,
            "configs": configs,
        }),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
