//! Caps request bodies. Unlike poem's `SizeLimit` it does not demand a `Content-Length` (GET
//! requests and chunked uploads have none); chunked bodies are read up to the cap.

use poem::http::header::CONTENT_LENGTH;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response, Result};

use crate::error::ApiError;

/// The middleware: bodies over `max` bytes get a JSON 413.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max: usize,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            max: self.max,
        }
    }
}

#[derive(Debug)]
pub struct BodyLimitEndpoint<E> {
    inner: E,
    max: usize,
}

fn too_large(max: usize) -> Response {
    ApiError::payload_too_large(format!("request body is larger than {max} bytes")).into_response()
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .header(CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > self.max as u64 => return Ok(too_large(self.max)),
            Some(_) => {}
            None if req.header("transfer-encoding").is_some() => {
                let body = req.take_body();
                match body.into_bytes_limit(self.max).await {
                    Ok(bytes) => req.set_body(Body::from_bytes(bytes)),
                    Err(_) => return Ok(too_large(self.max)),
                }
            }
            None => {}
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
