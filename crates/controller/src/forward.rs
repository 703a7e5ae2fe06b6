//! What the API asks of the jobs' runtime, as values: answered by the local runtime when
//! this controller leads, or forwarded over NATS (`<prefix>.ctl.api`) to the one that does.

use crate::runtime::{Input, NodeSteps, Refusal, Submitted};
use drover_core::api::{JobList, JobView, OperatorReply};
use drover_core::engine::{Event, JobStatus};
use drover_core::parse::Format;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A question for the runtime.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Ask {
    Submit { text: String, format: Format, dry_run: bool },
    Operator { job: String, event: Event },
    Get { job: String },
    List { status: Option<JobStatus>, limit: usize, after: Option<String> },
    NodeSteps { job: String, node: String },
    Busy,
}

/// The runtime's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", content = "body", rename_all = "snake_case")]
pub enum Answer {
    Submitted(Result<Submitted, Refusal>),
    Operated(Result<OperatorReply, Refusal>),
    View(Option<Box<JobView>>),
    List(JobList),
    /// `None`: the job is not in memory; `Some(None)`: it is, without that node.
    NodeSteps(Option<Option<NodeSteps>>),
    Busy(BTreeMap<String, String>),
    /// The question could not be asked (unreadable, or the leader is stopping).
    Refused(Refusal),
}

/// The local runtime's input channel while this controller leads.
#[derive(Clone, Default)]
pub struct Link(Arc<RwLock<Option<mpsc::Sender<Input>>>>);

impl Link {
    pub fn get(&self) -> Option<mpsc::Sender<Input>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, tx: Option<mpsc::Sender<Input>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = tx;
    }
}

/// The runtime ended without answering: it stopped leading (or shut down) in the middle.
fn stopping() -> Refusal {
    Refusal::Unavailable(
        "the controller stopped leading before it could answer; what was asked may or may not have been done: check \
         before retrying"
            .into(),
    )
}

/// Ask the local runtime and wait for its answer (after the round's commit), at most
/// [`LOCAL_TIMEOUT`].
pub async fn local(tx: &mpsc::Sender<Input>, ask: Ask) -> Answer {
    local_within(tx, ask, LOCAL_TIMEOUT).await
}

/// How long a question waits for the local runtime: its round waits for the journal and,
/// when the lease is due for renewal, for the renewal. Under [`FORWARD_TIMEOUT`], so that
/// a forwarded question is answered before its asker gives up.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(12);

async fn local_within(tx: &mpsc::Sender<Input>, ask: Ask, within: Duration) -> Answer {
    match tokio::time::timeout(within, ask_runtime(tx, ask)).await {
        Ok(answer) => answer,
        Err(_) => Answer::Refused(Refusal::Unavailable(format!(
            "the controller's runtime did not answer within {}s (journal writes stalled, or the lease waiting              for its renewal); what was asked may or may not have been done: check before retrying",
            within.as_secs_f64()
        ))),
    }
}

async fn ask_runtime(tx: &mpsc::Sender<Input>, ask: Ask) -> Answer {
    async fn call<T>(tx: &mpsc::Sender<Input>, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }
    let answer = match ask {
        Ask::Submit { text, format, dry_run } => {
            call(tx, |reply| Input::Submit { text, format, dry_run, reply }).await.map(Answer::Submitted)
        }
        Ask::Operator { job, event } => {
            call(tx, |reply| Input::Operator { job, event, reply }).await.map(Answer::Operated)
        }
        Ask::Get { job } => call(tx, |reply| Input::Get { job, reply }).await.map(|v| Answer::View(v.map(Box::new))),
        Ask::List { status, limit, after } => {
            call(tx, |reply| Input::List { status, limit, after, reply }).await.map(Answer::List)
        }
        Ask::NodeSteps { job, node } => {
            call(tx, |reply| Input::NodeSteps { job, node, reply }).await.map(Answer::NodeSteps)
        }
        Ask::Busy => call(tx, |reply| Input::Busy { reply }).await.map(Answer::Busy),
    };
    answer.unwrap_or_else(|| Answer::Refused(stopping()))
}

/// How long a forwarded question waits for the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// Ask the leading controller over NATS.
pub async fn remote(client: &async_nats::Client, names: &drover_core::wire::Names, ask: &Ask) -> Answer {
    match drover_bus::request_json::<_, Answer>(client, names.ctl_api(), ask, FORWARD_TIMEOUT).await {
        Ok(a) => a,
        Err(e) if e.is_no_responders() => Answer::Refused(Refusal::Unavailable(
            "no controller leads right now: a takeover waits for the last leader's lease to expire".into(),
        )),
        // A submission or an operator command may still have been carried out.
        Err(e) => Answer::Refused(Refusal::Unavailable(format!(
            "the leading controller did not answer ({e}); what was asked may or may not have been done: check \
             before retrying"
        ))),
    }
}

/// Answer forwarded questions from the local runtime while the term lasts (run by the
/// leader only, on its queue-group subscription to `<prefix>.ctl.api`, so a question is
/// answered once even while a deposed leader has not unsubscribed yet). A subscription
/// that ends ends the term: a leader nobody can reach must not go on leading.
pub async fn serve(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<Input>,
    term: crate::lease::Term,
) {
    loop {
        let msg = tokio::select! {
            _ = term.lost().cancelled() => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => {
                    tracing::error!("the subscription for forwarded API calls ended; giving the lead up");
                    term.lose();
                    break;
                }
            },
        };
        let Some(reply_to) = msg.reply.clone() else { continue };
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<Ask>(&msg.payload) {
                Ok(ask) => local(&tx, ask).await,
                Err(e) => {
                    Answer::Refused(Refusal::Invalid("unreadable forwarded API call".into(), vec![e.to_string()]))
                }
            };
            let bytes = serde_json::to_vec(&answer).unwrap_or_default();
            let bytes = if bytes.len() > drover_bus::payload_limit(&client, 1024) {
                // Too large for one message (a listing or a job of thousands of nodes).
                let too_big = Answer::Refused(Refusal::Unavailable(format!(
                    "the answer ({} bytes) is too large to forward; ask the leading controller directly",
                    bytes.len()
                )));
                serde_json::to_vec(&too_big).unwrap_or_default()
            } else {
                bytes
            };
            if let Err(e) = client.publish(reply_to, bytes.into()).await {
                tracing::warn!("answering a forwarded API call: {e}");
            }
        });
    }
    let _ = sub.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runtime_that_does_not_answer_is_reported_not_waited_for() {
        let (tx, mut rx) = mpsc::channel(4);
        // The runtime takes the question and never answers (a stalled commit).
        let held = tokio::spawn(async move {
            let input = rx.recv().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(input);
        });
        let ask = Ask::Get { job: "j".into() };
        match local_within(&tx, ask, Duration::from_millis(50)).await {
            Answer::Refused(Refusal::Unavailable(why)) => {
                assert!(why.contains("did not answer within 0.05s"), "{why}");
                assert!(why.contains("may or may not have been done"), "{why}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        held.abort();
    }

    #[test]
    fn questions_and_answers_cross_the_wire_intact() {
        let asks = [
            Ask::Submit { text: "name: x".into(), format: Format::Yaml, dry_run: true },
            Ask::Operator { job: "j".into(), event: Event::Pause },
            Ask::List { status: Some(JobStatus::Running), limit: 5, after: None },
            Ask::Busy,
        ];
        for a in asks {
            let back: Ask = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
            assert_eq!(format!("{a:?}"), format!("{back:?}"));
        }
        let answers = [
            Answer::Operated(Err(Refusal::Conflict("cannot pause".into()))),
            Answer::View(None),
            Answer::Busy(BTreeMap::from([("n1".into(), "j".into())])),
            Answer::Refused(Refusal::Invalid("bad".into(), vec!["steps: empty".into()])),
        ];
        for a in answers {
            let back: Answer = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
            assert_eq!(format!("{a:?}"), format!("{back:?}"));
        }
    }
}
