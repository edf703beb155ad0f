//! Responses the proxy makes itself (no route, no healthy upstream, timeouts, redirects), with
//! the Envoy response flag attached as a response extension so logs and stats can read it.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::error::ResponseFlag;

/// A local reply: `status`, a plain-text `body` (Envoy's wording), and the response flag.
pub fn local_reply(
    status: StatusCode,
    body: &'static str,
    flag: Option<ResponseFlag>,
) -> Response<Body> {
    let mut response = Response::new(crate::body::full(body));
    *response.status_mut() = status;
    if !body.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if let Some(flag) = flag {
        crate::error::ResponseFlags::add_to(response.extensions_mut(), flag);
    }
    response
}
