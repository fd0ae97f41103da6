//! `p2p-peer`: share files and download them from other peers.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::PeerCli;

fn main() -> ExitCode {
    p2p_peer::limit_malloc_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    p2p_peer::init_tracing();
    match p2p_peer::cli::run_peer(PeerCli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", p2p_peer::cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
