//! `p2p-download <hash>`: download one file and exit 0 once it is complete and verified.

use clap::Parser;
use p2p_peer::config::DownloadCli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_peer::init_tracing();
    p2p_peer::cli::run_download(DownloadCli::parse()).await
}
