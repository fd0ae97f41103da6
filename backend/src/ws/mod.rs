//! WebSocket endpoints: the live event feed (`/ws`).

mod events;

pub use events::EventsApi;
