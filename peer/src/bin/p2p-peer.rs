//! `p2p-peer`: share files and download them from other peers.

use clap::Parser;
use p2p_peer::config::PeerCli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_peer::init_tracing();
    p2p_peer::cli::run_peer(PeerCli::parse()).await
}
