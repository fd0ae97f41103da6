//! `p2p-download <hash>`: download one file and exit 0 once it is complete and verified.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::DownloadCli;

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
    match p2p_peer::cli::run_download(DownloadCli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", p2p_peer::cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
