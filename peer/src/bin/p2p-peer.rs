//! `p2p-peer`: share files and download them from other peers.

use clap::Parser;
use p2p_peer::config::PeerCli;

/// Freed chunk buffers are reused, not handed back to the OS (see the workspace `Cargo.toml`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_peer::init_tracing();
    p2p_peer::cli::run_peer(PeerCli::parse()).await
}
