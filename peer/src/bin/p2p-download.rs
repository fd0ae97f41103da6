//! `p2p-download <hash>`: download one file and exit 0 once it is complete and verified.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::DownloadCli;

#[tokio::main]
async fn main() -> ExitCode {
    p2p_peer::init_tracing();
    match p2p_peer::cli::run_download(DownloadCli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", p2p_peer::cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
