//! `p2p-peer`: share files and download them from other peers.

use std::process::ExitCode;

use clap::Parser;
use p2p_peer::config::PeerCli;

fn main() -> ExitCode {
    p2p_peer::cli::main(|| p2p_peer::cli::run_peer(PeerCli::parse()))
}
