//! [`Error`] as an HTTP response (feature `axum`), so handlers can return
//! `Result<_, larder::Error>` and use `?`.

use axum_core::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::{Error, ErrorKind};

/// The status and the fixed text a client gets for an error of `kind`.
///
/// The text never carries the error's message, backend or source: those can name hosts,
/// keys or stored data, so they go to the log instead.
fn public(kind: ErrorKind, retryable: bool) -> (StatusCode, &'static str) {
    // Every kind is named, so that a new one needs a decision here.
    match kind {
        ErrorKind::InvalidKey => (StatusCode::BAD_REQUEST, "invalid key"),
        ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid input"),
        ErrorKind::ValueTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "value too large"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict, try again"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not found"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out"),
        ErrorKind::Backend if retryable => (StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
        ErrorKind::InvalidTtl
        | ErrorKind::Decode
        | ErrorKind::Encode
        | ErrorKind::Unsupported
        | ErrorKind::Config
        | ErrorKind::Loader
        | ErrorKind::Backend => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// An error as a response: the status follows the [`kind`](Error::kind), the body is a fixed
/// phrase for that kind, and the error itself (message, backend, cause) is logged, never
/// sent to the client.
///
/// | kind | status |
/// |---|---|
/// | `InvalidKey`, `InvalidInput` | 400 Bad Request |
/// | `ValueTooLarge` | 413 Payload Too Large |
/// | `Conflict` | 409 Conflict, with `Retry-After: 1` |
/// | `NotFound` (a session deleted or expired, for example) | 404 Not Found |
/// | `Unavailable`, and a `Backend` error marked retryable | 503 Service Unavailable, with `Retry-After: 1` |
/// | `Timeout` | 504 Gateway Timeout, with `Retry-After: 1` |
/// | anything else | 500 Internal Server Error |
///
/// ```
/// use axum_core::response::IntoResponse;
/// use larder_cache_api::{Error, ErrorKind};
///
/// let res = Error::new(ErrorKind::Unavailable, "redis at 10.0.0.7:6379 refused").into_response();
/// assert_eq!(res.status(), 503);
/// ```
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, text) = public(self.kind(), self.is_retryable());
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        let mut res = (status, format!("{text}\n")).into_response();
        if matches!(
            status,
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 14] = [
        ErrorKind::InvalidKey,
        ErrorKind::ValueTooLarge,
        ErrorKind::InvalidTtl,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Conflict,
        ErrorKind::Decode,
        ErrorKind::Encode,
        ErrorKind::Unsupported,
        ErrorKind::Config,
        ErrorKind::Loader,
        ErrorKind::NotFound,
        ErrorKind::InvalidInput,
        ErrorKind::Backend,
    ];

    fn body(res: Response) -> String {
        let bytes = collect(res.into_body());
        String::from_utf8(bytes).expect("utf-8 body")
    }

    /// The body of a response built from a fixed string: one frame, ready at once.
    fn collect(body: axum_core::body::Body) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            http_body_util::BodyExt::collect(body)
                .await
                .expect("body")
                .to_bytes()
                .to_vec()
        })
    }

    #[test]
    fn every_kind_has_its_status_and_no_internal_text() {
        for kind in ALL {
            let secret = "postgres://app:hunter2@db.internal:5432/prod key=user:42";
            let err = Error::new(kind, secret)
                .with_backend("redis")
                .with_source(std::io::Error::other("10.0.0.7:6379 refused"));
            let res = err.into_response();
            let status = res.status().as_u16();
            let expected = match kind {
                ErrorKind::InvalidKey | ErrorKind::InvalidInput => 400,
                ErrorKind::ValueTooLarge => 413,
                ErrorKind::Conflict => 409,
                ErrorKind::NotFound => 404,
                ErrorKind::Unavailable => 503,
                ErrorKind::Timeout => 504,
                _ => 500,
            };
            assert_eq!(status, expected, "{kind:?}");
            let retry = res.headers().get(header::RETRY_AFTER).cloned();
            assert_eq!(
                retry.is_some(),
                matches!(status, 409 | 503 | 504),
                "{kind:?}: Retry-After {retry:?}"
            );
            let text = body(res);
            for leak in [
                "hunter2",
                "postgres",
                "db.internal",
                "user:42",
                "redis",
                "10.0.0.7",
            ] {
                assert!(!text.contains(leak), "{kind:?} sent {leak:?}: {text}");
            }
            assert_eq!(text, format!("{}\n", public(kind, false).1), "{kind:?}");
        }
    }

    #[test]
    fn a_retryable_backend_error_is_503() {
        let res = Error::new(ErrorKind::Backend, "LOADING Redis is loading")
            .with_retryable(true)
            .into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(res), "service unavailable\n");
    }
}
