//! The p2p tracker's dashboard: a Leptos client-side app compiled to WASM and served by the
//! tracker at `/dashboard/`.
//!
//! Modules:
//! - [`logic`]: formatting, the session, the event log, sorting, chart series (tested natively).
//! - [`api`]: calls to the tracker's REST API.
//! - [`app`]: the components: login, overview, peers, files, file detail, event log.

pub mod api;
pub mod app;
pub mod logic;

pub use app::App;

/// Entry point when loaded in the browser.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
