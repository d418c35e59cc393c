//! The answer every vendor double gives: a status and a JSON body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::Value;

/// `status` with `body` as `application/json`.
pub fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}
