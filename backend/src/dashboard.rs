//! Serves the dashboard (the `p2p-web` WASM app) at `/dashboard/`: from the files embedded at
//! build time, or from `--dashboard-dir`. When neither has the assets, `/dashboard/` explains how
//! to build them instead of answering 404.

use std::borrow::Cow;
use std::path::PathBuf;

use poem::http::{StatusCode, header};
use poem::web::Redirect;
use poem::{Endpoint, IntoResponse, Request, Response, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// Where the dashboard's files come from.
#[derive(Debug, Clone)]
pub enum Assets {
    /// Built into the binary.
    Embedded,
    /// Read from a folder at each request.
    Dir(PathBuf),
    /// Not built: the page says how to build it.
    Missing { reason: String },
}

impl Assets {
    /// `dir` wins when given; otherwise the embedded files, if any.
    pub fn locate(dir: Option<PathBuf>) -> Self {
        match dir {
            Some(dir) if dir.join("index.html").is_file() => Self::Dir(dir),
            Some(dir) => Self::Missing {
                reason: format!("{} has no index.html", dir.display()),
            },
            None if !embedded::ASSETS.is_empty() => Self::Embedded,
            None => Self::Missing {
                reason: "this tracker was built without the dashboard assets".into(),
            },
        }
    }

    /// A line for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded => format!("dashboard: {} embedded files", embedded::ASSETS.len()),
            Self::Dir(d) => format!("dashboard: serving {}", d.display()),
            Self::Missing { reason } => format!(
                "dashboard assets not built ({reason}): run scripts/build-web.sh and rebuild, \
                 or pass --dashboard-dir"
            ),
        }
    }

    fn read(&self, path: &str) -> Option<Cow<'static, [u8]>> {
        match self {
            Self::Embedded => embedded::ASSETS
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, bytes)| Cow::Borrowed(*bytes)),
            Self::Dir(dir) => std::fs::read(dir.join(path)).ok().map(Cow::Owned),
            Self::Missing { .. } => None,
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A relative path with no `..`, no empty segments and no backslashes, or `None`.
fn clean(path: &str) -> Option<&str> {
    let ok = path
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
    ok.then_some(path)
}

const NOT_BUILT: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Dashboard not built</title><style>body{font-family:system-ui;max-width:40rem;margin:4rem auto;
padding:0 1rem;line-height:1.5}code{background:#eee;padding:.1rem .3rem}</style></head><body>
<h1>The dashboard was not built</h1><p>This tracker is running, but it has no dashboard assets
(REASON).</p><p>Build them with <code>scripts/build-web.sh</code>, then rebuild the tracker (the
assets are embedded) or start it with <code>--dashboard-dir web/dist</code>.</p>
<p>The API works: see <a href="/api/docs">/api/docs</a>.</p></body></html>"#;

/// The `/dashboard` endpoint.
#[derive(Debug, Clone)]
pub struct DashboardEndpoint {
    pub assets: Assets,
}

impl Endpoint for DashboardEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let path = req.uri().path();
        let Some(rest) = path.strip_prefix("/dashboard/") else {
            return Ok(Redirect::permanent("/dashboard/").into_response());
        };
        if let Assets::Missing { reason } = &self.assets {
            let html = NOT_BUILT.replace("REASON", &reason.replace('<', "&lt;"));
            return Ok(html
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_content_type("text/html; charset=utf-8")
                .into_response());
        }
        let wanted = if rest.is_empty() { "index.html" } else { rest };
        let Some(wanted) = clean(wanted) else {
            return Err(poem::Error::from_status(StatusCode::NOT_FOUND));
        };
        let (file, body) = match self.assets.read(wanted) {
            Some(body) => (wanted, body),
            // Client-side routes (no extension) get the app itself.
            None if !wanted.contains('.') => match self.assets.read("index.html") {
                Some(body) => ("index.html", body),
                None => return Err(poem::Error::from_status(StatusCode::NOT_FOUND)),
            },
            None => return Err(poem::Error::from_status(StatusCode::NOT_FOUND)),
        };
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, content_type(file))
            .header(header::CACHE_CONTROL, "no-cache")
            .header("X-Content-Type-Options", "nosniff")
            .body(body.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean("pkg/app.js"), Some("pkg/app.js"));
        for bad in ["../x", "a/../b", "a//b", "./a", "a\\b", ""] {
            assert_eq!(clean(bad), None, "{bad}");
        }
        assert_eq!(content_type("pkg/x.wasm"), "application/wasm");
    }
}
