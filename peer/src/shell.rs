//! The interactive shell's commands, parsed from a line of input.

use std::path::PathBuf;

use p2p_proto::FileId;

use crate::config::Target;

/// One shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    /// Shares a file; `public`: to anyone and on the DHT, else to admitted peers only.
    Share {
        path: PathBuf,
        public: bool,
    },
    List,
    /// Downloads by id or share link.
    Download(Target),
    /// Prints a share link for the file whose id starts with these hex characters.
    Link(String),
    /// Stops sharing the file whose id starts with these hex characters (lower case).
    Unshare(String),
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
  share <path>       share a file (hashes it and announces it to the tracker), or a
                     folder with its subfolders as one collection; prints its id and a
                     share link; private: served only to peers the tracker admits to it
  share --public <path>
                     share a file or folder with anyone, also through the DHT (kept
                     across restarts)
  list               files known to the tracker
  download <hash|link>
                     download a file or a folder by its id (64 hex characters) or a
                     share link (p2p1…, which may stand in for the API key)
  link <id>          print a share link for a file this peer shares (the id may be
                     shortened to its first characters): trackers, peers, and a read
                     grant that lets anyone holding the link download it (--link-ttl)
  unshare <id>       stop sharing a file and withdraw it from the tracker; the id may be
                     shortened to its first characters (at least 4). A folder's id
                     withdraws its files too, except those shared on their own or by
                     another shared folder
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
        ("share", "") | ("share", "--public") => Err("usage: share [--public] <path>".into()),
        ("share", rest) => Ok(match rest.strip_prefix("--public ") {
            Some(path) => ShellCommand::Share {
                path: PathBuf::from(path.trim()),
                public: true,
            },
            None => ShellCommand::Share {
                path: PathBuf::from(rest),
                public: false,
            },
        }),
        ("list" | "ls", "") => Ok(ShellCommand::List),
        ("download" | "get", "") => Err("usage: download <hash|link>".into()),
        ("download" | "get", target) => target.parse().map(ShellCommand::Download),
        ("link", "") => Err("usage: link <id> (the file id, or its first characters)".into()),
        ("link", id) => parse_id_prefix(id).map(ShellCommand::Link),
        ("unshare", "") => Err("usage: unshare <id> (the file id, or its first characters)".into()),
        ("unshare", id) => parse_id_prefix(id).map(ShellCommand::Unshare),
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

/// Fewest characters of an id that `unshare` takes.
pub const MIN_ID_PREFIX: usize = 4;

/// A file id or its first characters: 4 to 64 hex characters, returned in lower case.
fn parse_id_prefix(text: &str) -> Result<String, String> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "not a file id: {c:?} is not a hex character (give the id, or its first characters)"
        ));
    }
    if text.len() < MIN_ID_PREFIX {
        return Err(format!(
            "give at least {MIN_ID_PREFIX} characters of the file id, not {}",
            text.len()
        ));
    }
    if text.len() > 64 {
        return Err(format!(
            "not a file id: expected at most 64 hex characters, got {}",
            text.len()
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// The one file among `shared` (id and name) whose id starts with `prefix`; the error says
/// why there is none or which ones it could be.
pub fn resolve_shared<'a>(
    prefix: &str,
    shared: impl IntoIterator<Item = (FileId, &'a str)>,
) -> Result<(FileId, &'a str), String> {
    let mut matches: Vec<(FileId, &str)> = shared
        .into_iter()
        .filter(|(id, _)| id.to_string().starts_with(prefix))
        .collect();
    matches.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    match matches.as_slice() {
        [] => Err(format!(
            "this peer shares no file whose id starts with {prefix} (share prints a file's id)"
        )),
        [one] => Ok(*one),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|(id, name)| {
                    let id = id.to_string();
                    format!("{name} {}", &id[..(prefix.len() + 4).min(id.len())])
                })
                .collect();
            Err(format!(
                "{prefix} starts the ids of {} shared files ({}); give more of the id",
                many.len(),
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse("  share  /tmp/a b.txt "),
            Ok(ShellCommand::Share {
                path: "/tmp/a b.txt".into(),
                public: false
            })
        );
        assert_eq!(
            parse("share --public  /tmp/a b.txt"),
            Ok(ShellCommand::Share {
                path: "/tmp/a b.txt".into(),
                public: true
            })
        );
        assert!(parse("share --public").unwrap_err().starts_with("usage"));
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
            "not a file id or share link: expected 64 hex characters, got 4 (a share link starts with p2p1)"
        );
        let link = p2p_proto::link::ShareLink {
            id: FileId([3; 32]),
            trackers: vec!["https://t.example".into()],
            relays: vec![],
            peers: vec![],
            grant: None,
        };
        assert_eq!(
            parse(&format!("download {link}")),
            Ok(ShellCommand::Download(Target::Link(Box::new(link.clone()))))
        );
        let cut = link.to_string();
        assert!(
            parse(&format!("get {}", &cut[..cut.len() - 3]))
                .unwrap_err()
                .contains("damaged")
        );
        assert_eq!(parse("link 0f1e"), Ok(ShellCommand::Link("0f1e".into())));
        assert!(parse("link").unwrap_err().starts_with("usage: link"));
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

    #[test]
    fn unshare_takes_an_id_or_its_start() {
        let hash = "AB".repeat(32);
        assert_eq!(
            parse(&format!("unshare {hash}")),
            Ok(ShellCommand::Unshare(hash.to_ascii_lowercase()))
        );
        assert_eq!(
            parse("unshare 0f1e"),
            Ok(ShellCommand::Unshare("0f1e".into()))
        );
        assert!(parse("unshare").unwrap_err().starts_with("usage: unshare"));
        assert_eq!(
            parse("unshare 0f1").unwrap_err(),
            "give at least 4 characters of the file id, not 3"
        );
        assert!(
            parse("unshare notes.txt")
                .unwrap_err()
                .contains("'n' is not a hex character")
        );
        assert!(
            parse(&format!("unshare {hash}00"))
                .unwrap_err()
                .contains("at most 64")
        );
        assert!(HELP.contains("unshare <id>"));
    }

    #[test]
    fn unshare_finds_the_one_file_an_id_start_names() {
        let id = |s: &str| -> FileId { s.repeat(32).parse().unwrap() };
        let (a, b, c) = (id("0a"), id("0b"), id("c0"));
        let shared = [(a, "a.txt"), (b, "b.bin"), (c, "c.iso")];
        assert_eq!(resolve_shared("c0c0", shared), Ok((c, "c.iso")));
        assert_eq!(resolve_shared(&a.to_string(), shared), Ok((a, "a.txt")));
        let none = resolve_shared("ffff", shared).unwrap_err();
        assert!(none.contains("no file whose id starts with ffff"), "{none}");
        // Two ids start with 0: both are named so the user can pick.
        let ids = [(id("0a"), "a.txt"), (id("0b"), "b.bin")];
        let many = resolve_shared("0", ids).unwrap_err();
        assert_eq!(
            many,
            "0 starts the ids of 2 shared files (a.txt 0a0a0, b.bin 0b0b0); give more of the id"
        );
    }
}
