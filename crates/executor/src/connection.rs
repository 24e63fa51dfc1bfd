//! The executor's side of the Work stream: dial the router, say Hello, take assignments, send
//! heartbeats and results; when the stream breaks, cancel the attempts still running (their
//! leases are lost: fencing, see [`fence`]) and reconnect with backoff (see [`backoff`]),
//! telling why once (see [`failure`]).

mod backoff;
pub mod failure;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ghost_core::Patch;
use ghost_proto::executor::v1::{
    Assign, Cancel, DryRun, DryRunResult, ExecutorMessage, Heartbeat, Hello, Progress,
    Result as WorkResult, RouterMessage, Workspace as WireWorkspace, executor_message,
    router_message,
};
use ghost_proto::router::v1::{PatchStatus, router_service_client::RouterServiceClient};
use ghost_runtime::peers::PEER_TIMEOUTS;
use ghost_runtime::propagation::{set_parent, traceparent_of};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::apply::{self, Context, Lease};
use crate::config::ExecutorConfig;
use crate::dry_run::{self, BUSY_WAIT, GIVE_UP, TargetLocks};
use crate::error::ExecutorError;
use crate::ledger::Outbox;

use backoff::Backoff;
use failure::{Failure, Reporter};

/// Heartbeat period until the router's Welcome says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// What one executor process needs to serve its workspaces.
#[derive(Clone)]
pub struct Worker {
    /// Router URL, id and token.
    pub config: Arc<ExecutorConfig>,
    /// Workspaces (with their limits and policies) by target.
    pub contexts: Arc<HashMap<String, Context>>,
    /// Results owed to the router from before a restart.
    pub outbox: Outbox,
    /// The health of the state dir (journal, ledger, outbox): while degraded no lease is
    /// taken (see [`crate::storage`]).
    pub storage: ghost_runtime::storage::StorageHealth,
    /// The targets whose workspace lock this executor holds (the ones it announces); the
    /// others it serves on standby (see [`crate::standby`]).
    pub active: Arc<tokio::sync::watch::Sender<std::collections::BTreeSet<String>>>,
    /// The workspace locks held.
    pub held: crate::standby::Held,
    /// The state dir of the config (the outbox; where older executors kept every target's state).
    pub old_state: std::path::PathBuf,
}

/// Cancel tokens of the running attempts, by fencing token.
type Running = Arc<Mutex<HashMap<u64, (String, CancellationToken)>>>;

/// Keeps a session with the router alive until `shutdown`: reconnects with exponential
/// backoff and full jitter, and logs each distinct cause of failure once.
pub async fn run(worker: Worker, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(
        worker.config.reconnect_backoff,
        worker.config.reconnect_backoff_max,
    );
    let mut reporter = Reporter::default();
    let targets: Vec<String> = {
        let mut targets: Vec<String> = worker.contexts.keys().cloned().collect();
        targets.sort();
        targets
    };
    // Whether an `http://` router's port turned out to speak TLS, once probed.
    let mut tls_port: Option<bool> = None;
    tokio::spawn(crate::standby::take_over(worker.clone(), shutdown.clone()));
    let mut active = worker.active.subscribe();
    loop {
        // On standby for every target: no session until a workspace lock is taken.
        if !crate::standby::wait_for_any(&mut active, &shutdown).await {
            return;
        }
        // A failing state dir takes no lease: no session until a probe write succeeds.
        if worker.storage.is_degraded()
            && !crate::storage::wait_until_healed(&worker, &shutdown).await
        {
            return;
        }
        let mut welcomed = false;
        let outcome = session(&worker, &shutdown, &mut welcomed).await;
        if welcomed {
            backoff.reset();
            reporter.clear();
            tls_port = None;
        }
        let err = match outcome {
            Ok(()) => return,
            // Handed back: reconnect as soon as the probe heals, not after a backoff.
            Err(ExecutorError::StorageDegraded | ExecutorError::TookOver) => continue,
            Err(err) => err,
        };
        let mut failure = failure::classify(&err, &targets);
        // Nothing answered: is it plaintext to a TLS port? Probed once per run of failures
        // (the probe opens a connection of its own), the verdict kept until a session works.
        if failure.maybe_plaintext() && !welcomed {
            let speaks_tls = match tls_port {
                Some(verdict) => verdict,
                None => {
                    let verdict = failure::url_speaks_tls(&worker.config.router_url).await;
                    tls_port = Some(verdict);
                    verdict
                }
            };
            if speaks_tls {
                failure = Failure::PlaintextToTls;
            }
        }
        if failure.is_final() {
            backoff.hold_at_max();
        }
        let wait = backoff.next_wait(backoff::random());
        reporter.report(&failure, wait);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn message(kind: executor_message::Kind) -> ExecutorMessage {
    ExecutorMessage { kind: Some(kind) }
}

/// The router endpoint: TLS for `https://` (the configured CA, else the web PKI roots), with
/// the shared peer bounds: a router that stops answering (stopped, black-holed) closes the
/// Work stream within [`PEER_TIMEOUTS`]' silent-peer bound, and the executor reconnects.
pub fn endpoint(config: &ExecutorConfig) -> Result<Endpoint, ExecutorError> {
    let endpoint = PEER_TIMEOUTS.apply(Endpoint::from_shared(config.router_url.clone())?);
    if !config.router_url.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = ClientTlsConfig::new().assume_http2(true);
    let tls = match &config.router_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|err| {
                ExecutorError::Router(format!("router CA {}: {err}", path.display()))
            })?;
            // A key, a DER file or an empty file would load as an empty trust store and every
            // connection would then fail as "unknown CA": say what is wrong with the file.
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ExecutorError::Router(format!(
                    "router CA {}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----, \
                     e.g. ca.pem, not ca-key.pem)",
                    path.display()
                )));
            }
            tls.ca_certificate(Certificate::from_pem(pem))
        }
        None => tls.with_webpki_roots(),
    };
    Ok(endpoint.tls_config(tls)?)
}

async fn session(
    worker: &Worker,
    shutdown: &CancellationToken,
    welcomed: &mut bool,
) -> Result<(), ExecutorError> {
    let channel = endpoint(&worker.config)?.connect().await?;
    let mut client = RouterServiceClient::new(channel);
    let (outbound, outbound_rx) = mpsc::channel::<ExecutorMessage>(32);
    let mut taken_over = worker.active.subscribe();
    let active = taken_over.borrow_and_update().clone();
    let _ = outbound
        .send(message(executor_message::Kind::Hello(hello(
            worker, &active,
        ))))
        .await;
    let mut inbound = open_work(&mut client, outbound_rx).await?;
    tracing::info!(router = %worker.config.router_url, "connected to the router");
    send_owed(worker, &outbound).await;

    let attempts = Attempts {
        held: Arc::new(Mutex::new(Vec::new())),
        running: Arc::new(Mutex::new(HashMap::new())),
        // An apply holds its target's lock; a dry run waits for it, never planning against a
        // half-written workspace.
        locks: TargetLocks::new(worker.contexts.keys()),
        tasks: TaskTracker::new(),
    };
    let mut storage = worker.storage.subscribe();
    let mut heartbeat = tokio::time::interval(DEFAULT_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            // A stop wins over a message that is ready: once draining, no new patch is taken.
            biased;
            () = shutdown.cancelled() => break Ok(()),
            // The state dir failed (an attempt handed its lease back): the session ends, so
            // the router requeues what it leased here and takes no more to this executor.
            () = crate::storage::degraded(&mut storage) => break Err(ExecutorError::StorageDegraded),
            // A standby took a workspace over: a new session announces it.
            () = crate::standby::changed(&mut taken_over) => break Err(ExecutorError::TookOver),
            _ = heartbeat.tick() => {
                let tokens = attempts.held.lock().await.clone();
                let beat = message(executor_message::Kind::Heartbeat(Heartbeat { fencing_tokens: tokens }));
                if outbound.send(beat).await.is_err() {
                    break Err(ExecutorError::Closed);
                }
            }
            incoming = inbound.message() => {
                // A broken stream ends the loop (not the function): its attempts are fenced below.
                let incoming = match incoming {
                    Ok(Some(incoming)) => incoming,
                    Ok(None) => break Err(ExecutorError::Closed),
                    Err(status) => break Err(ExecutorError::from(status)),
                };
                match incoming.kind {
                    Some(router_message::Kind::Welcome(welcome)) => {
                        *welcomed = true;
                        let period = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
                        heartbeat = tokio::time::interval(period);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    Some(router_message::Kind::Assign(assign)) => {
                        attempts.start(worker, assign, &outbound).await;
                    }
                    Some(router_message::Kind::Cancel(cancel)) => attempts.cancel(cancel).await,
                    Some(router_message::Kind::DryRun(request)) => {
                        attempts.dry_run(worker, request, &outbound);
                    }
                    None => tracing::warn!("empty router message ignored"),
                }
            }
        }
    };
    // On a stop, attempts still running finish (the drain). If the stream broke instead, this
    // session's leases are lost: the router re-leases them once they expire, so an attempt
    // still running here must stop applying (fencing). Cancelled, it rolls back and is not
    // recorded in the ledger, so the re-delivery runs it again; one that already took effect
    // is answered from the ledger.
    if result.is_err() {
        fence(&attempts.running).await;
    }
    attempts.tasks.close();
    attempts.tasks.wait().await;
    result
}

/// The Hello that opens a session: this executor, the workspaces it serves now (`active`),
/// what it can do, and its token.
fn hello(worker: &Worker, active: &std::collections::BTreeSet<String>) -> Hello {
    Hello {
        executor_id: worker.config.executor_id.clone(),
        workspaces: worker
            .contexts
            .values()
            .filter(|ctx| active.contains(&ctx.workspace.target))
            .map(|ctx| WireWorkspace {
                target: ctx.workspace.target.clone(),
                root: ctx.workspace.root.display().to_string(),
            })
            .collect(),
        capabilities: [
            "write", "replace", "diff", "delete", "rename", "chmod", "mkdir", "patch", "commands",
            "validate", "agent", "git", "journal", "ledger", "cancel", "dry_run", "revert",
        ]
        .map(str::to_owned)
        .to_vec(),
        token: worker.config.token.expose().to_owned(),
    }
}

/// Opens the Work stream, `outbound` being what this executor sends on it. A router that
/// accepts the connection and never answers must not hold the session: the stream's headers
/// come within the call bound, and the keep-alive watches it afterwards.
async fn open_work(
    client: &mut RouterServiceClient<tonic::transport::Channel>,
    outbound: mpsc::Receiver<ExecutorMessage>,
) -> Result<tonic::Streaming<RouterMessage>, ExecutorError> {
    let opened = tokio::time::timeout(
        PEER_TIMEOUTS.call,
        client.work(ReceiverStream::new(outbound)),
    )
    .await
    .map_err(|_| {
        tonic::Status::deadline_exceeded(format!(
            "the router accepted the Work stream but did not answer within {}s",
            PEER_TIMEOUTS.call.as_secs()
        ))
    })?;
    Ok(opened?.into_inner())
}

/// What a session's assigned attempts share: the fencing tokens its heartbeats name, the
/// cancels of the attempts running, the targets' locks, and the tasks to wait for.
struct Attempts {
    /// The fencing tokens of the attempts running (sent with each heartbeat).
    held: Arc<Mutex<Vec<u64>>>,
    /// Each running attempt's patch id and cancel, by fencing token.
    running: Running,
    /// An apply holds its target's lock; a dry run waits for it.
    locks: TargetLocks,
    /// The attempts' and dry runs' tasks.
    tasks: TaskTracker,
}

impl Attempts {
    /// Runs an assigned patch on a task of its own: its fencing token in the heartbeats and
    /// its cancel reachable while it runs.
    async fn start(
        &self,
        worker: &Worker,
        assign: Assign,
        outbound: &mpsc::Sender<ExecutorMessage>,
    ) {
        self.held.lock().await.push(assign.fencing_token);
        let cancel = CancellationToken::new();
        let patch_id = assign
            .patch
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_default();
        self.running
            .lock()
            .await
            .insert(assign.fencing_token, (patch_id, cancel.clone()));
        let worker = worker.clone();
        let outbound = outbound.clone();
        let held = Arc::clone(&self.held);
        let running = Arc::clone(&self.running);
        let locks = self.locks.clone();
        self.tasks.spawn(async move {
            let token = assign.fencing_token;
            execute(&worker, &locks, assign, cancel, &outbound).await;
            held.lock().await.retain(|t| *t != token);
            running.lock().await.remove(&token);
        });
    }

    /// Cancels the running attempt a Cancel names (its fencing token and patch id).
    async fn cancel(&self, cancel: Cancel) {
        let found = self
            .running
            .lock()
            .await
            .get(&cancel.fencing_token)
            .cloned();
        match found {
            Some((patch_id, token)) if patch_id == cancel.patch_id => {
                tracing::info!(patch_id = %cancel.patch_id, reason = %cancel.reason, "cancelling a running patch");
                token.cancel();
            }
            _ => {
                tracing::info!(patch_id = %cancel.patch_id, token = cancel.fencing_token, "cancel for no running attempt ignored")
            }
        }
    }

    /// Answers a dry run on a task of its own.
    fn dry_run(&self, worker: &Worker, request: DryRun, outbound: &mpsc::Sender<ExecutorMessage>) {
        let worker = worker.clone();
        let outbound = outbound.clone();
        let locks = self.locks.clone();
        self.tasks.spawn(async move {
            answer_dry_run(&worker, &locks, request, &outbound).await;
        });
    }
}

/// Cancels every attempt of a session whose Work stream broke: its leases are lost.
async fn fence(running: &Running) {
    for (token, (patch_id, cancel)) in running.lock().await.iter() {
        tracing::warn!(
            patch_id = %patch_id,
            fencing_token = *token,
            "work stream lost: the lease is lost, cancelling the attempt (it rolls back; the \
             router re-leases the patch)"
        );
        cancel.cancel();
    }
}

/// Sends the results found at start (interrupted applies); each is forgotten once queued.
async fn send_owed(worker: &Worker, outbound: &mpsc::Sender<ExecutorMessage>) {
    for (path, owed) in worker.outbox.pending() {
        let result = WorkResult {
            patch_id: owed.patch_id.clone(),
            attempt: owed.attempt,
            fencing_token: owed.fencing_token,
            report: Some(ghost_proto::router::v1::ApplyReport::from(&owed.report)),
            traceparent: String::new(),
        };
        if outbound
            .send(message(executor_message::Kind::Result(result)))
            .await
            .is_err()
        {
            return;
        }
        tracing::info!(patch_id = %owed.patch_id, status = %owed.report.status, "owed result sent");
        worker.outbox.remove(&path);
    }
}

/// Plans one dry run (after the apply running on its target, if any) and sends the answer.
async fn answer_dry_run(
    worker: &Worker,
    locks: &TargetLocks,
    request: ghost_proto::executor::v1::DryRun,
    outbound: &mpsc::Sender<ExecutorMessage>,
) {
    let request_id = request.request_id;
    let report = match request.patch.map(Patch::try_from) {
        None => dry_run::refused("the dry run carried no patch".to_owned()),
        Some(Err(err)) => dry_run::refused(format!("invalid patch: {err}")),
        Some(Ok(patch)) => match (
            worker.contexts.get(patch.target.as_str()).cloned(),
            locks.of(patch.target.as_str()),
        ) {
            (Some(ctx), Some(lock)) => {
                let target = patch.target.to_string();
                let planned = async move {
                    match tokio::time::timeout(BUSY_WAIT, lock.read_owned()).await {
                        Ok(guard) => {
                            let span = tracing::info_span!("executor.dry_run", patch_id = %patch.id, target = %patch.target);
                            tokio::task::spawn_blocking(move || {
                                span.in_scope(|| dry_run::dry_run_holding(&ctx, &patch, guard))
                            })
                            .await
                            .unwrap_or_else(|err| {
                                dry_run::refused(format!("dry run task failed: {err}"))
                            })
                        }
                        Err(_) => dry_run::refused(format!(
                            "target {} is busy: a patch has been applying for over {}s; try the \
                             dry run again when it has finished",
                            patch.target,
                            BUSY_WAIT.as_secs()
                        )),
                    }
                };
                // The router stops waiting at its deadline: past ours (below it) the answer
                // is given up, so no dry run outlives the call that asked for it.
                tokio::time::timeout(GIVE_UP, planned)
                    .await
                    .unwrap_or_else(|_| {
                        dry_run::refused(format!(
                            "the dry run on target {target} took over {}s and was given up",
                            GIVE_UP.as_secs()
                        ))
                    })
            }
            _ => dry_run::refused(format!(
                "this executor does not serve target {}",
                patch.target
            )),
        },
    };
    tracing::info!(request_id, status = %report.status, edits = report.edits.len(), "dry run answered");
    let answer = DryRunResult {
        request_id,
        report: Some(ghost_proto::router::v1::ApplyReport::from(&report)),
    };
    if outbound
        .send(message(executor_message::Kind::DryRunResult(answer)))
        .await
        .is_err()
    {
        tracing::warn!(
            request_id,
            "stream closed before the dry run answer was sent"
        );
    }
}

/// Runs one assignment (holding its target's lock) and sends its result.
async fn execute(
    worker: &Worker,
    locks: &TargetLocks,
    assign: ghost_proto::executor::v1::Assign,
    cancel: CancellationToken,
    outbound: &mpsc::Sender<ExecutorMessage>,
) {
    let wire_patch = assign.patch.unwrap_or_default();
    let patch_id = wire_patch.id.clone();
    let span = tracing::info_span!(
        "executor.apply",
        patch_id = %patch_id,
        attempt = assign.attempt,
        target = %wire_patch.target
    );
    set_parent(&span, &assign.traceparent);
    let applying = Progress {
        patch_id: patch_id.clone(),
        fencing_token: assign.fencing_token,
        status: PatchStatus::Applying as i32,
        detail: String::new(),
    };
    let report = match Patch::try_from(wire_patch) {
        Ok(patch) => match worker.contexts.get(patch.target.as_str()).cloned() {
            Some(ctx) => {
                let lease = Lease {
                    attempt: assign.attempt,
                    fencing_token: assign.fencing_token,
                };
                let apply_span = span.clone();
                match lock_target(locks, patch.target.as_str(), &cancel).await {
                    None => ghost_core::ApplyReport::ended(
                        ghost_core::Status::Cancelled,
                        "cancelled while waiting for the target's lock; nothing was written",
                    ),
                    Some(guard) => {
                        // "applying" only once the lock is held: until then nothing runs.
                        let _ = outbound
                            .send(message(executor_message::Kind::Progress(applying)))
                            .await;
                        let ended = tokio::task::spawn_blocking(move || {
                            let _guard = guard;
                            apply_span.in_scope(|| {
                                apply::apply_or_hand_back(&ctx, &patch, lease, &cancel)
                            })
                        })
                        .await
                        .unwrap_or_else(|err| {
                            apply::Ended::Report(Box::new(rejected(format!(
                                "apply task failed: {err}"
                            ))))
                        });
                        match ended {
                            apply::Ended::Report(report) => *report,
                            apply::Ended::HandBack(fault) => {
                                span.in_scope(|| crate::storage::hand_back(worker, &fault));
                                return;
                            }
                        }
                    }
                }
            }
            None => rejected(format!(
                "this executor does not serve target {}",
                patch.target
            )),
        },
        Err(err) => rejected(format!("invalid patch: {err}")),
    };
    span.in_scope(|| {
        tracing::info!(status = %report.status, edits = report.edits.len(), error = %report.error, "patch applied");
    });
    let result = WorkResult {
        patch_id,
        attempt: assign.attempt,
        fencing_token: assign.fencing_token,
        report: Some(ghost_proto::router::v1::ApplyReport::from(&report)),
        traceparent: traceparent_of(&span).unwrap_or_default(),
    };
    send_result(outbound, result).await;
}

/// The target's write lock, alone (`Some(None)`: the target has none); `None` when the
/// attempt is cancelled while waiting for it.
async fn lock_target(
    locks: &TargetLocks,
    target: &str,
    cancel: &CancellationToken,
) -> Option<Option<tokio::sync::OwnedRwLockWriteGuard<()>>> {
    match locks.of(target) {
        Some(lock) => tokio::select! {
            guard = lock.write_owned() => Some(Some(guard)),
            () = cancel.cancelled() => None,
        },
        None => Some(None),
    }
}

/// Sends an attempt's result; a closed stream is logged (the router requeues the patch).
async fn send_result(outbound: &mpsc::Sender<ExecutorMessage>, result: WorkResult) {
    if outbound
        .send(message(executor_message::Kind::Result(result)))
        .await
        .is_err()
    {
        tracing::warn!("stream closed before the result was sent; the router will requeue");
    }
}

fn rejected(error: String) -> ghost_core::ApplyReport {
    ghost_core::ApplyReport::ended(ghost_core::Status::Rejected, error)
}
