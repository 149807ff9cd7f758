//! `POST /v1/replays` (start, or count with `dry_run`), `GET /v1/replays`
//! and `GET /v1/replays/{id}` (progress read back from the jobs).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{error, journal_error, json};
use crate::journal::{Journal, ReplayId, ReplayProgress, ReplaySummary};
use crate::replay::{ReplayError, Replayer, Selection};
use crate::time::rfc3339;

/// How many replays `GET /v1/replays` lists, newest first.
const LIST_LIMIT: usize = 100;

pub fn start(replayer: &Replayer, body: &[u8], now_ms: u64) -> Response<Full<Bytes>> {
    let selection = match Selection::from_json(body, now_ms) {
        Ok(selection) => selection,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_selection", &message),
    };
    if selection.dry_run {
        return match replayer.dry_run(&selection) {
            Ok(count) => json(
                StatusCode::OK,
                &json!({
                    "id": null, "dry_run": true, "matched": count.matched,
                    "skipped_pending": count.skipped, "selection": selection.describe(),
                }),
            ),
            Err(err) => replay_error(&err),
        };
    }
    match replayer.start(&selection, now_ms) {
        Ok(started) => json(
            StatusCode::CREATED,
            &json!({
                "id": started.id.to_string(), "dry_run": false, "matched": started.matched,
                "skipped_pending": started.skipped, "selection": selection.describe(),
            }),
        ),
        Err(ReplayError::Journal(err)) => super::journal_failed_part_way(
            &err,
            "the journal failed: if the replay had begun, the jobs it requeued before the failure stay requeued, under the newest replay in GET /v1/replays",
        ),
        Err(err) => replay_error(&err),
    }
}

pub fn list(journal: &Journal) -> Response<Full<Bytes>> {
    match journal.replays(LIST_LIMIT) {
        Ok(replays) => {
            json(StatusCode::OK, &json!({ "replays": replays.iter().map(summary).collect::<Vec<_>>() }))
        }
        Err(err) => journal_error(&err),
    }
}

pub fn show(journal: &Journal, id: &str) -> Response<Full<Bytes>> {
    let Ok(id) = id.parse::<ReplayId>() else {
        return error(StatusCode::BAD_REQUEST, "bad_id", "not a replay id (rpl_ and 16 hex digits)");
    };
    match journal.replay_progress(id) {
        Ok(Some(progress)) => json(StatusCode::OK, &describe(&progress)),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_replay", "no replay with this id"),
        Err(err) => journal_error(&err),
    }
}

fn summary(replay: &ReplaySummary) -> Value {
    json!({
        "id": replay.id.to_string(),
        "created_at": rfc3339(replay.created_at_ms / 1000),
        "selection": replay.selection,
        "matched": replay.matched,
        "skipped_pending": replay.skipped,
    })
}

/// The progress document; `finished` once no pair is pending.
pub fn describe(progress: &ReplayProgress) -> Value {
    let mut value = summary(&progress.summary);
    value["pending"] = json!(progress.pending);
    value["done"] = json!(progress.done);
    value["failed"] = json!(progress.failed);
    value["superseded"] = json!(progress.superseded);
    value["finished"] = json!(progress.finished());
    value
}

fn replay_error(err: &ReplayError) -> Response<Full<Bytes>> {
    match err {
        ReplayError::BadRequest(message) => error(StatusCode::BAD_REQUEST, "bad_selection", message),
        ReplayError::UnknownDelivery(_) => error(StatusCode::NOT_FOUND, "unknown_delivery", &err.to_string()),
        ReplayError::Journal(err) => journal_error(err),
    }
}
