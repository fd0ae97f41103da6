//! `/health`, `/metrics` and `/api/stats`.

use std::sync::Arc;
use std::time::Duration;

use p2p_proto::api::{Health, Stats};
use poem::Request;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

use super::{ApiTags, Auth};
use crate::error::Refusals;
use crate::error::status::{ANY, AUTHED, STORE};
use crate::state::AppState;

pub struct HealthApi(pub Arc<AppState>);

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The tracker and its database are up.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The database cannot be reached.
    #[oai(status = 503)]
    Degraded(Json<Health>),
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Metrics in the OpenMetrics text format.
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Ok(PlainText<String>),
    /// `--metrics-token` is set and the request does not carry it.
    #[oai(status = 401)]
    Unauthorized(Json<p2p_proto::api::ErrorBody>),
}

#[derive(ApiResponse)]
pub enum RootRedirect {
    /// The dashboard.
    #[oai(status = 303)]
    SeeOther(#[oai(header = "Location")] String),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// `/` leads to the dashboard.
    #[oai(path = "/", method = "get", hidden)]
    async fn root(&self) -> RootRedirect {
        RootRedirect::SeeOther("/dashboard/".to_owned())
    }

    /// Liveness and database reachability (no authentication, no rate limit).
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Result<HealthResponse, Refusals<ANY>> {
        let store = self.0.swarm.store();
        let db_ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
            Ok(Ok(()))
        );
        let health = Health {
            status: if db_ok { "ok" } else { "degraded" }.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            database: if db_ok { "ok" } else { "unreachable" }.to_owned(),
            backend: store.backend().as_str().to_owned(),
        };
        Ok(if db_ok {
            HealthResponse::Ok(Json(health))
        } else {
            HealthResponse::Degraded(Json(health))
        })
    }

    /// Prometheus metrics; the figures from the database are at most a second old. Needs
    /// `Authorization: Bearer <token>` when the tracker runs with `--metrics-token`.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, req: &Request) -> Result<MetricsResponse, Refusals<ANY>> {
        if let Some(want) = &self.0.metrics_token {
            let given = req
                .header("authorization")
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            let digest = crate::auth::keys::digest;
            if given.is_none_or(|g| digest(g) != digest(want)) {
                return Ok(MetricsResponse::Unauthorized(Json(
                    p2p_proto::api::ErrorBody {
                        error: "unauthorized".into(),
                        message: "/metrics needs Authorization: Bearer <metrics token>".into(),
                    },
                )));
            }
        }
        if let Err(e) = self.0.swarm.refresh_gauges_cached().await {
            tracing::warn!(error = %e, "could not refresh gauges for /metrics");
        }
        Ok(MetricsResponse::Ok(PlainText(self.0.metrics.encode())))
    }

    /// Counts for the dashboard overview.
    #[oai(path = "/api/stats", method = "get", operation_id = "stats")]
    async fn stats(&self, _auth: Auth) -> Result<Json<Stats>, Refusals<{ AUTHED | STORE }>> {
        let mut stats = self.0.swarm.stats().await?;
        self.0.fleet.sum_into(&mut stats).await?;
        Ok(Json(stats))
    }
}
