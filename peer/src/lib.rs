//! The peer node of the p2p file-sharing system.
//!
//! Modules:
//! - [`identity`]: the peer's persistent X25519 static key; its public half is the peer id.
//! - [`storage`]: hashing files into manifests, the library of shared files, partial
//!   downloads with resume state and atomic completion, file versions, the shared folder's
//!   index.
//! - [`cli`]: the `p2p-peer` shell and daemon and `p2p-download`.
//! - [`daemon`]: daemon mode: the shared folder kept on offer, each file hashed once, with a
//!   persisted index so a restart hashes only what changed.
//! - [`config`]: the command line (flags of the original design, env on each).
//! - [`shell`]: the interactive shell's commands.
//! - [`throttle`]: upload and download bandwidth limits, changeable at run time.
//! - [`tracker_client`]: the tracker's REST API and the registration session.
//! - [`upload`]: the listener answering manifest and chunk requests.
//! - [`download`]: parallel downloads from several peers with verification and bans.
//! - [`dht`]: a Mainline DHT node: announcing the library and looking files up without the
//!   tracker.
//! - [`discovery`]: turning DHT addresses into download sources (peer id and manifest).
//! - [`node`]: a running peer assembled from the command line.
//! - [`watch`]: the folder watch (content and name changes only, never reads).
//! - [`net`]: transports; [`net::secure`] is the Noise-encrypted frame stream every connection
//!   (TCP, hole-punched QUIC, relay tunnel) runs.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod discovery;
pub mod download;
pub mod identity;
pub mod net;
pub mod node;
pub mod shell;
pub mod storage;
pub mod throttle;
pub mod tracker_client;
pub mod upload;
pub mod watch;

pub use identity::Identity;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
