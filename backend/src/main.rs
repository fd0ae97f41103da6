//! `p2p-tracker`: parse the command line, start logging, run.

use clap::Parser;
use p2p_tracker::config::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    p2p_tracker::init_tracing();
    p2p_tracker::cli::run(cli).await
}
