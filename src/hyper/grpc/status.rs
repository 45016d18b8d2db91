//! The crate's own failures as gRPC statuses: a "Trailers-Only" response.
//!
//! tonic turns a transport error into a `Status` by walking its `source()`
//! chain for tonic's, h2's and hyper's errors, and calls anything else
//! `Unknown`; it cannot know this crate's errors, and this crate does not
//! depend on tonic. What every gRPC client does read is a response whose
//! headers carry `grpc-status`: gRPC's "Trailers-Only" form, which gRPC
//! proxies (envoy, linkerd2-proxy) use for their own failures. So the
//! [`GrpcClient`](super::GrpcClient) answers a call that one of the
//! crate's errors failed with such a response, made here.

use std::error::Error;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::Response;

use super::GrpcBody;
use crate::error::{
    chain, Closed, ConnectionLost, NotSent, Overloaded, Panicked, ResponseTimeout, Unavailable,
};

/// The metadata key that names the crate's error in the response, so in
/// tonic's `Status::metadata()`.
pub(super) const ERROR_KEY: &str = "tower-redial-error";

/// gRPC's codes used here (`grpc/doc/statuscodes.md`).
const DEADLINE_EXCEEDED: &str = "4";
const RESOURCE_EXHAUSTED: &str = "8";
const INTERNAL: &str = "13";
const UNAVAILABLE: &str = "14";

/// The gRPC code and the metadata value for the first of the crate's own
/// errors in `error`'s chain, or `None` if it holds none (hyper's and
/// h2's errors, the body's own: left to the gRPC client to map).
pub(super) fn code_of(error: &(dyn Error + 'static)) -> Option<(&'static str, &'static str)> {
    chain(error).find_map(|e| {
        Some(if e.is::<Unavailable>() {
            (UNAVAILABLE, "unavailable")
        } else if e.is::<NotSent>() {
            (UNAVAILABLE, "not-sent")
        } else if e.is::<ConnectionLost>() {
            (UNAVAILABLE, "connection-lost")
        } else if e.is::<Closed>() {
            (UNAVAILABLE, "closed")
        } else if e.is::<ResponseTimeout>() {
            (DEADLINE_EXCEEDED, "response-timeout")
        } else if e.is::<Overloaded>() {
            (RESOURCE_EXHAUSTED, "overloaded")
        } else if e.is::<Panicked>() {
            (INTERNAL, "panicked")
        } else {
            return None;
        })
    })
}

/// The Trailers-Only response for `error`, if it is one of the crate's:
/// HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// `grpc-message` (the error and its sources, percent-encoded as gRPC
/// asks), the crate's error kind under [`ERROR_KEY`], and no body.
pub(super) fn trailers_only(error: &(dyn Error + 'static)) -> Option<Response<GrpcBody>> {
    let (code, kind) = code_of(error)?;
    let message = chain(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    let mut response = Response::new(GrpcBody::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(&percent_encode(&message)).expect("percent-encoded is visible ASCII"),
    );
    headers.insert(ERROR_KEY, HeaderValue::from_static(kind));
    Some(response)
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as
/// `%XX` (gRPC's PROTOCOL-HTTP2.md).
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::BoxError;

    fn code(error: BoxError) -> Option<(&'static str, &'static str)> {
        code_of(&*error)
    }

    #[test]
    fn each_error_has_its_code() {
        let target: std::sync::Arc<str> = "127.0.0.1:1".into();
        let down = Duration::from_secs(2);
        assert_eq!(
            code(Unavailable::new(target.clone(), down, 3, None).into()),
            Some(("14", "unavailable"))
        );
        assert_eq!(code(NotSent::new("gone").into()), Some(("14", "not-sent")));
        assert_eq!(
            code(ConnectionLost::new("broken pipe").into()),
            Some(("14", "connection-lost"))
        );
        assert_eq!(
            code(Closed::new(target, 3, None).into()),
            Some(("14", "closed"))
        );
        assert_eq!(
            code(Panicked::new("the dial", &"boom").into()),
            Some(("13", "panicked"))
        );
        assert_eq!(code(Overloaded::new().into()), Some(("8", "overloaded")));
        assert_eq!(
            code(ResponseTimeout::new(Duration::from_secs(1)).into()),
            Some(("4", "response-timeout"))
        );
        assert_eq!(code("from hyper or the body".into()), None);
    }

    /// The first of the crate's errors in the chain decides: a wrapper of
    /// the user's own keeps the code.
    #[test]
    fn the_code_is_found_down_the_chain() {
        #[derive(Debug)]
        struct Wrapper(ResponseTimeout);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(ResponseTimeout::new(Duration::from_secs(1)));
        assert_eq!(code_of(&wrapped), Some(("4", "response-timeout")));
        let response = trailers_only(&wrapped).unwrap();
        assert_eq!(
            response.headers()["grpc-message"],
            "wrapped: no response within 1s"
        );
    }

    #[test]
    fn the_message_is_percent_encoded() {
        assert_eq!(percent_encode("100% down: é\n"), "100%25 down: %C3%A9%0A");
    }

    #[test]
    fn the_response_is_trailers_only() {
        let response = trailers_only(&Overloaded::new()).expect("one of the crate's");
        let headers = response.headers();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(headers["grpc-message"], "request queue is full");
        assert_eq!(headers[ERROR_KEY], "overloaded");
        assert!(::hyper::body::Body::is_end_stream(response.body()));
    }
}
