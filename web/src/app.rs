//! The dashboard's components.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use gloo_net::websocket::Message;
use gloo_net::websocket::futures::WebSocket;
use leptos::prelude::*;
use leptos::task::spawn_local;
use p2p_proto::api::{
    ApiKeyInfo, CreateUserRequest, CreatedApiKey, EventMessage, FileDetails, FilePeer, FileSummary,
    PeerInfo, Stats, UserInfo, role,
};
use p2p_proto::link::{ReadGrant, ShareLink};

use crate::api::{self, ApiError};
use crate::logic::{
    EventLog, FileSort, Series, Session, filter_and_sort, format_ago, format_bytes,
    format_connections, short_id, ws_url,
};

const SESSION_KEY: &str = "p2p-session";
/// How often the data is fetched again while the live feed is down.
const FALLBACK_REFRESH_MS: u64 = 5_000;
/// How often the chart takes a sample.
const SAMPLE_MS: u64 = 5_000;

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

fn load_session() -> Option<Session> {
    let raw = storage()?.get_item(SESSION_KEY).ok()??;
    let session: Session = serde_json::from_str(&raw).ok()?;
    (!session.is_expired(now_ms())).then_some(session)
}

fn save_session(session: Option<&Session>) {
    let Some(store) = storage() else { return };
    let _ = match session.and_then(|s| serde_json::to_string(s).ok()) {
        Some(json) => store.set_item(SESSION_KEY, &json),
        None => store.remove_item(SESSION_KEY),
    };
}

fn origin() -> String {
    web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default()
}

/// Logged in or not; `notice` explains why the login page is shown again.
#[derive(Clone, Copy)]
struct Auth {
    session: RwSignal<Option<Session>>,
    notice: RwSignal<Option<String>>,
}

impl Auth {
    fn logout(&self, notice: Option<String>) {
        save_session(None);
        self.notice.set(notice);
        self.session.set(None);
    }

    fn token(&self) -> Option<String> {
        self.session
            .with_untracked(|s| s.as_ref().map(|s| s.token.clone()))
    }

    /// Whether to offer management (reactive); the tracker refuses others with 403 anyway.
    fn is_admin(&self) -> bool {
        self.session
            .with(|s| s.as_ref().is_some_and(Session::is_admin))
    }
}

const EXPIRED: &str = "Your session has expired. Please sign in again.";

/// Sends a change to the tracker; its refusal is shown in `error`, and `then` runs on success.
fn change<Fut>(
    auth: Auth,
    error: RwSignal<Option<String>>,
    call: impl FnOnce(String) -> Fut + 'static,
    then: impl FnOnce() + 'static,
) where
    Fut: Future<Output = Result<(), ApiError>> + 'static,
{
    let Some(token) = auth.token() else { return };
    spawn_local(async move {
        match call(token).await {
            Ok(()) => {
                let _ = error.try_set(None);
                then();
            }
            Err(ApiError::Unauthorized(_)) => auth.logout(Some(EXPIRED.into())),
            Err(ApiError::Other(m)) => {
                let _ = error.try_set(Some(m));
            }
        }
    });
}

/// Asks the user to confirm a change that cannot be undone.
fn confirmed(question: &str) -> bool {
    web_sys::window().is_some_and(|w| w.confirm_with_message(question).unwrap_or(false))
}

#[component]
pub fn App() -> impl IntoView {
    let auth = Auth {
        session: RwSignal::new(load_session()),
        notice: RwSignal::new(None),
    };
    view! {
        <Show
            when=move || auth.session.with(Option::is_some)
            fallback=move || view! { <Login auth=auth /> }
        >
            <Dashboard auth=auth />
        </Show>
    }
}

#[component]
fn Login(auth: Auth) -> impl IntoView {
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (user, pass) = (username.get_untracked(), password.get_untracked());
        busy.set(true);
        error.set(None);
        spawn_local(async move {
            match api::login(&user, &pass).await {
                Ok(resp) => {
                    let session = Session::from_login(&resp);
                    save_session(Some(&session));
                    auth.notice.set(None);
                    auth.session.set(Some(session));
                }
                Err(e) => {
                    let _ = error.try_set(Some(e.to_string()));
                    let _ = busy.try_set(false);
                }
            }
        });
    };
    view! {
        <main class="login">
            <form class="card login-card" on:submit=submit aria-labelledby="login-title">
                <h1 id="login-title">"p2p tracker"</h1>
                <p class="muted">"Sign in to watch the swarm."</p>
                {move || auth.notice.get().map(|n| view! { <p class="notice" role="status">{n}</p> })}
                <label for="username">"Username"</label>
                <input
                    id="username"
                    name="username"
                    autocomplete="username"
                    required
                    prop:value=move || username.get()
                    on:input=move |ev| username.set(event_target_value(&ev))
                />
                <label for="password">"Password"</label>
                <input
                    id="password"
                    name="password"
                    type="password"
                    autocomplete="current-password"
                    required
                    prop:value=move || password.get()
                    on:input=move |ev| password.set(event_target_value(&ev))
                />
                {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                <button type="submit" disabled=move || busy.get()>
                    {move || if busy.get() { "Signing in…" } else { "Sign in" }}
                </button>
            </form>
        </main>
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tab {
    Overview,
    Peers,
    Files,
    Events,
    /// Keys and users; admins only.
    Manage,
}

/// Everything the dashboard shows, shared by its pages.
#[derive(Clone, Copy)]
struct Data {
    stats: RwSignal<Option<Stats>>,
    peers: RwSignal<Vec<PeerInfo>>,
    files: RwSignal<Vec<FileSummary>>,
    log: RwSignal<EventLog>,
    series: RwSignal<Series>,
    live: RwSignal<bool>,
    error: RwSignal<Option<String>>,
    updated_ms: RwSignal<u64>,
}

/// Fetches stats, peers and files; a refused session sends the user back to login.
async fn refresh(auth: Auth, data: Data) {
    let Some(token) = auth.token() else { return };
    let result = async {
        let stats = api::stats(&token).await?;
        let peers = api::peers(&token).await?;
        let files = api::files(&token).await?;
        Ok::<_, ApiError>((stats, peers, files))
    }
    .await;
    match result {
        Ok((stats, peers, files)) => {
            let _ = data.stats.try_set(Some(stats));
            let _ = data.peers.try_set(peers.peers);
            let _ = data.files.try_set(files.files);
            let _ = data.error.try_set(None);
            let _ = data.updated_ms.try_set(now_ms());
        }
        Err(ApiError::Unauthorized(_)) => auth.logout(Some(
            "Your session has expired. Please sign in again.".into(),
        )),
        Err(ApiError::Other(m)) => {
            let _ = data.error.try_set(Some(m));
        }
    }
}

#[component]
fn Dashboard(auth: Auth) -> impl IntoView {
    let data = Data {
        stats: RwSignal::new(None),
        peers: RwSignal::new(Vec::new()),
        files: RwSignal::new(Vec::new()),
        log: RwSignal::new(EventLog::new(200)),
        series: RwSignal::new(Series::new(15 * 60 * 1000)),
        live: RwSignal::new(false),
        error: RwSignal::new(None),
        updated_ms: RwSignal::new(0),
    };
    let tab = RwSignal::new(Tab::Overview);
    let selected = RwSignal::new(None::<String>);
    let alive = Arc::new(AtomicBool::new(true));
    let dirty = Arc::new(AtomicBool::new(true));
    let events_since_sample = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let alive = alive.clone();
        on_cleanup(move || alive.store(false, Ordering::Relaxed));
    }

    // The live feed: every event is logged and marks the data stale. Reconnects by itself.
    {
        let (alive, dirty, events) = (alive.clone(), dirty.clone(), events_since_sample.clone());
        spawn_local(async move {
            // Open the feed only once the REST API has accepted the token, so a stale session
            // goes back to login without a refused WebSocket handshake first.
            while alive.load(Ordering::Relaxed) && data.updated_ms.try_get_untracked() == Some(0) {
                gloo_timers::future::sleep(Duration::from_millis(100)).await;
            }
            let mut backoff_ms = 500;
            while alive.load(Ordering::Relaxed) {
                let Some(token) = auth.token() else { break };
                if let Ok(ws) = WebSocket::open(&ws_url(&origin(), &token)) {
                    let (_sink, mut stream) = ws.split();
                    while let Some(Ok(msg)) = stream.next().await {
                        if !alive.load(Ordering::Relaxed) {
                            return;
                        }
                        backoff_ms = 500;
                        let _ = data.live.try_set(true);
                        let text = match msg {
                            Message::Text(t) => t,
                            Message::Bytes(_) => continue,
                        };
                        if let Ok(event) = serde_json::from_str::<EventMessage>(&text) {
                            let _ = data.log.try_update(|log| log.push(&event));
                            events.fetch_add(1, Ordering::Relaxed);
                            dirty.store(true, Ordering::Relaxed);
                        }
                    }
                }
                let _ = data.live.try_set(false);
                if !alive.load(Ordering::Relaxed) {
                    break;
                }
                gloo_timers::future::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(10_000);
            }
        });
    }

    // The refresher: after events (batched every 250 ms), every 5 s while the feed is down,
    // and every 30 s regardless; samples the chart and watches the session's expiry.
    {
        let alive = alive.clone();
        spawn_local(async move {
            let (mut last_refresh, mut last_sample) = (0u64, 0u64);
            while alive.load(Ordering::Relaxed) {
                let now = now_ms();
                if auth
                    .session
                    .with_untracked(|s| s.as_ref().is_none_or(|s| s.is_expired(now)))
                {
                    auth.logout(Some(
                        "Your session has expired. Please sign in again.".into(),
                    ));
                    break;
                }
                let live = data.live.try_get_untracked().unwrap_or(false);
                let stale = if live { 30_000 } else { FALLBACK_REFRESH_MS };
                if dirty.swap(false, Ordering::Relaxed) || now.saturating_sub(last_refresh) >= stale
                {
                    refresh(auth, data).await;
                    last_refresh = now;
                }
                let have_stats = data
                    .stats
                    .try_with_untracked(Option::is_some)
                    .unwrap_or(false);
                if have_stats && now.saturating_sub(last_sample) >= SAMPLE_MS {
                    let online = data
                        .stats
                        .try_with_untracked(|s| s.as_ref().map_or(0, |s| s.peers_online))
                        .unwrap_or(0);
                    let events = events_since_sample.swap(0, Ordering::Relaxed);
                    let _ = data.series.try_update(|s| s.sample(now, online, events));
                    last_sample = now;
                }
                gloo_timers::future::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    let user = move || {
        auth.session
            .with(|s| s.as_ref().map(|s| s.subject.clone()).unwrap_or_default())
    };
    let tab_button = move |t: Tab, label: &'static str| {
        view! {
            <button
                class="tab"
                class:active=move || tab.get() == t
                aria-current=move || if tab.get() == t { "page" } else { "false" }
                on:click=move |_| {
                    tab.set(t);
                    selected.set(None);
                }
            >
                {label}
            </button>
        }
    };
    view! {
        <header class="topbar">
            <div class="brand">
                <span class="logo" aria-hidden="true">"◆"</span>
                " p2p tracker"
            </div>
            <div class="status" role="status" data-testid="live-status">
                {move || if data.live.get() {
                    view! { <span class="dot live"></span>" live" }.into_any()
                } else {
                    view! { <span class="dot"></span>" reconnecting, refreshing every 5 s" }.into_any()
                }}
            </div>
            <div class="user">
                <span class="muted">{user}</span>
                <button class="secondary" on:click=move |_| auth.logout(None)>"Log out"</button>
            </div>
        </header>
        <nav class="tabs" aria-label="Sections">
            {tab_button(Tab::Overview, "Overview")}
            {tab_button(Tab::Peers, "Peers")}
            {tab_button(Tab::Files, "Files")}
            {tab_button(Tab::Events, "Events")}
            {move || auth.is_admin().then(|| tab_button(Tab::Manage, "Manage"))}
        </nav>
        {move || data.error.get().map(|e| view! { <p class="error banner" role="alert">{e}</p> })}
        <main class="content">
            {move || match (tab.get(), selected.get()) {
                (_, Some(id)) => view! { <FileDetail auth=auth id=id selected=selected /> }.into_any(),
                (Tab::Overview, None) => view! { <Overview data=data /> }.into_any(),
                (Tab::Peers, None) => view! { <PeersTable auth=auth data=data /> }.into_any(),
                (Tab::Files, None) => view! { <FilesTable auth=auth data=data selected=selected /> }.into_any(),
                (Tab::Events, None) => view! { <EventList data=data limit=200 /> }.into_any(),
                (Tab::Manage, None) if auth.is_admin() => view! { <Manage auth=auth /> }.into_any(),
                (Tab::Manage, None) => view! { <Overview data=data /> }.into_any(),
            }}
        </main>
    }
}

#[component]
fn StatCard(label: &'static str, test_id: &'static str, value: Signal<String>) -> impl IntoView {
    view! {
        <section class="card stat" aria-label=label>
            <div class="stat-label">{label}</div>
            <div class="stat-value" data-testid=test_id>{move || value.get()}</div>
        </section>
    }
}

#[component]
fn Overview(data: Data) -> impl IntoView {
    let stat = move |f: fn(&Stats) -> String| {
        Signal::derive(move || {
            data.stats
                .with(|s| s.as_ref().map(f).unwrap_or_else(|| "…".into()))
        })
    };
    let transferred = Signal::derive(move || {
        data.peers.with(|peers| {
            let up: u64 = peers.iter().map(|p| p.uploaded).sum();
            let down: u64 = peers.iter().map(|p| p.downloaded).sum();
            format!("↑ {} ↓ {}", format_bytes(up), format_bytes(down))
        })
    });
    view! {
        <div class="grid">
            <StatCard label="Peers online" test_id="peers-online" value=stat(|s| s.peers_online.to_string()) />
            <StatCard label="Files shared" test_id="files-shared" value=stat(|s| s.files.to_string()) />
            <StatCard label="Total size" test_id="total-size" value=stat(|s| format_bytes(s.total_bytes)) />
            <StatCard label="Relay connections" test_id="relay-connections" value=stat(|s| s.relay_connections.to_string()) />
            <StatCard label="Transferred by peers" test_id="transferred" value=transferred />
        </div>
        <section class="card chart" aria-label="Peers online and events over the last 15 minutes">
            <h2>"Last 15 minutes"</h2>
            <svg viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-label="Chart of peers online and events">
                <g transform="translate(0 5)">
                    <polyline class="line-peers" points=move || data.series.with(|s| s.peers_polyline(600.0, 110.0)) />
                    <polyline class="line-events" points=move || data.series.with(|s| s.events_polyline(600.0, 110.0)) />
                </g>
            </svg>
            <div class="legend">
                <span><span class="key peers"></span>
                    {move || format!(" peers online (peak {})", data.series.with(Series::peak_peers))}</span>
                <span><span class="key events"></span>" events"</span>
            </div>
        </section>
        <section class="card">
            <h2>"Recent events"</h2>
            <EventList data=data limit=8 />
        </section>
    }
}

#[component]
fn EventList(data: Data, limit: usize) -> impl IntoView {
    view! {
        <ol class="events" aria-label="Live events, newest first" data-testid="event-log">
            {move || {
                let now = now_ms();
                data.log.with(|log| {
                    if log.is_empty() {
                        return view! { <li class="muted">"No events yet."</li> }.into_any();
                    }
                    log.lines()
                        .take(limit)
                        .map(|l| {
                            let kind = l.kind;
                            view! {
                                <li class=format!("event {kind}")>
                                    <span class="badge">{kind}</span>
                                    <span class="text">{l.text.clone()}</span>
                                    <time class="muted">{format_ago(now, l.ts_ms)}</time>
                                </li>
                            }
                        })
                        .collect_view()
                        .into_any()
                })
            }}
        </ol>
    }
}

#[component]
fn PeersTable(auth: Auth, data: Data) -> impl IntoView {
    let remove = move |id: String| {
        if !confirmed(&format!(
            "Remove peer {}? It registers again at its next heartbeat unless its API key is revoked.",
            short_id(&id)
        )) {
            return;
        }
        let gone = id.clone();
        change(
            auth,
            data.error,
            move |token| async move { api::remove_peer(&token, &id).await },
            move || {
                let _ = data
                    .peers
                    .try_update(|peers| peers.retain(|p| p.peer_id.to_string() != gone));
            },
        );
    };
    view! {
        <section class="card">
            <h2>{move || format!("Peers ({})", data.peers.with(Vec::len))}</h2>
            <div class="table-wrap">
                <table data-testid="peers-table">
                    <thead>
                        <tr>
                            <th scope="col">"Peer"</th>
                            <th scope="col">"Addresses"</th>
                            <th scope="col">"Status"</th>
                            <th scope="col">"Last heartbeat"</th>
                            <th scope="col">"Files"</th>
                            <th scope="col">"Reach"</th>
                            <th scope="col" title="How this peer last reached the peers it connected to">"Connections"</th>
                            {move || auth.is_admin().then(|| view! { <th scope="col"><span class="visually-hidden">"Actions"</span></th> })}
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || data.peers.get()
                            key=|p| (p.peer_id, p.last_seen_ms, p.online, p.files)
                            children=move |p: PeerInfo| {
                                let now = now_ms();
                                let id = p.peer_id.to_string();
                                let mut addrs: Vec<String> =
                                    p.addresses.iter().map(|a| format!("{a}:{}", p.port)).collect();
                                if !p.observed_ip.is_empty() && !p.addresses.contains(&p.observed_ip) {
                                    addrs.push(format!("{} (seen)", p.observed_ip));
                                }
                                view! {
                                    <tr>
                                        <td class="mono" title=id.clone()>{short_id(&id)}{p.name.map(|n| format!(" · {n}"))}</td>
                                        <td class="mono">{addrs.join(", ")}</td>
                                        <td>
                                            <span class=if p.online { "pill ok" } else { "pill off" }>
                                                {if p.online { "online" } else { "offline" }}
                                            </span>
                                        </td>
                                        <td>{format_ago(now, p.last_seen_ms)}</td>
                                        <td>{p.files}</td>
                                        <td>{if p.relay_only { "relay-only" } else { "reachable" }}</td>
                                        <td>{format_connections(&p.connections)}</td>
                                        {move || auth.is_admin().then(|| {
                                            let id = id.clone();
                                            view! {
                                                <td>
                                                    <button
                                                        class="danger"
                                                        aria-label=format!("Remove peer {}", short_id(&id))
                                                        on:click=move |_| remove(id.clone())
                                                    >
                                                        "Remove"
                                                    </button>
                                                </td>
                                            }
                                        })}
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </div>
        </section>
    }
}

fn copy_to_clipboard(text: &str) {
    if let Some(w) = web_sys::window() {
        let _ = w.navigator().clipboard().write_text(text);
    }
}

/// A share link made for a file: its name, and the link with what it carries, or why not.
#[derive(Clone)]
struct MadeLink {
    name: String,
    result: Result<(String, String), String>,
}

/// A share link for `id`: a read grant from the tracker (a day), this tracker's URL and the
/// file's peers (see `ShareLink::from_swarm`).
async fn make_link(token: &str, id: &str) -> Result<(String, String), ApiError> {
    let info = api::read_grant(token, id).await?;
    let grant = ReadGrant::from_hex(&info.grant)
        .map_err(|e| ApiError::Other(format!("unexpected grant from the tracker: {e}")))?;
    let peers = api::file_peers(token, id).await?;
    let link = ShareLink::from_swarm(info.file_id, &[origin()], &peers.peers, None, Some(&grant))
        .map_err(|e| ApiError::Other(format!("cannot make a link: {e}")))?;
    let peers = match link.peers.len() {
        1 => "1 peer".to_owned(),
        n => format!("{n} peers"),
    };
    let what = format!(
        "{peers}; anyone with this link may download the file for {} h, without an API key",
        info.expires_in_secs / 3600
    );
    Ok((link.to_string(), what))
}

/// The share link made last, with a copy button.
#[component]
fn LinkPanel(made: RwSignal<Option<MadeLink>>) -> impl IntoView {
    move || {
        made.get().map(|m| match m.result {
            Ok((link, what)) => {
                let copied = link.clone();
                view! {
                    <div class="share-link" role="status">
                        <label for="share-link">{format!("Share link for {}", m.name)}</label>
                        <input id="share-link" class="mono" data-testid="share-link" readonly prop:value=link />
                        <button class="copy" aria-label="Copy link" on:click=move |_| copy_to_clipboard(&copied)>"copy"</button>
                        <button class="secondary" aria-label="Close link" on:click=move |_| made.set(None)>"×"</button>
                        <p class="muted">{what}</p>
                    </div>
                }
                .into_any()
            }
            Err(e) => view! { <p class="error" role="alert">{format!("No link for {}: {e}", m.name)}</p> }.into_any(),
        })
    }
}

#[component]
fn FilesTable(auth: Auth, data: Data, selected: RwSignal<Option<String>>) -> impl IntoView {
    let made = RwSignal::new(None::<MadeLink>);
    let share = move |id: String, name: String| {
        let Some(token) = auth.token() else { return };
        spawn_local(async move {
            let result = make_link(&token, &id).await;
            if let Err(ApiError::Unauthorized(_)) = result {
                auth.logout(Some(EXPIRED.into()));
                return;
            }
            let _ = made.try_set(Some(MadeLink {
                name,
                result: result.map_err(|e| e.to_string()),
            }));
        });
    };
    let remove = move |id: String, name: String| {
        if !confirmed(&format!(
            "Remove {name} for everyone? Peers that still have it may announce it again."
        )) {
            return;
        }
        let gone = id.clone();
        change(
            auth,
            data.error,
            move |token| async move { api::remove_file(&token, &id).await },
            move || {
                let _ = data
                    .files
                    .try_update(|files| files.retain(|f| f.id.to_string() != gone));
            },
        );
    };
    let query = RwSignal::new(String::new());
    let sort = RwSignal::new((FileSort::Newest, true));
    let rows = move || {
        data.files.with(|f| {
            let (by, desc) = sort.get();
            filter_and_sort(f, &query.get(), by, desc)
        })
    };
    let header = move |label: &'static str, by: FileSort| {
        view! {
            <th scope="col">
                <button
                    class="sort"
                    on:click=move |_| sort.update(|s| *s = if s.0 == by { (by, !s.1) } else { (by, by != FileSort::Name) })
                    aria-label=format!("Sort by {label}")
                >
                    {label}
                    {move || {
                        let (b, d) = sort.get();
                        if b == by { if d { " ▼" } else { " ▲" } } else { "" }
                    }}
                </button>
            </th>
        }
    };
    view! {
        <section class="card">
            <div class="toolbar">
                <h2>
                    {move || {
                        let total = data.files.with(Vec::len);
                        let shown = rows().len();
                        if shown == total { format!("Files ({total})") } else { format!("Files ({shown} of {total})") }
                    }}
                </h2>
                <label class="visually-hidden" for="file-search">"Search files"</label>
                <input
                    id="file-search"
                    type="search"
                    placeholder="Search by name"
                    prop:value=move || query.get()
                    on:input=move |ev| query.set(event_target_value(&ev))
                />
            </div>
            <LinkPanel made=made />
            <div class="table-wrap">
                <table data-testid="files-table">
                    <thead>
                        <tr>
                            {header("Name", FileSort::Name)}
                            {header("Size", FileSort::Size)}
                            <th scope="col">"Id"</th>
                            {header("Seeders", FileSort::Seeders)}
                            {header("Chunks", FileSort::Chunks)}
                            <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=rows
                            key=|f| (f.id, f.seeders, f.leechers)
                            children=move |f: FileSummary| {
                                let id = f.id.to_string();
                                let (open_id, copy_id) = (id.clone(), id.clone());
                                view! {
                                    <tr>
                                        <td>
                                            <button class="link" on:click=move |_| selected.set(Some(open_id.clone()))>
                                                {f.name.clone()}
                                            </button>
                                        </td>
                                        <td>{format_bytes(f.size)}</td>
                                        <td class="mono">
                                            <span title=id.clone()>{short_id(&id)}</span>
                                            " "
                                            <button
                                                class="copy"
                                                aria-label=format!("Copy id of {}", f.name)
                                                on:click=move |_| copy_to_clipboard(&copy_id)
                                            >
                                                "copy"
                                            </button>
                                        </td>
                                        <td>{f.seeders}{(f.leechers > 0).then(|| format!(" (+{} partial)", f.leechers))}</td>
                                        <td>{f.chunk_count}</td>
                                        <td>
                                            {
                                                let (id, name) = (id.clone(), f.name.clone());
                                                view! {
                                                    <button
                                                        class="secondary"
                                                        aria-label=format!("Share link for {name}")
                                                        on:click=move |_| share(id.clone(), name.clone())
                                                    >
                                                        "Link"
                                                    </button>
                                                }
                                            }
                                            {move || auth.is_admin().then(|| {
                                                let (id, name) = (id.clone(), f.name.clone());
                                                view! {
                                                    " "
                                                    <button
                                                        class="danger"
                                                        aria-label=format!("Remove {name}")
                                                        on:click=move |_| remove(id.clone(), name.clone())
                                                    >
                                                        "Remove"
                                                    </button>
                                                }
                                            })}
                                        </td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </div>
        </section>
    }
}

#[component]
fn FileDetail(auth: Auth, id: String, selected: RwSignal<Option<String>>) -> impl IntoView {
    let details = RwSignal::new(None::<Result<(FileDetails, Vec<FilePeer>), String>>);
    {
        let id = id.clone();
        spawn_local(async move {
            let Some(token) = auth.token() else { return };
            let result = async {
                let file = api::file(&token, &id).await?;
                let peers = api::file_peers(&token, &id).await?;
                Ok::<_, ApiError>((file, peers.peers))
            }
            .await;
            match result {
                Err(ApiError::Unauthorized(_)) => auth.logout(Some(
                    "Your session has expired. Please sign in again.".into(),
                )),
                other => {
                    let _ = details.try_set(Some(other.map_err(|e| e.to_string())));
                }
            }
        });
    }
    view! {
        <section class="card">
            <button class="secondary back" on:click=move |_| selected.set(None)>"← All files"</button>
            {move || match details.get() {
                None => view! { <p class="muted">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
                Some(Ok((file, peers))) => {
                    let now = now_ms();
                    view! {
                        <h2>{file.manifest.name.clone()}</h2>
                        <dl class="facts">
                            <dt>"Id"</dt><dd class="mono">{file.manifest.id.to_string()}</dd>
                            <dt>"Size"</dt><dd>{format_bytes(file.manifest.size)}</dd>
                            <dt>"Chunks"</dt><dd>{format!("{} × {}", file.chunk_count, format_bytes(u64::from(file.manifest.chunk_size)))}</dd>
                            <dt>"Merkle root"</dt><dd class="mono">{file.manifest.merkle_root.to_string()}</dd>
                            <dt>"Swarm"</dt><dd>{format!("{} seeders, {} leechers", file.seeders, file.leechers)}</dd>
                        </dl>
                        <h3>"Peers with this file"</h3>
                        <div class="table-wrap">
                            <table>
                                <thead>
                                    <tr>
                                        <th scope="col">"Peer"</th>
                                        <th scope="col">"Reach at"</th>
                                        <th scope="col">"Has"</th>
                                        <th scope="col">"Last heartbeat"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {peers.into_iter().map(|p| {
                                        let has = if p.complete {
                                            "complete".to_owned()
                                        } else {
                                            format!("{} / {} chunks", p.chunks_have, file.chunk_count)
                                        };
                                        view! {
                                            <tr>
                                                <td class="mono">{short_id(&p.peer_id.to_string())}</td>
                                                <td class="mono">{p.addresses.iter().map(|a| format!("{a}:{}", p.port)).collect::<Vec<_>>().join(", ")}</td>
                                                <td>{has}</td>
                                                <td>{format_ago(now, p.last_seen_ms)}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any()
                }
            }}
        </section>
    }
}

/// Management, for admins: API keys (a new key is shown once, with a copy button) and users.
#[component]
fn Manage(auth: Auth) -> impl IntoView {
    let keys = RwSignal::new(Vec::<ApiKeyInfo>::new());
    let users = RwSignal::new(Vec::<UserInfo>::new());
    let error = RwSignal::new(None::<String>);
    let fresh_key = RwSignal::new(None::<CreatedApiKey>);
    let key_name = RwSignal::new(String::new());
    let (new_user, new_password, new_role) = (
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(role::VIEWER.to_owned()),
    );
    let me = auth
        .session
        .with_untracked(|s| s.as_ref().map(|s| s.subject.clone()).unwrap_or_default());
    let reload = move || {
        let Some(token) = auth.token() else { return };
        spawn_local(async move {
            let result = async {
                let k = api::keys(&token).await?;
                let u = api::users(&token).await?;
                Ok::<_, ApiError>((k.keys, u.users))
            }
            .await;
            match result {
                Ok((k, u)) => {
                    let _ = keys.try_set(k);
                    let _ = users.try_set(u);
                }
                Err(ApiError::Unauthorized(_)) => auth.logout(Some(EXPIRED.into())),
                Err(ApiError::Other(m)) => {
                    let _ = error.try_set(Some(m));
                }
            }
        });
    };
    reload();

    let create_key = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(token) = auth.token() else { return };
        let name = key_name.get_untracked();
        spawn_local(async move {
            match api::create_key(&token, &name).await {
                Ok(created) => {
                    let _ = fresh_key.try_set(Some(created));
                    let _ = key_name.try_set(String::new());
                    let _ = error.try_set(None);
                    reload();
                }
                Err(ApiError::Unauthorized(_)) => auth.logout(Some(EXPIRED.into())),
                Err(ApiError::Other(m)) => {
                    let _ = error.try_set(Some(m));
                }
            }
        });
    };
    let revoke = move |id: String, name: String| {
        if confirmed(&format!(
            "Revoke the API key {name}? Peers using it are refused from now on."
        )) {
            change(
                auth,
                error,
                move |token| async move { api::revoke_key(&token, &id).await },
                reload,
            );
        }
    };
    let create_user = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let req = CreateUserRequest {
            username: new_user.get_untracked(),
            password: new_password.get_untracked(),
            role: new_role.get_untracked(),
        };
        change(
            auth,
            error,
            move |token| async move { api::create_user(&token, &req).await.map(drop) },
            move || {
                let _ = new_user.try_set(String::new());
                let _ = new_password.try_set(String::new());
                reload();
            },
        );
    };
    let delete_user = move |name: String| {
        if confirmed(&format!("Delete the user {name}?")) {
            change(
                auth,
                error,
                move |token| async move { api::delete_user(&token, &name).await },
                reload,
            );
        }
    };

    view! {
        {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        <section class="card" aria-labelledby="keys-title">
            <h2 id="keys-title">"API keys"</h2>
            <p class="muted">"Peers sign in with an API key (p2p-peer --api-key)."</p>
            <form class="inline-form" on:submit=create_key>
                <label for="key-name">"Name of the new key"</label>
                <input
                    id="key-name"
                    required
                    maxlength="64"
                    placeholder="e.g. laptop"
                    prop:value=move || key_name.get()
                    on:input=move |ev| key_name.set(event_target_value(&ev))
                />
                <button type="submit">"Create key"</button>
            </form>
            {move || fresh_key.get().map(|k| {
                let copy = k.key.clone();
                view! {
                    <div class="new-key" role="status">
                        <p>"New key "<strong>{k.name.clone()}</strong>": copy it now, it is not shown again."</p>
                        <code class="mono" data-testid="new-key">{k.key.clone()}</code>
                        <div class="row">
                            <button on:click=move |_| copy_to_clipboard(&copy)>"Copy key"</button>
                            <button class="secondary" on:click=move |_| fresh_key.set(None)>"Done"</button>
                        </div>
                    </div>
                }
            })}
            <div class="table-wrap">
                <table data-testid="keys-table">
                    <thead>
                        <tr>
                            <th scope="col">"Name"</th>
                            <th scope="col">"Id"</th>
                            <th scope="col">"Created"</th>
                            <th scope="col">"Status"</th>
                            <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || keys.get()
                            key=|k| (k.id.clone(), k.revoked_at_ms)
                            children=move |k: ApiKeyInfo| {
                                let now = now_ms();
                                let (id, name) = (k.id.clone(), k.name.clone());
                                let live = k.revoked_at_ms.is_none();
                                view! {
                                    <tr>
                                        <td>{k.name.clone()}</td>
                                        <td class="mono">{k.id.clone()}</td>
                                        <td>{format_ago(now, k.created_at_ms)}</td>
                                        <td>
                                            {match k.revoked_at_ms {
                                                None => view! { <span class="pill ok">"active"</span> }.into_any(),
                                                Some(at) => view! { <span class="pill off">{format!("revoked {}", format_ago(now, at))}</span> }.into_any(),
                                            }}
                                        </td>
                                        <td>
                                            {live.then(|| view! {
                                                <button
                                                    class="danger"
                                                    aria-label=format!("Revoke key {name}")
                                                    on:click=move |_| revoke(id.clone(), name.clone())
                                                >
                                                    "Revoke"
                                                </button>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </div>
        </section>
        <section class="card" aria-labelledby="users-title">
            <h2 id="users-title">"Users"</h2>
            <p class="muted">"Admins manage; viewers see everything and change nothing."</p>
            <form class="inline-form" on:submit=create_user>
                <label for="new-user">"Username"</label>
                <input
                    id="new-user"
                    required
                    maxlength="64"
                    autocomplete="off"
                    prop:value=move || new_user.get()
                    on:input=move |ev| new_user.set(event_target_value(&ev))
                />
                <label for="new-password">"Password"</label>
                <input
                    id="new-password"
                    type="password"
                    required
                    minlength="8"
                    autocomplete="new-password"
                    prop:value=move || new_password.get()
                    on:input=move |ev| new_password.set(event_target_value(&ev))
                />
                <label for="new-role">"Role"</label>
                <select
                    id="new-role"
                    prop:value=move || new_role.get()
                    on:change=move |ev| new_role.set(event_target_value(&ev))
                >
                    <option value={role::VIEWER}>"viewer"</option>
                    <option value={role::ADMIN}>"admin"</option>
                </select>
                <button type="submit">"Create user"</button>
            </form>
            <div class="table-wrap">
                <table data-testid="users-table">
                    <thead>
                        <tr>
                            <th scope="col">"Username"</th>
                            <th scope="col">"Role"</th>
                            <th scope="col">"Created"</th>
                            <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                        </tr>
                    </thead>
                    <tbody>
                        <For
                            each=move || users.get()
                            key=|u| (u.username.clone(), u.role.clone())
                            children=move |u: UserInfo| {
                                let now = now_ms();
                                let name = u.username.clone();
                                let other = name != me;
                                view! {
                                    <tr>
                                        <td>{u.username.clone()}{(!other).then_some(" (you)")}</td>
                                        <td>{u.role.clone()}</td>
                                        <td>{format_ago(now, u.created_at_ms)}</td>
                                        <td>
                                            {other.then(|| view! {
                                                <button
                                                    class="danger"
                                                    aria-label=format!("Delete user {name}")
                                                    on:click=move |_| delete_user(name.clone())
                                                >
                                                    "Delete"
                                                </button>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </div>
        </section>
    }
}
