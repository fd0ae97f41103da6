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
    /// Sets the upload (`up`) or download (`down`) limit in bytes/s; `None` lifts it.
    Limit {
        upload: bool,
        rate: Option<u64>,
    },
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
  peers              peers online in the swarm
  limit up|down <rate|off>
                     set a bandwidth limit now, e.g. limit up 5M
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
            .map_err(|e| format!("not a file id: {e}")),
        ("status", "") => Ok(ShellCommand::Status),
        ("peers", "") => Ok(ShellCommand::Peers),
        ("limit", args) => {
            let usage = || "usage: limit up|down <rate|off>, e.g. limit down 10M".to_owned();
            let (dir, rate) = args.split_once(char::is_whitespace).ok_or_else(usage)?;
            let upload = match dir {
                "up" | "upload" => true,
                "down" | "download" => false,
                _ => return Err(usage()),
            };
            let rate = match rate.trim() {
                "off" | "none" | "0" => None,
                r => Some(crate::config::parse_rate(r)?),
            };
            Ok(ShellCommand::Limit { upload, rate })
        }
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
        assert_eq!(
            parse("download 1234").unwrap_err(),
            "not a file id: expected 64 hex characters, got 4"
        );
        assert!(parse("share").is_err());
        assert_eq!(
            parse("limit up 5M"),
            Ok(ShellCommand::Limit {
                upload: true,
                rate: Some(5 << 20)
            })
        );
        assert_eq!(
            parse("limit down off"),
            Ok(ShellCommand::Limit {
                upload: false,
                rate: None
            })
        );
        assert!(parse("limit sideways 1M").is_err());
        assert!(parse("frobnicate").unwrap_err().contains("help"));
    }
}
