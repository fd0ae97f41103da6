//! `p2p-download <hash>`: download one file and exit 0 once it is complete and verified.

use clap::Parser;
use p2p_peer::config::DownloadCli;

/// Freed chunk buffers are reused, not handed back to the OS (see the workspace `Cargo.toml`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_peer::init_tracing();
    p2p_peer::cli::run_download(DownloadCli::parse()).await
}
