//! `p2p-download <hash>`: download one file and exit 0 once it is complete and verified.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::DownloadCli;

fn main() -> ExitCode {
    p2p_peer::cli::main(|| p2p_peer::cli::run_download(DownloadCli::parse()))
}
