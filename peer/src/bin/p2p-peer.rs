//! `p2p-peer`: share files and download them from other peers.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::PeerCli;

#[tokio::main]
async fn main() -> ExitCode {
    p2p_peer::init_tracing();
    match p2p_peer::cli::run_peer(PeerCli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", p2p_peer::cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
