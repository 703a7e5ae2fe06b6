//! Sending commands to agents: re-sent with the same id until acknowledged, or the node
//! is declared lost.

use crate::runtime::Input;
use drover_bus::{request_bytes, request_json};
use drover_core::wire::{Command, CommandId, Names, Reply, ReplyStatus, Request};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Deliver a command; report a refusal or a node that never acknowledged.
/// Stops (before its next send) once `stop` is cancelled: the term that sent it ended.
/// (A check, not a `select!` around the whole future: wrapping it in
/// `run_until_cancelled_owned` tripled its size, to 7.4 KB per command in flight.)
pub async fn send_command(
    client: async_nats::Client,
    names: Names,
    cmd: Command,
    tx: mpsc::Sender<Input>,
    (ack_timeout, ack_deadline): (Duration, Duration),
    stop: CancellationToken,
) {
    let subject = names.command(&cmd.id.node);
    let started = Instant::now();
    let id = cmd.id.clone();
    // Encoded once: every copy sent is the same bytes.
    let payload: bytes::Bytes = match serde_json::to_vec(&Request::Run(cmd)) {
        Ok(b) => b.into(),
        Err(e) => {
            let reason = format!("cannot encode the command: {e}");
            let _ = tx.send(Input::Rejected { job: id.job.clone(), id, reason }).await;
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match request_bytes::<Reply>(&client, subject.clone(), payload.clone(), ack_timeout).await {
            Ok(reply) => match reply.status {
                // The result came with the answer (a quick command, or one that had
                // finished before this copy of it arrived): apply it like a consumed one.
                ReplyStatus::Done | ReplyStatus::Duplicate if reply.result.is_some() => {
                    if let Some(result) = reply.result {
                        let _ = tx.send(Input::Result { result, msg: None }).await;
                    }
                    return;
                }
                ReplyStatus::Accepted | ReplyStatus::Duplicate => return,
                ReplyStatus::Rejected => {
                    let reason = reply.reason.unwrap_or_else(|| "no reason given".into());
                    let _ = tx.send(Input::Rejected { job: id.job.clone(), id, reason }).await;
                    return;
                }
                other => {
                    tracing::warn!(key = %id, "unexpected reply {other:?} to a command; re-sending");
                }
            },
            Err(e) => {
                if started.elapsed() >= ack_deadline {
                    let reason = format!("no ack for {} within {}s: {e}", id, ack_deadline.as_secs());
                    let _ = tx.send(Input::Lost { job: id.job.clone(), node: id.node.clone(), reason }).await;
                    return;
                }
                tracing::debug!(key = %id, "command not acknowledged yet: {e}");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Ask an agent to cancel a running command (a few tries; the engine's cancel grace
/// decides what happens when nobody answers).
/// An agent whose command had already finished answers with its recorded result, which is
/// applied like a consumed one (a restarted controller may never have seen it).
pub async fn send_cancel(
    client: async_nats::Client,
    names: Names,
    id: CommandId,
    (epoch, ack_timeout): (u64, Duration),
    tx: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let subject = names.command(&id.node);
    let request = Request::Cancel { id: id.clone(), epoch };
    for _ in 0..3 {
        if stop.is_cancelled() {
            return;
        }
        match request_json::<_, Reply>(&client, subject.clone(), &request, ack_timeout).await {
            Ok(r) => {
                tracing::debug!(key = %id, status = ?r.status, "cancel delivered");
                if let Some(result) = r.result.filter(|x| x.id == id) {
                    let _ = tx.send(Input::Result { result, msg: None }).await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(key = %id, "cancel not delivered yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
