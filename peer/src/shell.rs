//! The interactive shell's commands, parsed from a line of input.

use std::path::PathBuf;

use p2p_proto::FileId;

/// One shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    Share(PathBuf),
    List,
    Download(FileId),
    Status,
    Peers,
    Help,
    Quit,
    /// An empty line.
    Nothing,
}

/// Help text of the shell.
pub const HELP: &str = "\
commands:
  share <path>       share a file (hashes it and announces it to the tracker)
  list               files known to the tracker
  download <hash>    download a file by its id (64 hex characters)
  status             this peer: id, port, shared files, transfers
  peers              peers this node is connected to
  help               this text
  quit               leave (also Ctrl-D)";

/// Parses a line; the error is a message for the user.
pub fn parse(line: &str) -> Result<ShellCommand, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    match (word.to_ascii_lowercase().as_str(), rest) {
        ("", _) => Ok(ShellCommand::Nothing),
        ("share", "") => Err("usage: share <path>".into()),
        ("share", path) => Ok(ShellCommand::Share(PathBuf::from(path))),
        ("list" | "ls", "") => Ok(ShellCommand::List),
        ("download" | "get", "") => Err("usage: download <hash>".into()),
        ("download" | "get", hash) => hash
            .parse()
            .map(ShellCommand::Download)
            .map_err(|e| format!("not a file id ({e}); ids are 64 hex characters")),
        ("status", "") => Ok(ShellCommand::Status),
        ("peers", "") => Ok(ShellCommand::Peers),
        ("help" | "?", _) => Ok(ShellCommand::Help),
        ("quit" | "exit", "") => Ok(ShellCommand::Quit),
        (w, _) => Err(format!("unknown command {w:?}; type help")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse("  share  /tmp/a b.txt "),
            Ok(ShellCommand::Share("/tmp/a b.txt".into()))
        );
        assert_eq!(parse("list"), Ok(ShellCommand::List));
        assert_eq!(parse("QUIT"), Ok(ShellCommand::Quit));
        assert_eq!(parse(""), Ok(ShellCommand::Nothing));
        let hash = "0f".repeat(32);
        assert_eq!(
            parse(&format!("download {hash}")),
            Ok(ShellCommand::Download(hash.parse().unwrap()))
        );
        assert!(parse("download xyz").unwrap_err().contains("64 hex"));
        assert!(parse("share").is_err());
        assert!(parse("frobnicate").unwrap_err().contains("help"));
    }
}
