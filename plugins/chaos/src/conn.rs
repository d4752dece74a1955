//! A connection through the chaos layer: its sender, which may reset the
//! connection, and its receiver, which delays, drops, duplicates and
//! reorders what arrives.

use std::collections::VecDeque;
use std::fmt;
use std::future::pending;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_transport::{
    Address, Connection, DynConnection, DynReceiver, DynSender, MessageReceiver, MessageSender,
    TransportError,
};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::options::{ChaosOptions, Role};
use crate::rng::SplitMix64;

/// How many delayed messages a receiver holds before it stops reading from
/// the inner transport (which then pushes back on the sender).
const MAX_QUEUED: usize = 1024;

/// Which connection of a transport this is: what, with the seed and the
/// direction, picks its stream of fault decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionId {
    /// The `index`-th connection (from 0) the transport opened with
    /// `connect`.
    Connected {
        /// Its number.
        index: u64,
    },
    /// The `index`-th connection (from 0) accepted by the transport's
    /// `listener`-th listener (from 0).
    Accepted {
        /// The listener's number.
        listener: u64,
        /// The connection's number on that listener.
        index: u64,
    },
}

impl ConnectionId {
    /// The side of the connection this end is.
    pub fn role(self) -> Role {
        match self {
            Self::Connected { .. } => Role::Connector,
            Self::Accepted { .. } => Role::Acceptor,
        }
    }

    /// The keys of the stream that decides the fate of messages `sender`
    /// sends on this connection.
    fn stream(self, seed: u64, sender: Role) -> SplitMix64 {
        let sender = match sender {
            Role::Connector => 1,
            Role::Acceptor => 2,
        };
        let keys = match self {
            Self::Connected { index } => [1, 0, index, sender],
            Self::Accepted { listener, index } => [2, listener, index, sender],
        };
        SplitMix64::derived(seed, &keys)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected { index } => write!(f, "connected #{index}"),
            Self::Accepted { listener, index } => {
                write!(f, "accepted #{index} on listener #{listener}")
            }
        }
    }
}

/// What a log line about one direction of one connection names.
#[derive(Debug, Clone, Copy)]
struct Trace {
    seed: u64,
    conn: ConnectionId,
    /// The side that sends the messages of this direction.
    sender: Role,
}

/// Set by a sender that reset its connection, so the receiving half of the
/// same connection ends too (as both directions of a reset socket do).
#[derive(Debug, Default)]
struct ResetSignal {
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl ResetSignal {
    fn trigger(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.notify.notify_waiters();
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn reset_error(peer: &Address, reason: String) -> TransportError {
    TransportError::Io {
        peer: peer.to_string(),
        source: io::Error::new(io::ErrorKind::ConnectionReset, reason),
    }
}

/// A connection through the chaos layer, before it is split.
pub struct ChaosConnection {
    inner: Box<dyn DynConnection>,
    peer: Address,
    id: ConnectionId,
    options: Arc<ChaosOptions>,
    max: usize,
}

impl fmt::Debug for ChaosConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosConnection")
            .field("peer", &self.peer.to_string())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ChaosConnection {
    pub(crate) fn new(
        inner: Box<dyn DynConnection>,
        peer: Address,
        id: ConnectionId,
        options: Arc<ChaosOptions>,
        max: usize,
    ) -> Self {
        Self {
            inner,
            peer,
            id,
            options,
            max,
        }
    }

    /// Which connection of its transport this is.
    pub fn id(&self) -> ConnectionId {
        self.id
    }
}

impl Connection for ChaosConnection {
    type Sender = ChaosSender;
    type Receiver = ChaosReceiver;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (ChaosSender, ChaosReceiver) {
        let (tx, rx) = self.inner.split_dyn();
        let o = &self.options;
        let me = self.id.role();
        let trace = |sender: Role| Trace {
            seed: o.seed,
            conn: self.id,
            sender,
        };
        let send_plan = (o.faults_sends() && o.direction.includes(me)).then(|| SendPlan {
            rng: self.id.stream(o.seed, me),
            sent: 0,
            options: o.clone(),
            trace: trace(me),
        });
        let recv_plan =
            (o.faults_delivery() && o.direction.includes(me.peer())).then(|| RecvPlan {
                rng: self.id.stream(o.seed, me.peer()),
                options: o.clone(),
                trace: trace(me.peer()),
                received: 0,
                queue: VecDeque::new(),
                held: None,
                last_ready: None,
                end: None,
            });
        let signal = send_plan.as_ref().map(|_| Arc::new(ResetSignal::default()));
        (
            ChaosSender {
                inner: Some(tx),
                peer: self.peer.clone(),
                max: self.max,
                plan: send_plan,
                signal: signal.clone(),
            },
            ChaosReceiver {
                inner: Some(rx),
                peer: self.peer,
                plan: recv_plan,
                signal,
            },
        )
    }
}

// ---------------------------------------------------------------------------
// Sending: resets.
// ---------------------------------------------------------------------------

/// The sending direction: forwards each message, or resets the connection.
pub struct ChaosSender {
    /// `None` once the connection was reset.
    inner: Option<Box<dyn DynSender>>,
    peer: Address,
    max: usize,
    /// `None`: sends are never reset (a plain forward).
    plan: Option<SendPlan>,
    signal: Option<Arc<ResetSignal>>,
}

impl fmt::Debug for ChaosSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosSender")
            .field("peer", &self.peer.to_string())
            .field("reset", &self.inner.is_none())
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SendPlan {
    rng: SplitMix64,
    /// Messages counted so far (the number of the last one).
    sent: u64,
    options: Arc<ChaosOptions>,
    trace: Trace,
}

impl ChaosSender {
    fn after_reset(&self) -> TransportError {
        match self.signal.as_ref().and_then(|s| s.reason()) {
            Some(reason) => reset_error(&self.peer, reason),
            None => TransportError::Closed {
                peer: self.peer.to_string(),
            },
        }
    }
}

impl MessageSender for ChaosSender {
    fn max_message_size(&self) -> usize {
        self.max
    }

    /// The medium's own.
    fn pacing(&self) -> courier_transport::Pacing {
        self.inner
            .as_ref()
            .map_or(courier_transport::Pacing::default(), |inner| {
                inner.pacing_dyn()
            })
    }

    // An oversized message never gets here (`send` refuses it): it is not a
    // message of the connection, and is not counted.
    async fn transmit(&mut self, parts: &[&[u8]], _len: usize) -> Result<(), TransportError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(self.after_reset());
        };
        let Some(plan) = self.plan.as_mut() else {
            return inner.send_dyn(parts).await;
        };
        plan.sent += 1;
        let n = plan.sent;
        // One draw per message, used or not, so a message's fate depends
        // on its number only.
        let draw = plan.rng.next_f64();
        let o = &plan.options;
        let reset = o.reset_after.is_some_and(|after| n > after) || (n > o.grace && draw < o.reset);
        if !reset {
            return inner.send_dyn(parts).await;
        }
        let t = plan.trace;
        tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = n, peer = %self.peer, "chaos: reset the connection");
        let reason = format!(
            "connection reset by the chaos layer (seed {}, {}, message {n} from the {})",
            t.seed, t.conn, t.sender
        );
        if let Some(signal) = &self.signal {
            signal.trigger(reason.clone());
        }
        // The peer reads what was sent before, then the end.
        if let Some(mut inner) = self.inner.take() {
            let _ = inner.close_dyn().await;
        }
        Err(reset_error(&self.peer, reason))
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        match self.inner.as_mut() {
            Some(inner) => inner.close_dyn().await,
            // Reset: already closed.
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Receiving: delay, drop, duplicate, reorder.
// ---------------------------------------------------------------------------

/// The receiving direction: hands on what arrives, as its options say.
pub struct ChaosReceiver {
    /// `None` once the connection was reset.
    inner: Option<Box<dyn DynReceiver>>,
    peer: Address,
    /// `None`: what arrives is handed on as it is.
    plan: Option<RecvPlan>,
    /// Set when the sending half of this connection may reset it.
    signal: Option<Arc<ResetSignal>>,
}

impl fmt::Debug for ChaosReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosReceiver")
            .field("peer", &self.peer.to_string())
            .field("reset", &self.inner.is_none())
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// The state of a faulty direction. It lives in the receiver, not in a
/// `recv` future, so a cancelled `recv` loses nothing.
#[derive(Debug)]
struct RecvPlan {
    rng: SplitMix64,
    options: Arc<ChaosOptions>,
    trace: Trace,
    /// Messages arrived so far (the number of the last one).
    received: u64,
    /// Messages to hand on, in order, each once its time has come.
    queue: VecDeque<Queued>,
    /// A message held back until the next one arrives.
    held: Option<Held>,
    /// When the last message queued is due (messages keep their order).
    last_ready: Option<Instant>,
    /// How the inner receiver ended, once it did.
    end: Option<End>,
}

#[derive(Debug)]
struct Queued {
    /// `None`: at once.
    ready_at: Option<Instant>,
    message: Bytes,
}

#[derive(Debug)]
struct Held {
    message: Bytes,
    copies: usize,
    number: u64,
    ready_at: Option<Instant>,
    /// When it goes on alone if no other message came (`None`: never).
    until: Option<Instant>,
}

#[derive(Debug)]
enum End {
    Clean,
    Failed(TransportError),
    /// The failure was returned once already.
    Reported,
}

impl RecvPlan {
    fn push(&mut self, ready_at: Option<Instant>, message: Bytes, copies: usize) {
        for _ in 1..copies {
            self.queue.push_back(Queued {
                ready_at,
                message: message.clone(),
            });
        }
        self.queue.push_back(Queued { ready_at, message });
    }

    /// Decides the fate of message number `received + 1`.
    fn arrive(&mut self, message: Bytes, now: Instant) {
        self.received += 1;
        let n = self.received;
        // Four draws per message, used or not, so that a message's fate
        // depends on its number only, and turning one fault on does not
        // change where the others fall.
        let r_drop = self.rng.next_f64();
        let r_dup = self.rng.next_f64();
        let r_reorder = self.rng.next_f64();
        let r_jitter = self.rng.next_f64();
        let o = self.options.clone();
        let t = self.trace;
        let ready_at = o.delays().then(|| {
            let at = now + o.latency + o.jitter.mul_f64(r_jitter);
            let at = self.last_ready.map_or(at, |last| last.max(at));
            self.last_ready = Some(at);
            at
        });
        let faulted = n > o.grace;
        if faulted && r_drop < o.drop {
            tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = n, "chaos: dropped a message");
            return;
        }
        let copies = if faulted && r_dup < o.duplicate {
            tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = n, "chaos: duplicated a message");
            2
        } else {
            1
        };
        if let Some(h) = self.held.take() {
            tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = h.number, "chaos: reordered message {} after message {n}", h.number);
            self.push(ready_at, message, copies);
            self.push(ready_at.or(h.ready_at), h.message, h.copies);
        } else if faulted && r_reorder < o.reorder {
            tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = n, "chaos: held a message back");
            self.held = Some(Held {
                message,
                copies,
                number: n,
                ready_at,
                until: o.reorder_window.map(|w| now + w),
            });
        } else {
            self.push(ready_at, message, copies);
        }
    }

    /// Queues the held message, if any (its window passed, or the stream
    /// ended).
    fn release_held(&mut self, why: &str) {
        if let Some(h) = self.held.take() {
            let t = self.trace;
            tracing::debug!(seed = t.seed, connection = %t.conn, from = %t.sender, message_number = h.number, "chaos: a held message goes on alone ({why})");
            self.push(h.ready_at, h.message, h.copies);
        }
    }

    fn inner_ended(&mut self, end: Result<(), TransportError>) {
        self.release_held("the connection ended");
        self.end = Some(match end {
            Ok(()) => End::Clean,
            Err(e) => End::Failed(e),
        });
    }

    /// The next message, if its time has come.
    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        let due = self
            .queue
            .front()
            .is_some_and(|q| q.ready_at.is_none_or(|at| at <= now));
        if due {
            self.queue.pop_front().map(|q| q.message)
        } else {
            None
        }
    }

    /// The next time something is due: the first queued message, or the
    /// end of the held message's window.
    fn next_deadline(&self) -> Option<Instant> {
        let queued = self.queue.front().and_then(|q| q.ready_at);
        let held = self.held.as_ref().and_then(|h| h.until);
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What `recv` returns once the inner receiver ended and everything
    /// was handed on; `None` while it has not ended.
    fn report_end(&mut self, peer: &Address) -> Option<Result<Option<Bytes>, TransportError>> {
        let end = self.end.as_mut()?;
        Some(match std::mem::replace(end, End::Reported) {
            End::Clean => {
                *end = End::Clean;
                Ok(None)
            }
            End::Failed(e) => Err(e),
            End::Reported => Err(TransportError::Closed {
                peer: peer.to_string(),
            }),
        })
    }
}

/// Waits for `deadline`; forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => pending().await,
    }
}

impl MessageReceiver for ChaosReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let Self {
            inner,
            peer,
            plan,
            signal,
        } = self;
        loop {
            if let Some(reason) = signal.as_ref().and_then(|s| s.reason()) {
                // Reset by our own sender: this direction is dead too.
                *inner = None;
                *plan = None;
                return Err(reset_error(peer, reason));
            }
            let Some(rx) = inner.as_mut() else {
                return Err(TransportError::Closed {
                    peer: peer.to_string(),
                });
            };
            // Fast path: nothing to fault in this direction.
            let Some(p) = plan.as_mut() else {
                if signal.is_none() {
                    return rx.recv_dyn().await;
                }
                let notified = signal.as_ref().map(|s| s.notify.notified());
                tokio::pin!(notified);
                if let Some(n) = notified.as_mut().as_pin_mut() {
                    n.enable();
                }
                if signal.as_ref().is_some_and(|s| s.reason().is_some()) {
                    continue;
                }
                tokio::select! {
                    biased;
                    () = wait_reset(notified) => continue,
                    r = rx.recv_dyn() => return r,
                }
            };
            let now = Instant::now();
            if p.held
                .as_ref()
                .is_some_and(|h| h.until.is_some_and(|u| u <= now))
            {
                p.release_held("no other message within the reorder window");
            }
            if let Some(m) = p.pop_due(now) {
                return Ok(Some(m));
            }
            if p.queue.is_empty() && p.held.is_none() {
                if let Some(end) = p.report_end(peer) {
                    return end;
                }
            }
            let deadline = p.next_deadline();
            let reading = p.end.is_none() && p.queue.len() < MAX_QUEUED;
            let notified = signal.as_ref().map(|s| s.notify.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            if signal.as_ref().is_some_and(|s| s.reason().is_some()) {
                continue;
            }
            tokio::select! {
                biased;
                () = wait_reset(notified) => {}
                // Dropping a pending inner `recv` loses nothing (the
                // contract), and what arrived is in `p`, so a cancelled
                // `recv` of ours loses nothing either.
                r = async {
                    if reading { rx.recv_dyn().await } else { pending().await }
                } => match r {
                    Ok(Some(m)) => p.arrive(m, Instant::now()),
                    Ok(None) => p.inner_ended(Ok(())),
                    Err(e) => p.inner_ended(Err(e)),
                },
                () = sleep_until(deadline) => {}
            }
        }
    }
}

/// Waits until `notified` fires; forever when there is nothing to wait for.
async fn wait_reset(notified: Pin<&mut Option<Notified<'_>>>) {
    match notified.as_pin_mut() {
        Some(n) => n.await,
        None => pending().await,
    }
}
