//! The peer node of the p2p file-sharing system.
//!
//! Layers, each knowing nothing of those above it:
//! - [`net`]: opening, authenticating and carrying sessions between peers over every path
//!   (TCP, hole-punched QUIC, relay tunnel); outbound through the connector, inbound through
//!   the acceptor. [`net::secure`] is the Noise-encrypted frame stream every connection runs.
//! - [`storage`]: hashing files into manifests, the library of shared files, partial
//!   downloads with resume state and atomic completion, file versions, the shared folder's
//!   index.
//! - [`upload`]: answering manifest and chunk requests from the library (the acceptor's
//!   handler), private files only to admitted peers; [`upload_turns`] shares the upload among
//!   the connections, the least served peer first.
//! - [`admission`]: private swarms: the tracker keys pinned at registration, and the
//!   admissions held for downloads.
//! - [`download`]: parallel downloads from several peers with verification and bans.
//! - [`folder`]: folder shares: a folder as one collection, shared and recreated (sanitised,
//!   resumable, each file stored once).
//! - [`tracker_client`]: the tracker's REST API and the registration session.
//! - [`dht`]: a Mainline DHT node: announcing the library and looking files up without the
//!   tracker.
//! - [`discovery`]: the policy of finding a file's manifest and peers (tracker, DHT, probes).
//! - [`node`]: start-up: a running peer assembled from the command line, with its tracker
//!   session.
//! - [`cli`], [`shell`]: the `p2p-peer` shell and daemon and `p2p-download`: parsing and
//!   presenting only.
//! - [`daemon`]: daemon mode: the shared folder kept on offer, each file hashed once, with a
//!   persisted index so a restart hashes only what changed.
//! - [`watch`]: the folder watch (content and name changes only, never reads).
//!
//! Beside them: [`logging`] (log lines coloured only on a terminal, kept off the shell's
//! prompt and progress bar), [`identity`] (the peer's persistent X25519 static key; its public half is the
//! peer id), [`config`] (the command line: flags of the original design, env on each) and
//! [`throttle`] (upload and download bandwidth limits, changeable at run time).

pub mod admission;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod discovery;
pub mod download;
pub mod folder;
pub mod identity;
pub mod logging;
pub mod net;
pub mod node;
pub mod shell;
pub mod storage;
pub mod throttle;
pub mod tracker_client;
pub mod upload;
pub mod upload_turns;
pub mod watch;

pub use identity::Identity;

/// Caps glibc's malloc at two arenas unless `MALLOC_ARENA_MAX` says otherwise; the binaries
/// call it first thing, before their runtime starts threads. glibc gives every thread that
/// meets contention an arena of its own (up to 8 per core), and the 256 KiB chunk buffers one
/// thread frees stay in its arena: a 10 GiB download peaked at 110 MiB of RSS with the
/// default and at 61 MiB with two arenas, 24 MiB for 1 GiB either way (`bench/memory`).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a tuning parameter of glibc's allocator, under its own
        // lock; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); see [`logging`].
pub fn init_tracing() {
    logging::init();
}
