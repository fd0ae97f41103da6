//! Caps request bodies by size and time while they stream. Nothing is buffered here: the body
//! is passed on as a stream that fails once it goes over `max` bytes or past its deadline, so
//! a handler that refuses a request (no credentials, rate limited) never reads it at all, and
//! one that reads it holds at most `max` bytes. A declared `Content-Length` over the cap is
//! refused at once. Unlike poem's `SizeLimit` it does not demand a `Content-Length` (GET
//! requests and chunked uploads have none).
//!
//! Bodies also share a [`Budget`]: past the first [`FREE`] bytes of its own, a body holds a
//! share of it for each byte read until its request is answered, and one that would go over
//! it is cut with a 429. One body is bounded by `max`; the budget bounds all of them together,
//! while the small bodies of ordinary requests never touch it. Only an announce (a manifest)
//! and a folder collection's member grants may send up to `max`: other routes are capped at
//! [`SMALL_MAX`], and a login, which anyone may send, at [`LOGIN_MAX`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use parking_lot::Mutex;
use poem::http::header::CONTENT_LENGTH;
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The bytes of each body that do not count against the [`Budget`]: more than any request
/// but an announce of a file of many GiB or a large folder's collection sends.
pub const FREE: usize = 1 << 20;
/// The largest body of a route other than an announce or a folder collection's member grants
/// (a heartbeat's 256 connections take some 50 KB).
pub const SMALL_MAX: usize = 256 << 10;
/// The largest body of a login (a key, or a name and a password), which anyone may send.
pub const LOGIN_MAX: usize = 16 << 10;

/// The middleware: bodies over `max` bytes get a JSON 413; bodies still arriving after
/// `timeout` a JSON 408; bodies that would hold more than the budget has left a JSON 429.
#[derive(Debug, Clone)]
pub struct BodyLimit {
    pub max: usize,
    pub timeout: Duration,
    pub budget: Budget,
}

impl BodyLimit {
    /// The largest body of a request to `path`: `max` only where the body is a manifest or a
    /// folder collection, so that other bodies, a login's above all, never come near the
    /// budget and cannot add up to much over many connections.
    fn cap(&self, path: &str) -> usize {
        let large = path == "/api/files/announce"
            || (path.starts_with("/api/files/") && path.ends_with("/grants/members"));
        let cap = match path {
            _ if large => self.max,
            "/api/auth/login" => LOGIN_MAX,
            _ => SMALL_MAX,
        };
        cap.min(self.max)
    }
}

/// The bytes of request bodies that may be held at once, past each one's [`FREE`] bytes
/// (`--max-body-bytes-in-flight`), in KiB permits.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(
            (bytes / 1024).min(Semaphore::MAX_PERMITS),
        )))
    }
}

/// What one request's body holds of the [`Budget`], until the request is answered.
#[derive(Debug, Default)]
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    kib: u32,
}

impl Held {
    /// Holds enough of `budget` for `seen` bytes of body; false when it has not that much left.
    fn cover(&mut self, seen: usize, budget: &Budget) -> bool {
        let needed = u32::try_from(seen.saturating_sub(FREE).div_ceil(1024)).unwrap_or(u32::MAX);
        if needed <= self.kib {
            return true;
        }
        let Ok(more) = budget.0.clone().try_acquire_many_owned(needed - self.kib) else {
            return false;
        };
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        self.kib = needed;
        true
    }
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            limit: self.clone(),
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
const CUT_BUDGET: u8 = 3;

/// `body` as a stream that ends in an error past `max` bytes (this route's cap), `limit`'s
/// timeout or what its budget has left (`held` holds this body's share), recording which.
fn capped(
    body: Body,
    limit: &BodyLimit,
    max: usize,
    cut: Arc<AtomicU8>,
    held: Arc<Mutex<Held>>,
) -> Body {
    let (deadline, budget) = (
        tokio::time::Instant::now() + limit.timeout,
        limit.budget.clone(),
    );
    let inner = body.into_bytes_stream();
    let state = (Box::pin(inner), 0usize, false);
    let capped = stream::unfold(state, move |(mut inner, seen, done)| {
        let (cut, held, budget) = (cut.clone(), held.clone(), budget.clone());
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
                    if seen > max {
                        (CUT_SIZE, "request body too large")
                    } else if !held.lock().cover(seen, &budget) {
                        (CUT_BUDGET, "too many request bodies held")
                    } else {
                        return Some((Ok(chunk), (inner, seen, false)));
                    }
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
        let max = self.limit.cap(req.uri().path());
        if declared.is_some_and(|len| len > max as u64) {
            return Ok(too_large(max));
        }
        let has_body = declared.is_some_and(|len| len > 0)
            || (declared.is_none() && req.header("transfer-encoding").is_some());
        if !has_body {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let cut = Arc::new(AtomicU8::new(CUT_NONE));
        // Released once the request is answered (and its body stream dropped): what the
        // handler parsed from the body lives as long.
        let held = Arc::new(Mutex::new(Held::default()));
        let body = req.take_body();
        req.set_body(capped(body, &self.limit, max, cut.clone(), held.clone()));
        let resp = self.inner.call(req).await.map(IntoResponse::into_response);
        drop(held);
        // The handler saw a read error; say what it was.
        Ok(match cut.load(Ordering::Relaxed) {
            CUT_SIZE => too_large(max),
            CUT_TIME => ApiError::request_timeout().into_response(),
            CUT_BUDGET => ApiError::bodies_busy().into_response(),
            _ => resp?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_and_collections_may_be_large() {
        let limit = BodyLimit {
            max: 64 << 20,
            timeout: Duration::from_secs(1),
            budget: Budget::new(64 << 20),
        };
        assert_eq!(limit.cap("/api/files/announce"), 64 << 20);
        assert_eq!(limit.cap("/api/files/ab12/grants/members"), 64 << 20);
        assert_eq!(limit.cap("/api/auth/login"), LOGIN_MAX);
        for path in [
            "/api/peers/heartbeat",
            "/api/files/ab12/grants",
            "/api/users",
            "/x",
        ] {
            assert_eq!(limit.cap(path), SMALL_MAX, "{path}");
        }
        let small = BodyLimit { max: 1024, ..limit };
        assert_eq!(small.cap("/api/files/announce"), 1024);
        assert_eq!(small.cap("/api/peers/register"), 1024);
    }

    /// A body's first MiB is free; past it, each KiB holds one permit until the body's share
    /// is dropped; a body that would go over what is left is refused and holds what it had.
    #[test]
    fn bodies_hold_the_budget_past_their_free_bytes_until_dropped() {
        let budget = Budget::new(4 << 20);
        let mut a = Held::default();
        assert!(a.cover(FREE, &budget));
        assert_eq!(budget.0.available_permits(), 4096);
        assert!(a.cover(FREE + 1, &budget));
        assert_eq!(budget.0.available_permits(), 4095);
        assert!(a.cover(FREE + (3 << 20), &budget));
        assert!(
            a.cover(FREE + 1000, &budget),
            "covering less takes nothing back"
        );
        assert_eq!(budget.0.available_permits(), 1024);
        let mut b = Held::default();
        assert!(!b.cover(FREE + (2 << 20), &budget));
        assert_eq!(budget.0.available_permits(), 1024);
        assert!(b.cover(FREE + (1 << 20), &budget));
        assert_eq!(budget.0.available_permits(), 0);
        // A small body still goes through with the budget spent.
        assert!(Held::default().cover(4096, &budget));
        drop(a);
        assert_eq!(budget.0.available_permits(), 3072);
        drop(b);
        assert_eq!(budget.0.available_permits(), 4096);
    }
}
