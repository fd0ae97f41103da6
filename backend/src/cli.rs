//! The subcommands: `serve` (default), `user add|list|delete`, `key create|list|revoke`.

use std::io::BufRead;

use anyhow::{Context, bail};

use crate::app::{self, RuntimeOptions};
use crate::auth::{accounts, keys};
use crate::clock::{Clock, SystemClock};
use crate::config::{Cli, Command, KeyCommand, UserCommand};
use crate::store::{ApiKeyRecord, UserRecord};

/// Runs what the command line asks for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.db, &cli.serve).await,
        Command::User(cmd) => user(&cli.db, cmd).await,
        Command::Key(cmd) => key(&cli.db, cmd).await,
    }
}

async fn serve(db: &crate::config::DbArgs, serve: &crate::config::ServeArgs) -> anyhow::Result<()> {
    let store = app::open_store(db).await.context("opening the database")?;
    let tracker = app::start(store, serve, RuntimeOptions::default())
        .await
        .context("starting the tracker")?;
    tracing::info!(addr = %tracker.addr, "p2p-tracker listening; API docs at /api/docs");
    if serve.api_keys.is_empty() {
        tracing::info!("no API_KEYS given: create one with `p2p-tracker key create`");
    }
    let token = tracker.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    tracker.wait().await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("P2P_USER_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn user(db: &crate::config::DbArgs, cmd: UserCommand) -> anyhow::Result<()> {
    let store = app::open_store(db).await.context("opening the database")?;
    match cmd {
        UserCommand::Add { name, role } => {
            accounts::check_name("a user name", &name)?;
            let pass = read_password()?;
            accounts::check_password(&pass)?;
            let hash = accounts::hash_password(pass).await?;
            store
                .put_user(&UserRecord {
                    username: name.clone(),
                    password_hash: hash,
                    role,
                    created_at_ms: SystemClock.now_ms(),
                })
                .await?;
            println!("user {name} saved");
        }
        UserCommand::List => {
            for u in store.list_users().await? {
                println!("{}\t{}", u.username, u.role);
            }
        }
        UserCommand::Delete { name } => {
            if !store.delete_user(&name).await? {
                bail!("no user {name}");
            }
            println!("user {name} deleted");
        }
    }
    Ok(())
}

async fn key(db: &crate::config::DbArgs, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = app::open_store(db).await.context("opening the database")?;
    match cmd {
        KeyCommand::Create { name } => {
            let (key, id) = keys::generate()?;
            let record = ApiKeyRecord {
                id: id.clone(),
                name,
                created_at_ms: SystemClock.now_ms(),
                revoked_at_ms: None,
            };
            store
                .create_api_key(&record, &hex::encode(keys::digest(&key)))
                .await?;
            eprintln!("API key {id} created; it is shown only once:");
            println!("{key}");
        }
        KeyCommand::List => {
            for k in store.list_api_keys().await? {
                let state = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{}\t{}", k.id, k.name, state);
            }
        }
        KeyCommand::Revoke { id } => {
            if !store.revoke_api_key(&id, SystemClock.now_ms()).await? {
                bail!("no active API key {id}");
            }
            println!("API key {id} revoked");
        }
    }
    Ok(())
}
