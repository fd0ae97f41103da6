//! The shell's input: on a terminal a line editor (rustyline: editing, history kept in
//! `<data>/.p2p/shell-history`, log lines printed above the prompt); otherwise plain lines from
//! stdin, with no prompt, so piped input and output stay clean.

use std::io::IsTerminal;
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::logging::{self, PromptPrinter};

const PROMPT: &str = "p2p> ";
const HISTORY_LINES: usize = 1000;

/// Where the shell's lines come from.
pub enum Input {
    Editor(mpsc::Sender<oneshot::Sender<Option<String>>>),
    Plain(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>),
}

impl Input {
    /// The line editor when stdin and stdout are a terminal, plain lines otherwise.
    pub fn start(history: PathBuf) -> Self {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            let config = rustyline::Config::builder().max_history_size(HISTORY_LINES);
            match config.and_then(|c| rustyline::DefaultEditor::with_config(c.build())) {
                Ok(editor) => return Self::Editor(spawn_editor(editor, history)),
                Err(e) => tracing::warn!(error = %e, "no line editor; reading plain lines"),
            }
        }
        Self::Plain(tokio::io::BufReader::new(tokio::io::stdin()).lines())
    }

    /// The next line; `None` at the end of input (Ctrl-D, or Ctrl-C at the prompt).
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        match self {
            Self::Plain(lines) => lines.next_line().await,
            Self::Editor(ask) => {
                let (reply, line) = oneshot::channel();
                if ask.send(reply).await.is_err() {
                    return Ok(None);
                }
                Ok(line.await.unwrap_or(None))
            }
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Self::Editor(_) = self {
            logging::clear_prompt();
        }
    }
}

struct Printer<P>(P);

impl<P: rustyline::ExternalPrinter + Send> PromptPrinter for Printer<P> {
    fn print(&mut self, text: String) -> Result<(), String> {
        self.0.print(text).map_err(|e| e.to_string())
    }
}

/// Runs the editor on its own thread (reading a terminal blocks): it shows the prompt only
/// when asked for a line, so command output is never interleaved with it.
fn spawn_editor(
    mut editor: rustyline::DefaultEditor,
    history: PathBuf,
) -> mpsc::Sender<oneshot::Sender<Option<String>>> {
    if history.exists()
        && let Err(e) = editor.load_history(&history)
    {
        tracing::warn!(file = %history.display(), error = %e, "cannot read the shell history");
    }
    match editor.create_external_printer() {
        Ok(printer) => logging::route_to_prompt(Box::new(Printer(printer))),
        Err(e) => tracing::debug!(error = %e, "log lines go to stderr"),
    }
    let (ask, mut asks) = mpsc::channel::<oneshot::Sender<Option<String>>>(1);
    std::thread::spawn(move || {
        while let Some(reply) = asks.blocking_recv() {
            let line = match editor.readline(PROMPT) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        if let Err(e) = editor.save_history(&history) {
                            tracing::debug!(error = %e, "cannot save the shell history");
                        }
                    }
                    Some(line)
                }
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the terminal");
                    None
                }
            };
            let end = line.is_none();
            let _ = reply.send(line);
            if end {
                break;
            }
        }
    });
    ask
}
