//! Caps request bodies by size and time while they stream. Nothing is buffered here: the body
//! is passed on as a stream that fails once it goes over `max` bytes or past its deadline, so
//! a handler that refuses a request (no credentials, rate limited) never reads it at all, and
//! one that reads it holds at most `max` bytes. A declared `Content-Length` over the cap is
//! refused at once. Unlike poem's `SizeLimit` it does not demand a `Content-Length` (GET
//! requests and chunked uploads have none).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use poem::http::header::CONTENT_LENGTH;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response, Result};

use crate::error::ApiError;

/// The middleware: bodies over `max` bytes get a JSON 413; bodies still arriving after
/// `timeout` a JSON 408.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max: usize,
    pub timeout: Duration,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            limit: *self,
        }
    }
}

#[derive(Debug)]
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: BodyLimit,
}

fn too_large(max: usize) -> Response {
    ApiError::payload_too_large(format!("request body is larger than {max} bytes")).into_response()
}

/// What cut a body short.
const CUT_NONE: u8 = 0;
const CUT_SIZE: u8 = 1;
const CUT_TIME: u8 = 2;

/// `body` as a stream that ends in an error past `max` bytes or `timeout`, recording which.
fn capped(body: Body, limit: BodyLimit, cut: Arc<AtomicU8>) -> Body {
    let deadline = tokio::time::Instant::now() + limit.timeout;
    let inner = body.into_bytes_stream();
    let state = (Box::pin(inner), 0usize, false);
    let capped = stream::unfold(state, move |(mut inner, seen, done)| {
        let cut = cut.clone();
        async move {
            if done {
                return None;
            }
            let next = tokio::time::timeout_at(deadline, inner.next()).await;
            let (code, what) = match next {
                Err(_) => (CUT_TIME, "request body not received in time"),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some((Err(e), (inner, seen, true))),
                Ok(Some(Ok(chunk))) => {
                    let seen = seen.saturating_add(chunk.len());
                    if seen <= limit.max {
                        return Some((Ok(chunk), (inner, seen, false)));
                    }
                    (CUT_SIZE, "request body too large")
                }
            };
            cut.store(code, Ordering::Relaxed);
            Some((Err(std::io::Error::other(what)), (inner, seen, true)))
        }
    });
    Body::from_bytes_stream(capped)
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .header(CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limit.max as u64) {
            return Ok(too_large(self.limit.max));
        }
        let has_body = declared.is_some_and(|len| len > 0)
            || (declared.is_none() && req.header("transfer-encoding").is_some());
        if !has_body {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let cut = Arc::new(AtomicU8::new(CUT_NONE));
        let body = req.take_body();
        req.set_body(capped(body, self.limit, cut.clone()));
        let resp = self.inner.call(req).await.map(IntoResponse::into_response);
        // The handler saw a read error; say what it was.
        Ok(match cut.load(Ordering::Relaxed) {
            CUT_SIZE => too_large(self.limit.max),
            CUT_TIME => ApiError::request_timeout().into_response(),
            _ => resp?,
        })
    }
}
