//! `pmtr relay …` and `pmtr trigger …`: ask the running daemon over its control socket and show
//! the answer.

use crate::control::{client, Request, Response};
use crate::status::table::{relay_table, trigger_table};
use std::path::Path;

/// What to show of a status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Relays,
    Triggers,
}

/// Asks for the status and prints the relays or the triggers, as a table or as JSON. Err holds
/// the message for stderr.
pub async fn list(socket: &Path, what: List, json: bool) -> Result<(), String> {
    match ask(socket, &Request::Status).await? {
        Response::Status { triggers, relays, .. } => {
            let text = match (what, json) {
                (List::Relays, true) => to_json(&relays)?,
                (List::Triggers, true) => to_json(&triggers)?,
                (List::Relays, false) => relay_table(&relays, &chrono::Local),
                (List::Triggers, false) => trigger_table(&triggers, &chrono::Local),
            };
            print!("{text}");
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

/// Sends a force, release or reset and prints what the daemon did.
pub async fn act(socket: &Path, request: &Request) -> Result<(), String> {
    match ask(socket, request).await? {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

async fn ask(socket: &Path, request: &Request) -> Result<Response, String> {
    match client::request(socket, request).await {
        Ok(Response::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn unexpected(r: &Response) -> String {
    format!("the daemon answered something unexpected: {}", serde_json::to_string(r).unwrap_or_default())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
}
