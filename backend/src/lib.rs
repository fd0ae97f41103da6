//! The tracker of the p2p file-sharing system.
//!
//! Modules:
//! - [`config`]: the command line and environment (one typed config).
//! - [`app`]: assembles the routes, state, middleware and background tasks.
//! - [`api`]: the REST handlers, one module per resource; they parse, call [`swarm`], map.
//! - [`swarm`]: the tracker's rules: registration, heartbeats and expiry, announces, events.
//! - [`store`]: the storage trait with its SQLite and PostgreSQL backends; all SQL lives here.
//! - [`auth`]: API keys, argon2 passwords, JWTs and the request authenticator ([`auth::authenticate`]).
//! - [`state`]: [`AppState`](state::AppState), what every handler can reach.
//! - [`ws`]: the WebSocket endpoints: the live event feed (`/ws`) and the relay upgrade (`/relay`).
//! - [`relay`]: the relay hub (attached peers, tunnels, caps) and the hole-punch rendezvous.
//! - [`fleet`]: the trackers on one database: the live relays (`/api/relays`) and summed counts.
//! - [`dashboard`]: serves the WASM dashboard at `/dashboard/` (embedded or from a folder).
//! - [`server`]: the HTTP server (connection cap, accept back-off, header-read timeout).
//! - [`ratelimit`], [`body_limit`], [`metrics`], [`clock`], [`error`]: the cross-cutting pieces.
//! - [`cli`]: the `serve`, `user` and `key` subcommands.

pub mod api;
pub mod app;
pub mod auth;
pub mod body_limit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod state;
pub mod store;
pub mod swarm;
pub mod swarm_cache;
pub mod ws;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), coloured only on a terminal and
/// not when `NO_COLOR` is set (<https://no-color.org>).
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}
