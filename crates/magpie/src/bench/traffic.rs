//! The `throughput` and `latency` scenarios: pairs of users sending to each other over
//! WebSockets, either pipelined with a window of un-acked sends or paced at a fixed rate.
//!
//! Every connection runs in one task that multiplexes reading, writing and its timers. It also
//! checks the protocol's promises as it goes: acks arrive in send order with increasing seqs,
//! events arrive with gap-free cursors, and (since each bench user has exactly one
//! conversation) gap-free message seqs; after sending stops, every connection waits until it
//! has seen every message of its conversation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use futures_util::{FutureExt, SinkExt, StreamExt};
use magpie_core::ConversationId;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::report::{thousands, LatencySummary, Recorder, SharedHistogram};
use super::setup::{self, Account, Http};
use super::sys::{self, Proc, ProcSample, StoreDelta};
use super::timeline::{ThreadSampler, Timeline, TimelineArgs, Windows};
use super::wire::{self, instant_at, now_ns, Incoming};
use super::wsconn::{self, Connected};
use super::{progress, CommonArgs, Outcome, Target};

/// WebSocket connects in flight during setup.
const CONNECT_CONCURRENCY: usize = 64;
/// Frames handled back to back before the task refills its window and flushes.
const READ_BATCH_FRAMES_MAX: usize = 256;
/// While draining, how often a connection re-checks whether its peer has finished.
const DRAIN_POLL_NS: u64 = 5_000_000;
/// Paced senders stop queueing sends beyond this many un-acked ones (a stalled server).
const PACED_PENDING_MAX: usize = 100_000;
/// Delay between the end of setup and the first send, so every task is spawned and waiting.
const START_DELAY_NS: u64 = 200_000_000;
/// Violation messages kept per connection (the rest are only counted).
const VIOLATION_EXAMPLES_MAX: usize = 3;

/// `magpie bench throughput`.
#[derive(clap::Args, Clone, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Pairs of users; each user holds one connection and sends to its pair's conversation.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Un-acked sends each connection keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Length of the measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Longest wait, after sending stops, for outstanding acks and events, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
    /// How sends pick their `client_msg_id`.
    #[arg(long, value_enum, default_value_t = ClientIds::Time)]
    pub client_ids: ClientIds,
    #[command(flatten)]
    pub timeline: TimelineArgs,
}

/// `magpie bench latency`.
#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Pairs of users; all 2×pairs users send.
    #[arg(long, default_value_t = 1)]
    pub pairs: usize,
    /// Total messages per second over all senders (each sends rate/(2×pairs) per second).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Length of the measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Longest wait, after sending stops, for outstanding acks and events, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
    /// How sends pick their `client_msg_id`.
    #[arg(long, value_enum, default_value_t = ClientIds::Time)]
    pub client_ids: ClientIds,
    #[command(flatten)]
    pub timeline: TimelineArgs,
}

/// How the bench's sends pick their client message ids.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIds {
    /// Time-ordered, from the SDK's generator (`magpie_sdk::new_client_msg_id`), as Magpie's
    /// own clients send them: the server can tell they are new without a dedup lookup.
    Time,
    /// 128 random bits, as a client with UUIDv4-style ids sends them: every send is looked
    /// up in the server's dedup index.
    Random,
}

impl ClientIds {
    fn next(self) -> String {
        match self {
            ClientIds::Time => magpie_sdk::new_client_msg_id(),
            ClientIds::Random => format!("{:032x}", rand::random::<u128>()),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ClientIds::Time => "time",
            ClientIds::Random => "random",
        }
    }
}

/// How a connection decides when to send.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// Keep this many sends un-acked.
    Window(usize),
    /// One send every `interval_ns`, on an absolute schedule.
    Rate { interval_ns: u64 },
}

/// The shared timeline of a run, in nanoseconds since [`wire::epoch`].
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// First send.
    start_ns: u64,
    /// Measuring starts (after the warm-up).
    measure_ns: u64,
    /// Measuring and sending stop.
    stop_ns: u64,
    /// Connections give up waiting for stragglers.
    drain_deadline_ns: u64,
    /// Send policy.
    pace: Pace,
    /// How sends pick their client message ids.
    ids: ClientIds,
}

impl Plan {
    fn new(
        warmup_s: f64,
        duration_s: f64,
        drain_s: f64,
        pace: Pace,
        ids: ClientIds,
    ) -> anyhow::Result<Plan> {
        anyhow::ensure!(
            duration_s > 0.0 && warmup_s >= 0.0 && drain_s > 0.0,
            "durations must be positive"
        );
        let ns = |s: f64| (s * 1e9) as u64;
        let start_ns = now_ns() + START_DELAY_NS;
        let measure_ns = start_ns + ns(warmup_s);
        let stop_ns = measure_ns + ns(duration_s);
        Ok(Plan {
            start_ns,
            measure_ns,
            stop_ns,
            drain_deadline_ns: stop_ns + ns(drain_s),
            pace,
            ids,
        })
    }

    fn measuring(&self, now: u64) -> bool {
        now >= self.measure_ns && now < self.stop_ns
    }

    fn measured_s(&self) -> f64 {
        (self.stop_ns - self.measure_ns) as f64 / 1e9
    }
}

/// What both connections of a pair publish when they have stopped sending and every send of
/// theirs is acked, so each knows the conversation's final seq.
#[derive(Default)]
struct PairShared {
    /// Highest acked seq of each side.
    final_seq: [AtomicU64; 2],
    /// Whether each side is done.
    done: [AtomicBool; 2],
    /// Set when a side's connection ended abnormally; the other side then stops waiting for
    /// messages that will never come (the failure itself is already reported).
    broken: AtomicBool,
}

impl PairShared {
    fn publish(&self, side: usize, seq: u64) {
        self.final_seq[side].store(seq, Ordering::Relaxed);
        self.done[side].store(true, Ordering::Release);
    }

    /// The conversation's last seq, once both sides are done.
    fn final_seq(&self) -> Option<u64> {
        let both = self.done[0].load(Ordering::Acquire) && self.done[1].load(Ordering::Acquire);
        both.then(|| {
            self.final_seq[0]
                .load(Ordering::Relaxed)
                .max(self.final_seq[1].load(Ordering::Relaxed))
        })
    }
}

/// Counters of one connection.
#[derive(Default, Debug)]
struct ConnStats {
    /// Sends written during the measured window.
    sent_in_window: u64,
    /// Acks received during the measured window.
    acked_in_window: u64,
    /// Peer's messages delivered during the measured window.
    peer_in_window: u64,
    /// Own messages echoed back during the measured window.
    own_in_window: u64,
    /// Sends written in the whole run.
    sent_total: u64,
    /// Acks received in the whole run.
    acked_total: u64,
    /// Events received in the whole run.
    events_total: u64,
    /// Whether the connection saw its conversation's final message before the deadline.
    drained: bool,
    /// Protocol or ordering violations.
    violations: u64,
    /// The first few violations, described.
    examples: Vec<String>,
    /// Deliveries per timeline window (with `--timeline-ms`).
    windows: Option<Windows>,
}

impl ConnStats {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < VIOLATION_EXAMPLES_MAX {
            self.examples.push(what);
        }
    }
}

/// One connection's task state.
struct Driver {
    /// Index of the connection, for messages.
    id: usize,
    /// Our user id as it appears on the wire, to tell our own echoes from the peer's messages.
    me: String,
    /// The pair's conversation.
    conversation: ConversationId,
    /// Sends not yet answered: (client_msg_id, send time).
    pending: VecDeque<(String, u64)>,
    /// Seq of the last ack (strictly increasing).
    last_ack_seq: u64,
    /// Cursor of the last event (gap-free).
    last_cursor: u64,
    /// Message seq of the last event (gap-free: the user's only conversation).
    last_event_seq: u64,
    /// The run's timeline.
    plan: Plan,
    /// send→deliver latency (peer's messages).
    deliver: Recorder,
    /// send→ack latency (own sends).
    ack: Recorder,
    /// Counters.
    stats: ConnStats,
}

/// What the task should do after a frame.
enum Flow {
    Continue,
    /// The server queued a pong (or similar) that needs a flush.
    Flush,
    Stop,
}

impl Driver {
    fn next_send(&mut self, now: u64) -> Message {
        let id = self.plan.ids.next();
        let frame = wire::send_frame(&id, self.conversation, now);
        self.pending.push_back((id, now));
        self.stats.sent_total += 1;
        if self.plan.measuring(now) {
            self.stats.sent_in_window += 1;
        }
        Message::text(frame)
    }

    fn on_message(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Text(text) => {
                self.on_text(text.as_str());
                Flow::Continue
            }
            Message::Ping(_) => Flow::Flush,
            Message::Pong(_) | Message::Frame(_) => Flow::Continue,
            Message::Binary(_) => {
                self.stats
                    .violation(format!("conn {}: unexpected binary frame", self.id));
                Flow::Continue
            }
            Message::Close(frame) => {
                let why = frame
                    .map(|f| {
                        let code = u16::from(f.code);
                        let meaning = match code {
                            magpie_protocol::close::CLOSE_RESYNC => {
                                " (its outbound event queue overflowed)"
                            }
                            magpie_protocol::close::CLOSE_HEARTBEAT_TIMEOUT => {
                                " (heartbeat timeout)"
                            }
                            _ => "",
                        };
                        format!("{code} {}{meaning}", f.reason)
                    })
                    .unwrap_or_default();
                self.stats
                    .violation(format!("conn {}: server closed the socket: {why}", self.id));
                Flow::Stop
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        let frame = match wire::parse(text) {
            Ok(f) => f,
            Err(e) => return self.stats.violation(format!("conn {}: {e}", self.id)),
        };
        let now = now_ns();
        match frame {
            Incoming::Sent {
                client_msg_id,
                seq,
                duplicate,
            } => self.on_sent(now, client_msg_id, seq, duplicate),
            Incoming::Message {
                cursor,
                seq,
                sender_id,
                text,
            } => {
                self.on_cursor(cursor);
                if seq != self.last_event_seq + 1 {
                    self.stats.violation(format!(
                        "conn {}: message seq {seq} after {} (gap or repeat in the conversation)",
                        self.id, self.last_event_seq
                    ));
                }
                self.last_event_seq = self.last_event_seq.max(seq);
                let measuring = self.plan.measuring(now);
                if sender_id == self.me {
                    self.stats.own_in_window += u64::from(measuring);
                } else if measuring {
                    // Messages the bench did not write (system messages) carry no stamp.
                    if let Some(sent) = wire::stamp_of(text) {
                        self.stats.peer_in_window += 1;
                        self.deliver.record(now.saturating_sub(sent));
                        if let Some(w) = &mut self.stats.windows {
                            w.record(sent, now.saturating_sub(sent));
                        }
                    }
                }
            }
            Incoming::OtherEvent { cursor } => self.on_cursor(cursor),
            Incoming::Error {
                code,
                message,
                client_msg_id,
            } => {
                if client_msg_id.is_some() {
                    // The answer to our oldest send; keep the ack queue aligned.
                    self.pending.pop_front();
                }
                self.stats.violation(format!(
                    "conn {}: error frame {}: {message}",
                    self.id,
                    code.as_str()
                ));
            }
            Incoming::Ready { .. } => self
                .stats
                .violation(format!("conn {}: a second ready frame", self.id)),
            Incoming::Pong | Incoming::Ignored => {}
        }
    }

    fn on_sent(&mut self, now: u64, client_msg_id: &str, seq: u64, duplicate: bool) {
        let Some((id, sent_ns)) = self.pending.pop_front() else {
            return self.stats.violation(format!(
                "conn {}: sent {client_msg_id} without a pending send",
                self.id
            ));
        };
        if client_msg_id != id {
            self.stats.violation(format!(
                "conn {}: ack for {client_msg_id} while {id} was oldest",
                self.id
            ));
        }
        if seq <= self.last_ack_seq {
            self.stats.violation(format!(
                "conn {}: ack seq {seq} after {}",
                self.id, self.last_ack_seq
            ));
        }
        if duplicate {
            self.stats.violation(format!(
                "conn {}: send {id} answered as a duplicate",
                self.id
            ));
        }
        self.last_ack_seq = self.last_ack_seq.max(seq);
        self.stats.acked_total += 1;
        if self.plan.measuring(now) {
            self.stats.acked_in_window += 1;
            self.ack.record(now.saturating_sub(sent_ns));
        }
    }

    fn on_cursor(&mut self, cursor: u64) {
        self.stats.events_total += 1;
        if cursor != self.last_cursor + 1 {
            self.stats.violation(format!(
                "conn {}: event cursor {cursor} after {}",
                self.id, self.last_cursor
            ));
        }
        self.last_cursor = self.last_cursor.max(cursor);
    }
}

/// Everything a connection task needs.
struct ConnSpec {
    id: usize,
    side: usize,
    account: Account,
    conversation: ConversationId,
    connected: Connected,
    pair: Arc<PairShared>,
    /// Offset of this sender's schedule (paced mode), so sends spread evenly over time.
    phase_ns: u64,
}

/// Runs one connection from the first send until it has drained (or the deadline).
async fn drive(
    spec: ConnSpec,
    plan: Plan,
    deliver: Recorder,
    ack: Recorder,
    windows: Option<Windows>,
) -> ConnStats {
    let ConnSpec {
        id,
        side,
        account,
        conversation,
        connected,
        pair,
        phase_ns,
    } = spec;
    let mut d = Driver {
        id,
        me: account.user_id.to_string(),
        conversation,
        pending: VecDeque::new(),
        last_ack_seq: 0,
        last_cursor: connected.cursor,
        last_event_seq: 0,
        plan,
        deliver,
        ack,
        stats: ConnStats {
            windows,
            ..ConnStats::default()
        },
    };
    let (mut sink, mut stream) = connected.ws.split();
    let mut dirty = false;
    let mut published = false;
    let mut next_due_ns = plan.start_ns + phase_ns;
    let sleep = tokio::time::sleep_until(instant_at(plan.start_ns));
    tokio::pin!(sleep);
    sleep.as_mut().await;
    'run: loop {
        let now = now_ns();
        let sending = now < plan.stop_ns;
        if sending {
            match plan.pace {
                Pace::Window(window) => {
                    while d.pending.len() < window {
                        let msg = d.next_send(now);
                        if let Err(e) = sink.feed(msg).await {
                            d.stats.violation(format!("conn {id}: write failed: {e}"));
                            break 'run;
                        }
                        dirty = true;
                    }
                }
                Pace::Rate { interval_ns } => {
                    while next_due_ns <= now && d.pending.len() < PACED_PENDING_MAX {
                        let msg = d.next_send(now);
                        if let Err(e) = sink.feed(msg).await {
                            d.stats.violation(format!("conn {id}: write failed: {e}"));
                            break 'run;
                        }
                        next_due_ns += interval_ns;
                        dirty = true;
                    }
                }
            }
        } else if !published && d.pending.is_empty() {
            pair.publish(side, d.last_ack_seq);
            published = true;
        }
        if published
            && pair
                .final_seq()
                .is_some_and(|last| d.last_event_seq >= last)
        {
            d.stats.drained = true;
            break;
        }
        if !sending && pair.broken.load(Ordering::Acquire) {
            break;
        }
        if now >= plan.drain_deadline_ns {
            let un_acked = d.pending.len();
            let last = d.last_event_seq;
            d.stats.violation(format!(
                "conn {id}: drain deadline passed with {un_acked} sends un-acked and message seq {last} last seen"
            ));
            break;
        }
        let wake_ns = match (sending, plan.pace) {
            (true, Pace::Window(_)) => plan.stop_ns,
            (true, Pace::Rate { .. }) => next_due_ns.min(plan.stop_ns),
            (false, _) => now + DRAIN_POLL_NS,
        };
        let wake = instant_at(wake_ns);
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            flushed = sink.flush(), if dirty => {
                if let Err(e) = flushed {
                    d.stats.violation(format!("conn {id}: flush failed: {e}"));
                    break;
                }
                dirty = false;
            }
            first = stream.next() => {
                let mut item = first;
                let mut handled = 0;
                loop {
                    let msg = match item {
                        None => {
                            d.stats.violation(format!("conn {id}: connection closed by the server"));
                            break 'run;
                        }
                        Some(Err(e)) => {
                            d.stats.violation(format!("conn {id}: read failed: {e}"));
                            break 'run;
                        }
                        Some(Ok(m)) => m,
                    };
                    match d.on_message(msg) {
                        Flow::Continue => {}
                        Flow::Flush => dirty = true,
                        Flow::Stop => break 'run,
                    }
                    handled += 1;
                    if handled >= READ_BATCH_FRAMES_MAX {
                        break;
                    }
                    // Take whatever is already buffered without waiting, so that the window is
                    // refilled and flushed once per batch rather than once per ack.
                    match stream.next().now_or_never() {
                        Some(next) => item = next,
                        None => break,
                    }
                }
            }
            () = &mut sleep => {}
        }
    }
    if !d.stats.drained {
        pair.broken.store(true, Ordering::Release);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
    d.stats
}

/// Accounts, conversations and open connections for `pairs` pairs.
struct Fleet {
    specs: Vec<ConnSpec>,
}

/// Accounts, conversations and `2 * pairs` open connections, each reading through a buffer
/// of `read_buffer_bytes`.
async fn build_fleet(
    common: &CommonArgs,
    target: &Target,
    http: &Http,
    pairs: usize,
    read_buffer_bytes: usize,
) -> anyhow::Result<Fleet> {
    anyhow::ensure!(pairs >= 1, "--pairs must be at least 1");
    let prefix = setup::users_prefix(common.users_prefix.as_deref())?;
    let t = std::time::Instant::now();
    progress!(
        "registering and logging in {} users ({prefix}_*)",
        2 * pairs
    );
    let accounts = setup::accounts(http, &prefix, 2 * pairs, common.setup_concurrency).await?;
    let conversations = setup::bounded(pairs, common.setup_concurrency, |i| {
        let (a, b) = (&accounts[2 * i], &accounts[2 * i + 1]);
        async move { http.direct_between(a, b).await }
    })
    .await?;
    progress!("opening {} WebSocket connections", 2 * pairs);
    let connected = setup::bounded(2 * pairs, CONNECT_CONCURRENCY, |k| {
        let token = accounts[k].token.clone();
        let target = target.clone();
        async move {
            let config = wsconn::busy_config(read_buffer_bytes);
            wsconn::connect(&target, &token, None, config, true).await
        }
    })
    .await?;
    progress!("setup done in {:.1} s", t.elapsed().as_secs_f64());
    let pair_states: Vec<Arc<PairShared>> = (0..pairs).map(|_| Arc::default()).collect();
    let specs = connected
        .into_iter()
        .enumerate()
        .map(|(k, connected)| ConnSpec {
            id: k,
            side: k % 2,
            account: accounts[k].clone(),
            conversation: conversations[k / 2],
            connected,
            pair: pair_states[k / 2].clone(),
            phase_ns: 0,
        })
        .collect();
    Ok(Fleet { specs })
}

/// Process and server readings at the start and end of the measured window.
struct WindowSamples {
    server: Option<(ProcSample, ProcSample)>,
    own: Option<(ProcSample, ProcSample)>,
    store: Option<StoreDelta>,
    load: Option<[f64; 3]>,
    /// Whole-machine CPU over the window, percent of one core.
    machine_cpu: Option<f64>,
}

async fn sample_window(http: Http, pid: Option<u32>, plan: Plan) -> anyhow::Result<WindowSamples> {
    tokio::time::sleep_until(instant_at(plan.measure_ns)).await;
    let server_a = sys::sample_opt(pid)?;
    let own_a = sys::sample(Proc::Own).ok();
    let machine_a = sys::machine_cpu();
    let metrics_a = http.metrics().await.ok();
    tokio::time::sleep_until(instant_at(plan.stop_ns)).await;
    let server_b = sys::sample_opt(pid)?;
    let own_b = sys::sample(Proc::Own).ok();
    let machine_b = sys::machine_cpu();
    let metrics_b = http.metrics().await.ok();
    let store = match (metrics_a, metrics_b) {
        (Some(a), Some(b)) => Some(StoreDelta::between(&a, &b, plan.measured_s())),
        _ => None,
    };
    Ok(WindowSamples {
        server: server_a.zip(server_b),
        own: own_a.zip(own_b),
        store,
        load: sys::load_average(),
        machine_cpu: machine_a
            .zip(machine_b)
            .map(|(a, b)| sys::machine_cpu_percent(&a, &b)),
    })
}

/// Totals over every connection.
struct Totals {
    stats: ConnStats,
    connections: usize,
    drained: usize,
    /// The run's timeline (with `--timeline-ms`).
    timeline: Option<Timeline>,
}

async fn run_fleet(
    fleet: Fleet,
    plan: Plan,
    http: &Http,
    pid: Option<u32>,
    deliver: &SharedHistogram,
    ack: &SharedHistogram,
    window_ns: Option<u64>,
) -> anyhow::Result<(Totals, WindowSamples)> {
    let connections = fleet.specs.len();
    let sampler = tokio::spawn(sample_window(http.clone(), pid, plan));
    if let Some(w) = window_ns {
        TimelineArgs::check_span(w, plan.stop_ns - plan.measure_ns)?;
    }
    let windows = window_ns.map(|w| Windows::new(plan.measure_ns, plan.stop_ns, w));
    let threads = match (&windows, pid) {
        (Some(w), Some(pid)) => Some(ThreadSampler::start(pid, w)?),
        _ => None,
    };
    let tasks: Vec<_> = fleet
        .specs
        .into_iter()
        .map(|spec| {
            let (d, a, w) = (deliver.recorder(), ack.recorder(), windows.clone());
            tokio::spawn(drive(spec, plan, d, a, w))
        })
        .collect();
    progress!(
        "running: warm-up {:.1} s, measuring {:.1} s",
        (plan.measure_ns - plan.start_ns) as f64 / 1e9,
        plan.measured_s()
    );
    let mut total = ConnStats::default();
    let mut merged = windows;
    let mut drained = 0;
    for task in tasks {
        let s = task.await?;
        if let (Some(all), Some(w)) = (&mut merged, &s.windows) {
            all.merge(w);
        }
        total.sent_in_window += s.sent_in_window;
        total.acked_in_window += s.acked_in_window;
        total.peer_in_window += s.peer_in_window;
        total.own_in_window += s.own_in_window;
        total.sent_total += s.sent_total;
        total.acked_total += s.acked_total;
        total.events_total += s.events_total;
        total.violations += s.violations;
        drained += usize::from(s.drained);
        for e in s.examples {
            if total.examples.len() < 10 {
                total.examples.push(e);
            }
        }
    }
    let samples = sampler.await??;
    let timeline = merged.map(|windows| Timeline {
        windows,
        threads: threads.map(ThreadSampler::finish),
    });
    Ok((
        Totals {
            stats: total,
            connections,
            drained,
            timeline,
        },
        samples,
    ))
}

/// The parts of a traffic report both scenarios share.
fn traffic_report(
    head: String,
    json_head: serde_json::Value,
    plan: &Plan,
    totals: &Totals,
    samples: &WindowSamples,
    deliver: LatencySummary,
    ack: LatencySummary,
) -> Outcome {
    let secs = plan.measured_s();
    let s = &totals.stats;
    let rate = |n: u64| n as f64 / secs;
    let mut human = head;
    human.push_str(&format!(
        "\n  sends written          {:>10} /s\n  acked sends            {:>10} /s\n  delivered to the peer  {:>10} /s\n  echoed to the sender   {:>10} /s   (all events pushed: {} /s)\n",
        thousands(rate(s.sent_in_window)),
        thousands(rate(s.acked_in_window)),
        thousands(rate(s.peer_in_window)),
        thousands(rate(s.own_in_window)),
        thousands(rate(s.peer_in_window + s.own_in_window)),
    ));
    human.push_str(&deliver.row("send→deliver"));
    human.push('\n');
    human.push_str(&ack.row("send→ack"));
    human.push('\n');
    let cpu = |p: &Option<(ProcSample, ProcSample)>| {
        p.as_ref().map(|(a, b)| (sys::cpu_percent(a, b), b.rss_kib))
    };
    let server = cpu(&samples.server);
    let own = cpu(&samples.own);
    if let Some((cpu, rss)) = server {
        human.push_str(&format!(
            "  server                 CPU {cpu:.0}% of a core, RSS {:.1} MiB\n",
            rss as f64 / 1024.0
        ));
    }
    if let Some((cpu, rss)) = own {
        human.push_str(&format!(
            "  bench client           CPU {cpu:.0}% of a core, RSS {:.1} MiB\n",
            rss as f64 / 1024.0
        ));
    }
    // Everyone else on the machine (other engineers' builds share the two cores).
    let others = samples.machine_cpu.map(|total| {
        let mine = server.map_or(0.0, |(c, _)| c) + own.map_or(0.0, |(c, _)| c);
        (total - mine).max(0.0)
    });
    if let Some(others) = others {
        human.push_str(&format!(
            "  other processes        CPU {others:.0}% of a core\n"
        ));
    }
    if let Some(st) = &samples.store {
        human.push_str(&format!(
            "  store                  {:.0} commits/s, {:.1} ops/batch, {:.3} ms/commit (p50 {}, p99 {}, max {}; fsync {:.3} ms), commit thread busy {:.0}% of the time\n",
            st.commits_per_s,
            st.mean_batch_ops,
            st.mean_commit_ms,
            sys::le_ms(st.commit_p50_le_ms),
            sys::le_ms(st.commit_p99_le_ms),
            sys::le_ms(st.commit_max_le_ms),
            st.mean_fsync_ms,
            100.0 * st.commit_busy
        ));
        human.push_str(&format!(
            "  server append wait     p50 {}, p99 {} (a connection's batch: submitted → durable answer)\n",
            sys::le_ms(st.append_p50_le_ms),
            sys::le_ms(st.append_p99_le_ms),
        ));
        if st.overflow_kicks > 0.0 || st.rate_limited > 0.0 {
            human.push_str(&format!(
                "  server kicked {} slow devices and rate-limited {} sends\n",
                st.overflow_kicks, st.rate_limited
            ));
        }
    }
    if let Some(l) = samples.load {
        human.push_str(&format!(
            "  load average           {:.2} {:.2} {:.2}\n",
            l[0], l[1], l[2]
        ));
    }
    if let Some(t) = &totals.timeline {
        human.push_str(&t.summary());
        human.push('\n');
    }
    human.push_str(&format!(
        "  checks                 {} violations; {}/{} connections drained; {} sends, {} acks, {} events in total",
        s.violations, totals.drained, totals.connections, s.sent_total, s.acked_total, s.events_total
    ));
    for e in &s.examples {
        human.push_str(&format!("\n    ! {e}"));
    }
    let mut json = json_head;
    if let Some(obj) = json.as_object_mut() {
        let extra = json!({
            "measured_s": secs,
            "connections": totals.connections,
            "sent_per_s": rate(s.sent_in_window),
            "acked_per_s": rate(s.acked_in_window),
            "delivered_peer_per_s": rate(s.peer_in_window),
            "delivered_own_per_s": rate(s.own_in_window),
            "latency_deliver": deliver,
            "latency_ack": ack,
            "server": server.map(|(cpu, rss)| json!({"cpu_percent": cpu, "rss_kib": rss})),
            "client": own.map(|(cpu, rss)| json!({"cpu_percent": cpu, "rss_kib": rss})),
            "store": samples.store,
            "load_average": samples.load,
            "machine_cpu_percent": samples.machine_cpu,
            "others_cpu_percent": others,
            "violations": s.violations,
            "violation_examples": s.examples,
            "drained_connections": totals.drained,
            "sent_total": s.sent_total,
            "acked_total": s.acked_total,
            "events_total": s.events_total,
            "timeline": totals.timeline.as_ref().map(Timeline::json),
        });
        if let Some(extra) = extra.as_object() {
            obj.extend(extra.clone());
        }
    }
    Outcome {
        human,
        json,
        violations: s.violations,
    }
}

/// `magpie bench throughput`.
pub async fn run_throughput(args: ThroughputArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    let target = Target::resolve(&args.common.server).await?;
    let http = Http::new(&target)?;
    let read_buffer = wsconn::READ_BUFFER_BYTES_PIPELINED;
    let fleet = build_fleet(&args.common, &target, &http, args.pairs, read_buffer).await?;
    let plan = Plan::new(
        args.warmup_s,
        args.duration_s,
        args.drain_s,
        Pace::Window(args.window),
        args.client_ids,
    )?;
    let (deliver, ack) = (SharedHistogram::new(), SharedHistogram::new());
    let window_ns = args.timeline.window_ns()?;
    let pid = args.common.server_pid;
    let (totals, samples) = run_fleet(fleet, plan, &http, pid, &deliver, &ack, window_ns).await?;
    write_timeline(&args.timeline, &totals)?;
    let head = format!(
        "throughput: {} pairs ({} connections), window {}, measured {:.1} s after {:.1} s warm-up",
        args.pairs, totals.connections, args.window, args.duration_s, args.warmup_s
    );
    let json_head = json!({
        "scenario": "throughput",
        "pairs": args.pairs,
        "window": args.window,
        "warmup_s": args.warmup_s,
        "client_ids": args.client_ids.as_str(),
    });
    Ok(traffic_report(
        head,
        json_head,
        &plan,
        &totals,
        &samples,
        deliver.summary(),
        ack.summary(),
    ))
}

/// `magpie bench latency`.
pub async fn run_latency(args: LatencyArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let target = Target::resolve(&args.common.server).await?;
    let http = Http::new(&target)?;
    let read_buffer = wsconn::READ_BUFFER_BYTES_PACED;
    let mut fleet = build_fleet(&args.common, &target, &http, args.pairs, read_buffer).await?;
    let senders = fleet.specs.len() as u64;
    let per_sender = args.rate / senders as f64;
    let interval_ns = (1e9 / per_sender).max(1.0) as u64;
    for (k, spec) in fleet.specs.iter_mut().enumerate() {
        spec.phase_ns = interval_ns * k as u64 / senders;
    }
    let plan = Plan::new(
        args.warmup_s,
        args.duration_s,
        args.drain_s,
        Pace::Rate { interval_ns },
        args.client_ids,
    )?;
    let (deliver, ack) = (SharedHistogram::new(), SharedHistogram::new());
    let window_ns = args.timeline.window_ns()?;
    let pid = args.common.server_pid;
    let (totals, samples) = run_fleet(fleet, plan, &http, pid, &deliver, &ack, window_ns).await?;
    write_timeline(&args.timeline, &totals)?;
    let head = format!(
        "latency: {} pairs ({} senders), target {} msg/s in total ({per_sender:.1}/s per sender), measured {:.1} s after {:.1} s warm-up",
        args.pairs,
        senders,
        thousands(args.rate),
        args.duration_s,
        args.warmup_s
    );
    let json_head = json!({
        "scenario": "latency",
        "pairs": args.pairs,
        "rate": args.rate,
        "per_sender_rate": per_sender,
        "warmup_s": args.warmup_s,
        "client_ids": args.client_ids.as_str(),
    });
    Ok(traffic_report(
        head,
        json_head,
        &plan,
        &totals,
        &samples,
        deliver.summary(),
        ack.summary(),
    ))
}

/// Writes the timeline to `--timeline-out`, if both were asked for.
fn write_timeline(args: &TimelineArgs, totals: &Totals) -> anyhow::Result<()> {
    if let (Some(path), Some(t)) = (&args.timeline_out, &totals.timeline) {
        std::fs::write(path, t.tsv())
            .with_context(|| format!("writing the timeline to {}", path.display()))?;
    }
    Ok(())
}
