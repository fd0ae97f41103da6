//! Where log lines go: stderr, coloured only on a terminal and only without `NO_COLOR`; while
//! the shell waits at its prompt they are printed above the prompt line, and while a progress
//! bar is drawn, above the bar, so neither is written over.

use std::io::{IsTerminal, Write};

use indicatif::ProgressBar;
use parking_lot::Mutex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Something that prints whole lines above an interactive prompt (the shell's line editor).
pub trait PromptPrinter: Send {
    /// Prints `text` (whole lines) above the prompt; an error means it could not.
    fn print(&mut self, text: String) -> Result<(), String>;
}

#[derive(Default)]
struct Route {
    prompt: Option<Box<dyn PromptPrinter>>,
    bar: Option<ProgressBar>,
}

static ROUTE: Mutex<Route> = Mutex::new(Route {
    prompt: None,
    bar: None,
});

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs to stderr (or above the shell's prompt and progress bar), filtered by `RUST_LOG`
/// (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(Console)
        .try_init();
}

/// Routes log lines above `printer`'s prompt until [`clear_prompt`].
pub fn route_to_prompt(printer: Box<dyn PromptPrinter>) {
    ROUTE.lock().prompt = Some(printer);
}

/// Log lines go to stderr again.
pub fn clear_prompt() {
    ROUTE.lock().prompt = None;
}

/// Prints log lines above `bar` while the returned guard lives.
pub fn above_bar(bar: &ProgressBar) -> BarGuard {
    ROUTE.lock().bar = Some(bar.clone());
    BarGuard(())
}

/// Ends [`above_bar`] when dropped.
#[must_use = "log lines go above the bar only while the guard lives"]
pub struct BarGuard(());

impl Drop for BarGuard {
    fn drop(&mut self) {
        ROUTE.lock().bar = None;
    }
}

fn emit(line: &[u8]) {
    let mut route = ROUTE.lock();
    if let Some(bar) = route.bar.clone() {
        drop(route);
        bar.suspend(|| {
            let _ = std::io::stderr().write_all(line);
        });
        return;
    }
    if let Some(prompt) = route.prompt.as_mut() {
        if prompt
            .print(String::from_utf8_lossy(line).into_owned())
            .is_ok()
        {
            return;
        }
        // The printer is gone (the line editor ended): stderr from now on.
        route.prompt = None;
    }
    drop(route);
    let _ = std::io::stderr().write_all(line);
}

/// The log writer: gathers one event's text and hands it over whole when dropped.
struct Console;

/// One event's text.
struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for Console {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(160))
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            emit(&self.0);
        }
    }
}

/// An error and its causes on one line, each said once: "a: b: c". Many error types here put
/// their cause in their own message as well (so a log line carries it); a cause already said
/// is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
