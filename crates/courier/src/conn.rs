//! One connection: its sender, its table of calls in flight, and its
//! death. The reader task is in `reader.rs`, what it does with each frame
//! in `dispatch.rs`, and the call primitive on top of this in `call.rs`.
//!
//! # The outbox: how messages go out
//!
//! When nobody is writing on the connection and nothing waits (always,
//! with one call in flight), a message is written at once from its
//! sender's buffer, by its sender's own future: no copy, no task.
//!
//! When a write is under way (or the reader holds answers back, see
//! [`Conn::cork`]), a message of at most [`COPY_MAX`] bytes is copied into
//! the connection's queue and its sender goes on. When the write ends,
//! its writer takes everything queued meanwhile and hands it to the
//! transport as one batch ([`DynSender::send_batch_dyn`]: one system call,
//! one ring publish, one wake-up of the peer). There is no timer: a batch
//! goes as soon as the previous write is done. The writing of a batch
//! never belongs to a future that may be dropped: it is polled once where
//! it was taken, and if the medium cannot take it at once (a full socket)
//! it goes on as a task of its own on the engine's runtime. A caller whose
//! message was queued may give up (a timeout) without harm.
//!
//! A message written from its sender's buffer (the first case, and any
//! message larger than [`COPY_MAX`], which waits for the sender and writes
//! what was queued before it first) is written by its sender's future: if
//! that future is dropped part way, the stream is left mid-message and the
//! connection is killed, as the transport contract asks.
//!
//! The bytes queued and being written count against
//! `max_queued_response_bytes` (`limits.rs`): over it, the connection's
//! reader stops reading requests, and small messages wait for room.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;

use bytes::Bytes;
use courier_transport::{
    Address as WireAddr, Batch, BatchSent, BoxFuture, DynSender, Pacing, TransportError,
};
use rustc_hash::FxHashMap;
use tokio::runtime::Handle as RtHandle;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::cancel::{CancelReason, CancelToken};
use crate::error::{Error, Result};
use crate::flow::{End, Flow};
use crate::frame::{Header, Kind, Status};
use crate::limits::{ConnLimits, COPY_MAX};
use crate::liveness::Liveness;
use crate::paths::AddressSet;
use crate::progress::Progress;
use crate::stats::record::{ConnCounters, StreamCounters};
use crate::sync::{lock, poll_once};

/// Batches written one after another by the future that queued a message
/// before the rest is left to a task (a bound on the work one call does
/// for others).
const INLINE_BATCHES: usize = 4;

/// Bytes of stream items queued at which their producer writes them
/// itself rather than leave them to the flush it scheduled.
const ITEM_BATCH: usize = 64 * 1024;

/// A reply to a call: the response or error frame's header and payload.
pub(crate) type Reply = (Header, Bytes);

struct Pending {
    /// Keyed by sequence numbers this engine hands out: no peer chooses
    /// them, so a fast hash (FxHash) is safe; a reply only looks one up.
    calls: FxHashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection is dead: why.
    closed: Option<String>,
}

/// The messages waiting to be written, and the transport's sender.
struct Outbox {
    /// The sender while nobody writes with it; `None` while a writer has it
    /// (and once the connection is dead).
    sender: Option<Box<dyn DynSender>>,
    /// Small messages waiting for the next write.
    queue: Batch,
    /// An empty batch whose memory the next queue reuses.
    spare: Batch,
    /// Tickets given so far: message `n` of the connection has ticket `n`.
    tickets: u64,
    /// Senders of large messages waiting for the sender: a writer that
    /// ends hands it to them rather than writing the queue itself.
    waiting: usize,
    /// Messages and bytes sent so far (statistics).
    messages_out: u64,
    bytes_out: u64,
    /// A task is spawned to write what stream items queued
    /// ([`Conn::send_item`]).
    flush_scheduled: bool,
}

impl Outbox {
    /// Takes the queue to write it, leaving the spare batch in its place;
    /// returns it with the ticket of its last message.
    fn take_queue(&mut self) -> (Batch, u64) {
        let spare = std::mem::take(&mut self.spare);
        (std::mem::replace(&mut self.queue, spare), self.tickets)
    }
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    /// The connection itself, for the writer task it may start.
    me: Weak<Self>,
    /// The engine's runtime, where a write that could not finish at once
    /// goes on.
    rt: RtHandle,
    /// The path: the address dialed (one part of the peer's set), or the
    /// transport's view of the peer that connected.
    path: WireAddr,
    /// The path as a set, for `remote` until `known` is set.
    path_set: AddressSet,
    /// The peer's address set: the one dialed, or the one it announced in
    /// its Hello.
    known: OnceLock<AddressSet>,
    outbox: Mutex<Outbox>,
    /// The largest message the sender takes.
    max_message: usize,
    /// Tickets of the messages written so far (all up to this one).
    written: AtomicU64,
    /// Woken when messages were written, if `flush_waiters` is not zero.
    flushed: Notify,
    flush_waiters: AtomicUsize,
    /// Woken (one waiter at a time) when a writer gives the sender back
    /// while large messages wait.
    idle: Notify,
    /// Whether the sender wants messages that come together held back and
    /// batched ([`Pacing::Coalesce`]); if not, [`Conn::cork`] does nothing.
    coalesce: bool,
    /// Set by the reader while it handles messages that arrived together:
    /// the messages queued meanwhile (their answers) wait for the end of
    /// the burst, and go out as one batch ([`Conn::cork`]). Read under the
    /// outbox's lock, and cleared before [`Conn::uncork`] takes it: a
    /// message queued under a cork is seen by the uncork's flush.
    corked: AtomicBool,
    pending: Mutex<Pending>,
    /// Requests from the peer whose handlers had to wait (or run on other
    /// threads), by sequence: where a `Cancel` frame finds them.
    running: Mutex<FxHashMap<u64, CancelToken>>,
    /// Streams this engine opened (its calls made with `stream`), by
    /// sequence: where their items, credit and answer arrive (`flow.rs`).
    streams: Mutex<FxHashMap<u64, Arc<Flow>>>,
    /// Streams the peer opened, served here, by the request's sequence.
    served: Mutex<FxHashMap<u64, Arc<Flow>>>,
    /// Set while the reader waits for a request slot with none of this
    /// engine's own calls in flight on the connection: the first call
    /// started then wakes it (`call_started`), since its answer must be
    /// read (a handler calling back its caller, see `reader.rs`).
    reader_parked: AtomicBool,
    call_started: Notify,
    next_seq: AtomicU64,
    dead: AtomicBool,
    /// Woken when the connection is killed, to end sends blocked on it.
    killed: Notify,
    reader: OnceLock<AbortHandle>,
    pub(crate) progress: Arc<Progress>,
    /// Budgets for the requests this connection brings (`limits.rs`).
    pub(crate) limits: ConnLimits,
    /// When the peer was last heard from, and the keepalive probe
    /// outstanding (`liveness.rs`, `keepalive.rs`).
    pub(crate) liveness: Liveness,
    /// What the transport connection offers besides messages (bulk fast path).
    pub(crate) capabilities: OnceLock<courier_transport::Capabilities>,
    /// Messages, bytes and requests counted for the statistics.
    pub(crate) counters: ConnCounters,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        peer: WireAddr,
        sender: Box<dyn DynSender>,
        progress: Arc<Progress>,
        limits: ConnLimits,
        rt: RtHandle,
        counting: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            id,
            me: me.clone(),
            rt,
            path_set: AddressSet::single(peer.clone()),
            path: peer,
            known: OnceLock::new(),
            max_message: sender.max_message_size_dyn(),
            coalesce: sender.pacing_dyn() == Pacing::Coalesce,
            outbox: Mutex::new(Outbox {
                sender: Some(sender),
                queue: Batch::new(),
                spare: Batch::new(),
                tickets: 0,
                waiting: 0,
                messages_out: 0,
                bytes_out: 0,
                flush_scheduled: false,
            }),
            corked: AtomicBool::new(false),
            written: AtomicU64::new(0),
            flushed: Notify::new(),
            flush_waiters: AtomicUsize::new(0),
            idle: Notify::new(),
            pending: Mutex::new(Pending {
                calls: FxHashMap::default(),
                closed: None,
            }),
            running: Mutex::new(FxHashMap::default()),
            streams: Mutex::new(FxHashMap::default()),
            served: Mutex::new(FxHashMap::default()),
            reader_parked: AtomicBool::new(false),
            call_started: Notify::new(),
            next_seq: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            killed: Notify::new(),
            reader: OnceLock::new(),
            progress,
            limits,
            liveness: Liveness::default(),
            capabilities: OnceLock::new(),
            counters: ConnCounters::new(counting),
        })
    }

    /// Records the peer's address set: the one dialed, or the one it
    /// announced in its Hello.
    pub(crate) fn announce(&self, addr: AddressSet) {
        let _ = self.known.set(addr);
    }

    /// The peer's address: its set (dialed or announced), or the path
    /// alone (the transport's view of a peer that announced none).
    pub(crate) fn remote(&self) -> &AddressSet {
        self.known.get().unwrap_or(&self.path_set)
    }

    /// The path the connection takes: the part of the peer's set it
    /// dialed, or the transport's view of the peer that connected.
    pub(crate) fn path(&self) -> &WireAddr {
        &self.path
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn set_reader(&self, handle: AbortHandle) {
        let _ = self.reader.set(handle);
        if self.is_dead() {
            if let Some(r) = self.reader.get() {
                r.abort();
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means another thread panicked while holding
        // it; the table itself is always consistent.
        lock(&self.pending)
    }

    /// Sends one message: returns once it is queued (small) or written
    /// (large); see the module's docs. A failure that breaks the connection
    /// kills it, and the calls in flight on it fail.
    ///
    /// # Errors
    /// The connection is dead; the message is over the maximum size (then
    /// nothing is sent and the connection stays usable).
    pub(crate) async fn send(&self, parts: &[&[u8]]) -> Result<()> {
        self.send_ticket(parts).await.map(drop)
    }

    /// Sends one message and waits until it is written to the medium (for
    /// one-way requests and acknowledgements that the engine may be
    /// finalized right after).
    ///
    /// # Errors
    /// See [`Conn::send`]; the connection died before the message was
    /// written.
    pub(crate) async fn send_flushed(&self, parts: &[&[u8]]) -> Result<()> {
        self.send_then(parts, true).await
    }

    /// Closes the sending half gracefully, if nothing is being written:
    /// the transport delivers what was sent before it lets go (a QUIC
    /// stream's data is acknowledged). For the remote-shutdown answer,
    /// which the finalize that follows would otherwise cut off: QUIC hands
    /// written data to its connection task, which a finalize drops.
    pub(crate) async fn close_sending(&self) {
        let sender = lock(&self.outbox).sender.take();
        if let Some(mut sender) = sender {
            if let Err(e) = sender.close_dyn().await {
                tracing::debug!(peer = %self.remote(), "closing the sending half: {e}");
            }
        }
    }

    /// [`Conn::send_flushed`] if `flushed`, else [`Conn::send`].
    pub(crate) async fn send_then(&self, parts: &[&[u8]], flushed: bool) -> Result<()> {
        let ticket = self.send_ticket(parts).await?;
        if flushed {
            self.wait_written(ticket).await
        } else {
            Ok(())
        }
    }

    async fn send_ticket(&self, parts: &[&[u8]]) -> Result<u64> {
        let len = courier_transport::transport::message_len(parts);
        if len > self.max_message {
            return Err(Error::Transport(TransportError::MessageTooLarge {
                size: len as u64,
                max: self.max_message,
            }));
        }
        // The fast path, where one call in flight always is: nobody is
        // writing and nothing waits, so the message is written at once from
        // its sender's buffer, as if there were no outbox.
        let idle = {
            let mut ob = lock(&self.outbox);
            ob.messages_out += 1;
            ob.bytes_out += len as u64;
            if ob.queue.is_empty() && ob.waiting == 0 && !self.corked.load(Ordering::Relaxed) {
                ob.sender.take().map(|sender| {
                    ob.tickets += 1;
                    (sender, ob.tickets)
                })
            } else {
                None
            }
        };
        if let Some((sender, ticket)) = idle {
            return self.write_own(sender, parts, ticket).await;
        }
        if len <= COPY_MAX {
            self.enqueue(parts, len).await
        } else {
            // Large messages are rare, and costly anyway: their path gets a
            // box of its own, so that every other message's future stays
            // small.
            Box::pin(self.send_direct(parts, len)).await
        }
    }

    /// Sends a stream item: a small one is queued, not written, and a task
    /// spawned (once per batch) writes the queue. Spawned from the
    /// producer's thread, tokio runs that task when the producer yields
    /// (it is not stolen by another thread meanwhile): a producer that
    /// sends items back to back fills the queue, which goes out as one
    /// batch (one write, one wake-up of the peer) instead of one each.
    /// Past [`ITEM_BATCH`] queued bytes the producer writes the batch
    /// itself, so the peer gets items while it goes on. Large items are
    /// sent as any message ([`Conn::send`]).
    ///
    /// # Errors
    /// See [`Conn::send`].
    pub(crate) async fn send_item(&self, parts: &[&[u8]]) -> Result<()> {
        let len = courier_transport::transport::message_len(parts);
        if len > COPY_MAX {
            return self.send(parts).await;
        }
        while !self.limits.has_room(len) {
            Box::pin(self.wait_for_room(len)).await?;
        }
        let (write, schedule) = {
            let mut ob = lock(&self.outbox);
            if self.is_dead() {
                drop(ob);
                return Err(self.lost());
            }
            ob.messages_out += 1;
            ob.bytes_out += len as u64;
            ob.queue.push(parts);
            ob.tickets += 1;
            self.limits.add_queued(len);
            if ob.waiting > 0 || ob.sender.is_none() {
                // A writer is at work, or large messages wait for the
                // sender: they take the queue with them.
                (None, false)
            } else if ob.queue.bytes() >= ITEM_BATCH {
                let sender = ob.sender.take();
                (sender.map(|s| (s, ob.take_queue())), false)
            } else if ob.flush_scheduled {
                (None, false)
            } else {
                ob.flush_scheduled = true;
                (None, true)
            }
        };
        self.progress.activity();
        if let Some((sender, (batch, upto))) = write {
            self.write(sender, batch, upto).await;
        }
        if schedule {
            if let Some(me) = self.me.upgrade() {
                self.rt.spawn(async move {
                    lock(&me.outbox).flush_scheduled = false;
                    me.flush().await;
                });
            }
        }
        Ok(())
    }

    /// Queues a small message, and writes the queue if nobody is writing.
    async fn enqueue(&self, parts: &[&[u8]], len: usize) -> Result<u64> {
        loop {
            if self.limits.has_room(len) {
                let Some((ticket, write)) = self.queue(parts, len) else {
                    return Err(self.lost());
                };
                self.progress.activity();
                if let Some((sender, (batch, upto))) = write {
                    self.write(sender, batch, upto).await;
                }
                return Ok(ticket);
            }
            // Over the budget (rare): wait, in a box of its own, so that
            // the common path's future stays small.
            Box::pin(self.wait_for_room(len)).await?;
        }
    }

    /// Waits until the queue has room for `len` bytes.
    async fn wait_for_room(&self, len: usize) -> Result<()> {
        self.flush().await;
        loop {
            let mut drained = pin!(self.limits.drained());
            let mut killed = pin!(self.killed.notified());
            drained.as_mut().enable();
            killed.as_mut().enable();
            if self.is_dead() {
                return Err(self.lost());
            }
            if self.limits.has_room(len) {
                return Ok(());
            }
            tokio::select! {
                biased;
                () = killed => return Err(self.lost()),
                () = drained => {}
            }
        }
    }

    /// Queues a message: its ticket, and the sender with the queue if the
    /// caller is to write it. `None` if the connection is dead.
    #[allow(clippy::type_complexity)]
    fn queue(
        &self,
        parts: &[&[u8]],
        len: usize,
    ) -> Option<(u64, Option<(Box<dyn DynSender>, (Batch, u64))>)> {
        let mut ob = lock(&self.outbox);
        if self.is_dead() {
            return None;
        }
        ob.queue.push(parts);
        ob.tickets += 1;
        self.limits.add_queued(len);
        let write = match ob.sender.take() {
            // Large messages wait for the sender (leave it to them), or the
            // reader holds the queue until the end of a burst.
            Some(sender) if ob.waiting > 0 || self.corked.load(Ordering::Relaxed) => {
                ob.sender = Some(sender);
                None
            }
            Some(sender) => Some((sender, ob.take_queue())),
            None => None,
        };
        Some((ob.tickets, write))
    }

    /// Holds small messages in the queue until [`Conn::uncork`]: the reader
    /// calls it when it starts on messages that arrived together, so that
    /// the answers to a burst of requests (or the next calls of the callers
    /// a burst of responses woke) go out in one batch. Anything that has
    /// to wait for the outbox writes the queue first ([`Conn::flush`]), so
    /// a cork never holds a message for longer than the reader's burst.
    ///
    /// Returns whether it corked: not on a medium whose hand-overs are
    /// cheap ([`Pacing::Eager`]: shm, mem), where holding messages back
    /// only keeps the peer waiting.
    pub(crate) fn cork(&self) -> bool {
        if self.coalesce {
            self.corked.store(true, Ordering::Relaxed);
        }
        self.coalesce
    }

    /// Ends a [`Conn::cork`]: writes what was queued meanwhile.
    pub(crate) async fn uncork(&self) {
        self.corked.store(false, Ordering::Relaxed);
        self.flush().await;
    }

    /// Writes the queue now if nobody is writing, cork or not.
    async fn flush(&self) {
        let write = {
            let mut ob = lock(&self.outbox);
            if ob.queue.is_empty() || ob.waiting > 0 {
                None
            } else {
                ob.sender.take().map(|sender| (sender, ob.take_queue()))
            }
        };
        if let Some((sender, (batch, upto))) = write {
            self.write(sender, batch, upto).await;
        }
    }

    /// Writes `batch` (messages up to ticket `upto`) and what is queued
    /// after it: polled here once per batch, for a few batches; a write
    /// that cannot finish at once goes on as a task.
    async fn write(&self, mut sender: Box<dyn DynSender>, mut batch: Batch, mut upto: u64) {
        for _ in 0..INLINE_BATCHES {
            let mut sending = sender.send_batch_dyn(batch);
            let first = poll_once(&mut sending).await;
            match first {
                Poll::Ready(sent) => match self.written_batch(sent, upto) {
                    Some((s, b, u)) => (sender, batch, upto) = (s, b, u),
                    None => return,
                },
                Poll::Pending => return self.spawn_writer(sending, upto),
            }
        }
        self.spawn_writer(sender.send_batch_dyn(batch), upto);
    }

    /// Lets a batch being sent finish, and the queue after it be written,
    /// on a task of the engine's runtime.
    fn spawn_writer(&self, sending: BoxFuture<'static, BatchSent>, upto: u64) {
        let Some(me) = self.me.upgrade() else {
            // The connection is being dropped: nothing waits for the bytes.
            return;
        };
        self.rt.spawn(async move {
            let (mut sending, mut upto) = (sending, upto);
            loop {
                let mut killed = pin!(me.killed.notified());
                killed.as_mut().enable();
                if me.is_dead() {
                    return;
                }
                let sent = tokio::select! {
                    biased;
                    sent = me.progress.watch(&mut sending) => sent,
                    () = killed => return,
                };
                match me.written_batch(sent, upto) {
                    Some((sender, batch, u)) => {
                        sending = sender.send_batch_dyn(batch);
                        upto = u;
                    }
                    None => return,
                }
            }
        });
    }

    /// Accounts for a batch sent. Returns the next batch to write with its
    /// sender, or `None` once the sender is given back (or the connection
    /// is dead).
    fn written_batch(
        &self,
        sent: BatchSent,
        upto: u64,
    ) -> Option<(Box<dyn DynSender>, Batch, u64)> {
        let (sender, batch) = self.account(sent, upto)?;
        self.give_back(sender, Some(batch))
    }

    /// Accounts for a batch sent: its bytes leave the queued count; on
    /// success its messages are written (up to ticket `upto`) and the
    /// sender comes back with the batch, cleared; on failure the
    /// connection is killed.
    fn account(&self, sent: BatchSent, upto: u64) -> Option<(Box<dyn DynSender>, Batch)> {
        let BatchSent {
            sender,
            mut batch,
            result,
        } = sent;
        self.limits.remove_queued(batch.bytes());
        batch.clear();
        if let Err(e) = result {
            drop(sender);
            self.kill(&e.to_string());
            return None;
        }
        self.progress.activity();
        self.mark_written(upto);
        Some((sender, batch))
    }

    /// Returns the sender to the outbox, unless messages are queued and no
    /// large message waits for it: then they are the next batch to write.
    /// `spare` is the cleared batch the writer wrote, if it wrote one.
    fn give_back(
        &self,
        sender: Box<dyn DynSender>,
        spare: Option<Batch>,
    ) -> Option<(Box<dyn DynSender>, Batch, u64)> {
        let mut ob = lock(&self.outbox);
        if self.is_dead() {
            // Killed while writing: the sender is closed here.
            return None;
        }
        if let Some(spare) = spare {
            ob.spare = spare;
        }
        if ob.queue.is_empty() || ob.waiting > 0 {
            ob.sender = Some(sender);
            let waiting = ob.waiting > 0;
            drop(ob);
            if waiting {
                // One of them, the longest waiting: waking all would have
                // every one but the first go back to sleep (with 32 large
                // messages waiting, 31 useless wake-ups per message). If the
                // one woken gives up, tokio passes the wake-up on.
                self.idle.notify_one();
            }
            return None;
        }
        let (next, upto) = ob.take_queue();
        Some((sender, next, upto))
    }

    fn mark_written(&self, upto: u64) {
        self.written.fetch_max(upto, Ordering::SeqCst);
        if self.flush_waiters.load(Ordering::SeqCst) > 0 {
            self.flushed.notify_waiters();
        }
    }

    /// Waits until the message with `ticket` is written.
    async fn wait_written(&self, ticket: u64) -> Result<()> {
        if self.written.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        self.flush().await;
        self.flush_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = Decrement(&self.flush_waiters);
        loop {
            let mut flushed = pin!(self.flushed.notified());
            let mut killed = pin!(self.killed.notified());
            flushed.as_mut().enable();
            killed.as_mut().enable();
            if self.written.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            if self.is_dead() {
                return Err(self.lost());
            }
            tokio::select! {
                biased;
                () = flushed => {}
                () = killed => {}
            }
        }
    }

    /// Sends a large message from its own buffer: waits for the sender,
    /// writes what was queued before, then the message.
    ///
    /// The write races the connection's death: a send blocked on a peer
    /// that stopped reading ends with the connection when it is killed. If
    /// this future is dropped while the message is being written, the
    /// stream is left mid-message, so the connection is killed (the
    /// transport contract).
    async fn send_direct(&self, parts: &[&[u8]], len: usize) -> Result<u64> {
        self.limits.add_queued(len);
        let _counted = Unqueue {
            limits: &self.limits,
            bytes: len,
        };
        let mut waiter: Option<Waiter<'_>> = None;
        let (sender, before, ticket) = loop {
            let mut idle = pin!(self.idle.notified());
            let mut killed = pin!(self.killed.notified());
            idle.as_mut().enable();
            killed.as_mut().enable();
            {
                let mut ob = lock(&self.outbox);
                if self.is_dead() {
                    drop(ob);
                    return Err(self.lost());
                }
                if let Some(sender) = ob.sender.take() {
                    if let Some(w) = waiter.take() {
                        ob.waiting -= 1;
                        w.disarm();
                    }
                    let before = (!ob.queue.is_empty()).then(|| ob.take_queue());
                    ob.tickets += 1;
                    break (sender, before, ob.tickets);
                }
                if waiter.is_none() {
                    ob.waiting += 1;
                    waiter = Some(Waiter { conn: self });
                }
            }
            tokio::select! {
                biased;
                () = killed => return Err(self.lost()),
                () = idle => {}
            }
        };
        let mut cancelled = KillIfDropped {
            conn: self,
            armed: true,
        };
        let mut sender = Some(sender);
        if let Some((batch, upto)) = before {
            let Some(s) = sender.take() else {
                unreachable!("the sender was just taken")
            };
            let sent = self.until_killed(s.send_batch_dyn(batch)).await;
            let Some(sent) = sent else {
                cancelled.armed = false;
                return Err(self.lost());
            };
            match self.written_batch_keep(sent, upto) {
                Some(s) => sender = Some(s),
                None => {
                    cancelled.armed = false;
                    return Err(self.lost());
                }
            }
        }
        cancelled.armed = false;
        let Some(sender) = sender else {
            unreachable!("the sender is back")
        };
        self.write_own(sender, parts, ticket).await
    }

    /// Writes one message from its sender's buffer, with the sender taken
    /// from the outbox, then gives the sender back (or writes what was
    /// queued meanwhile).
    async fn write_own(
        &self,
        mut sender: Box<dyn DynSender>,
        parts: &[&[u8]],
        ticket: u64,
    ) -> Result<u64> {
        let mut cancelled = KillIfDropped {
            conn: self,
            armed: true,
        };
        let outcome = self.until_killed(sender.send_dyn(parts)).await;
        cancelled.armed = false;
        match outcome {
            None => Err(self.lost()),
            Some(Ok(())) => {
                self.progress.activity();
                self.mark_written(ticket);
                if let Some((sender, batch, upto)) = self.give_back(sender, None) {
                    self.write(sender, batch, upto).await;
                }
                Ok(ticket)
            }
            Some(Err(e)) if !e.is_fatal_to_connection() => {
                if let Some((sender, batch, upto)) = self.give_back(sender, None) {
                    self.spawn_writer(sender.send_batch_dyn(batch), upto);
                }
                Err(e.into())
            }
            Some(Err(e)) => {
                drop(sender);
                let reason = e.to_string();
                self.kill(&reason);
                Err(Error::ConnectionLost {
                    address: self.remote().to_string(),
                    reason,
                })
            }
        }
    }

    /// Like [`Conn::written_batch`], for a writer that keeps the sender.
    fn written_batch_keep(&self, sent: BatchSent, upto: u64) -> Option<Box<dyn DynSender>> {
        let (sender, batch) = self.account(sent, upto)?;
        let mut ob = lock(&self.outbox);
        if ob.spare.bytes() == 0 {
            ob.spare = batch;
        }
        Some(sender)
    }

    /// Runs a write until it ends or the connection is killed (`None`).
    async fn until_killed<F: Future + Unpin>(&self, write: F) -> Option<F::Output> {
        let mut write = self.progress.watch(write);
        let first = poll_once(&mut write).await;
        if let Poll::Ready(r) = first {
            return Some(r);
        }
        // The medium is full (rare): race the connection's death, in a box
        // of its own, so that the common path's future stays small.
        Box::pin(async move {
            let mut killed = pin!(self.killed.notified());
            killed.as_mut().enable();
            if self.is_dead() {
                return None;
            }
            tokio::select! {
                biased;
                r = &mut write => Some(r),
                () = killed => None,
            }
        })
        .await
    }

    /// The error a call gets once the connection is dead.
    pub(crate) fn lost(&self) -> Error {
        let reason = self
            .lock_pending()
            .closed
            .clone()
            .unwrap_or_else(|| "the connection is closed".into());
        if reason == FINALIZED {
            return Error::Finalized;
        }
        Error::ConnectionLost {
            address: self.remote().to_string(),
            reason,
        }
    }

    /// A sequence number for a frame that expects no reply.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a call in flight; returns its sequence number and receiver.
    pub(crate) fn register_call(&self) -> Result<(u64, oneshot::Receiver<Reply>)> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut p = self.lock_pending();
        if p.closed.is_some() {
            drop(p);
            return Err(self.lost());
        }
        p.calls.insert(seq, tx);
        drop(p);
        if self.reader_parked.load(Ordering::Acquire) {
            self.call_started.notify_one();
        }
        Ok((seq, rx))
    }

    /// Whether this engine has calls in flight on the connection (answers
    /// to read).
    pub(crate) fn has_calls(&self) -> bool {
        !self.lock_pending().calls.is_empty() || !lock(&self.streams).is_empty()
    }

    /// Waits until this engine starts a call on the connection (or one is
    /// in flight already). For the reader, while it waits for a request
    /// slot.
    pub(crate) async fn call_started(&self) {
        let started = self.call_started.notified();
        tokio::pin!(started);
        started.as_mut().enable();
        self.reader_parked.store(true, Ordering::Release);
        if !self.has_calls() {
            started.await;
        }
        self.reader_parked.store(false, Ordering::Release);
    }

    /// The caller side of a call given up before its answer came (its
    /// future dropped, or its deadline passed): forgets it, and tells the
    /// peer with a `Cancel` frame, so that its handler stops.
    pub(crate) fn cancel_call(&self, seq: u64) {
        let was_waiting = self.lock_pending().calls.remove(&seq).is_some();
        if was_waiting {
            self.send_detached(Header {
                seq,
                ..Header::new(Kind::Cancel)
            });
        }
    }

    /// Sends a header-only frame from code that cannot wait (a drop):
    /// tried at once (an idle connection takes it without waiting, which
    /// is the common case), then, if it must wait, finished by a task.
    /// Nothing is sent on a dead connection.
    pub(crate) fn send_detached(&self, header: Header) {
        self.send_detached_with(header, &[]);
    }

    /// [`Conn::send_detached`] with a payload.
    pub(crate) fn send_detached_with(&self, header: Header, payload: &[u8]) {
        if self.is_dead() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let payload = payload.to_vec();
        let mut send = Box::pin(async move {
            let _ = me.send(&[&header.encode(), &payload]).await;
        });
        let _runtime = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if send.as_mut().poll(&mut cx).is_pending() {
            self.rt.spawn(send);
        }
    }

    /// Registers a stream this engine opens: its sequence number, and its
    /// flow (granting `window` for the response stream), in the table
    /// where its items and answer will arrive.
    ///
    /// # Errors
    /// The connection is dead.
    pub(crate) fn open_stream(
        &self,
        window: u64,
        counters: Arc<StreamCounters>,
    ) -> Result<(u64, Arc<Flow>)> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow::new(window, 0, counters));
        {
            // Under the pending lock, so that `kill` cannot come between
            // the check and the insertion and leave the stream waiting.
            let p = self.lock_pending();
            if p.closed.is_some() {
                drop(p);
                return Err(self.lost());
            }
            lock(&self.streams).insert(seq, flow.clone());
        }
        if self.reader_parked.load(Ordering::Acquire) {
            self.call_started.notify_one();
        }
        Ok((seq, flow))
    }

    /// The flow of a stream this engine opened.
    pub(crate) fn opened_stream(&self, seq: u64) -> Option<Arc<Flow>> {
        lock(&self.streams).get(&seq).cloned()
    }

    /// A stream this engine opened is done with: forgotten; with `cancel`
    /// (it ended before the handler's answer), the peer is told.
    pub(crate) fn close_stream(&self, seq: u64, cancel: bool) {
        let was_open = lock(&self.streams).remove(&seq).is_some();
        if was_open && cancel {
            self.send_detached(Header {
                seq,
                ..Header::new(Kind::Cancel)
            });
        }
    }

    /// Serves a stream the peer opened with request `seq`. On a dead
    /// connection the flow ends at once.
    pub(crate) fn serve_stream(&self, seq: u64, flow: Arc<Flow>) {
        let p = self.lock_pending();
        if p.closed.is_some() {
            drop(p);
            flow.finish(End::Lost);
            return;
        }
        lock(&self.served).insert(seq, flow);
    }

    /// The flow of a stream the peer opened.
    pub(crate) fn served_stream(&self, seq: u64) -> Option<Arc<Flow>> {
        lock(&self.served).get(&seq).cloned()
    }

    /// A stream the peer opened is done with (its request is over).
    pub(crate) fn unserve_stream(&self, seq: u64) {
        lock(&self.served).remove(&seq);
    }

    /// Makes a request from the peer reachable by a `Cancel` frame.
    pub(crate) fn track_request(&self, seq: u64, token: CancelToken) {
        if self.is_dead() {
            token.fire(CancelReason::ConnectionLost);
            return;
        }
        lock(&self.running).insert(seq, token);
    }

    /// A request from the peer is done.
    pub(crate) fn untrack_request(&self, seq: u64) {
        lock(&self.running).remove(&seq);
    }

    /// A `Cancel` frame came for request `seq`: cancels it if it is still
    /// running. Returns whether it was (a cancel for an unknown or finished
    /// request is ignored).
    pub(crate) fn cancel_request(&self, seq: u64) -> bool {
        let token = lock(&self.running).get(&seq).cloned();
        token.is_some_and(|t| t.fire(CancelReason::Caller))
    }

    /// Takes call `seq` out of the table, to complete it later (a response
    /// whose payload is still to be pulled, `overflow.rs`): the call's
    /// caller waits on, and the connection's death no longer fails it.
    pub(crate) fn take_call(&self, seq: u64) -> Option<oneshot::Sender<Reply>> {
        self.lock_pending().calls.remove(&seq)
    }

    /// The largest message the sender takes (header included).
    pub(crate) fn max_message(&self) -> usize {
        self.max_message
    }

    /// Forgets a call (completed, timed out or cancelled).
    pub(crate) fn forget_call(&self, seq: u64) {
        self.lock_pending().calls.remove(&seq);
    }

    /// Completes a call with its reply. Returns false for an unknown sequence
    /// (a late reply after a timeout: dropped).
    pub(crate) fn complete(&self, header: Header, payload: Bytes) -> bool {
        if header.kind == Kind::Error {
            self.counters
                .errors_received
                .fetch_add(1, Ordering::Relaxed);
        }
        let tx = self.lock_pending().calls.remove(&header.seq);
        match tx {
            Some(tx) => {
                let _ = tx.send((header, payload));
                true
            }
            // The answer that ends a stream this engine opened (its table
            // entry goes when its owner is done).
            None => match self.opened_stream(header.seq) {
                Some(flow) => {
                    flow.finish(End::Reply(header, payload));
                    true
                }
                None => false,
            },
        }
    }

    /// Messages and bytes sent on the connection so far (statistics).
    pub(crate) fn sent(&self) -> (u64, u64) {
        let ob = lock(&self.outbox);
        (ob.messages_out, ob.bytes_out)
    }

    /// This engine's calls waiting for answers on the connection.
    pub(crate) fn calls_in_flight(&self) -> usize {
        self.lock_pending().calls.len()
    }

    /// Marks the connection dead: every call in flight fails with `reason`,
    /// the reader stops, the sender is closed (now, or when the send under
    /// way ends).
    pub(crate) fn kill(&self, reason: &str) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        let calls = {
            let mut p = self.lock_pending();
            p.closed = Some(reason.to_owned());
            std::mem::take(&mut p.calls)
        };
        // Dropping the senders wakes every waiting call.
        drop(calls);
        // Streams end, both ways: their owners see the reason.
        let opened = std::mem::take(&mut *lock(&self.streams));
        let served = std::mem::take(&mut *lock(&self.served));
        for flow in opened.into_values().chain(served.into_values()) {
            flow.finish(End::Lost);
        }
        self.killed.notify_waiters();
        // No answer can reach the peer any more: its requests' handlers
        // stop (one-way requests are not tracked; they go on).
        let running = std::mem::take(&mut *lock(&self.running));
        for token in running.into_values() {
            token.fire(CancelReason::ConnectionLost);
        }
        let (sender, queued) = {
            let mut ob = lock(&self.outbox);
            let queued = ob.queue.bytes();
            ob.queue.clear();
            (ob.sender.take(), queued)
        };
        self.limits.remove_queued(queued);
        // Closes this direction (a writer under way closes it when it ends).
        drop(sender);
        if let Some(r) = self.reader.get() {
            r.abort();
        }
    }

    /// Sends an error frame answering `req`.
    pub(crate) async fn send_error(
        &self,
        req: &Header,
        status: Status,
        message: &str,
    ) -> Result<()> {
        self.send_error_payload(req, status, message.as_bytes())
            .await
    }

    /// Sends an error frame answering `req`, with `payload` as it is (a
    /// status whose payload is not only a message, `TooLarge`).
    pub(crate) async fn send_error_payload(
        &self,
        req: &Header,
        status: Status,
        payload: &[u8],
    ) -> Result<()> {
        self.counters.errors_sent.fetch_add(1, Ordering::Relaxed);
        let h = Header {
            kind: Kind::Error,
            flags: 0,
            status,
            provider: req.provider,
            rpc: req.rpc,
            seq: req.seq,
        };
        self.send(&[&h.encode(), payload]).await
    }
}

/// Kills the connection if a send is dropped part way (see [`Conn::send`]).
struct KillIfDropped<'a> {
    conn: &'a Conn,
    armed: bool,
}

impl Drop for KillIfDropped<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn
                .kill("a message was cancelled part way through being sent");
        }
    }
}

/// Takes a large message's bytes off the queued count when it is written
/// (or given up).
struct Unqueue<'a> {
    limits: &'a ConnLimits,
    bytes: usize,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        self.limits.remove_queued(self.bytes);
    }
}

/// A large message waiting for the sender, counted in the outbox's
/// `waiting`. If it gives up (its future dropped), the count goes down, and
/// a queue the sender was handed over for is written.
struct Waiter<'a> {
    conn: &'a Conn,
}

impl Waiter<'_> {
    /// The waiter got the sender: already uncounted.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let conn = self.conn;
        let mut ob = lock(&conn.outbox);
        ob.waiting -= 1;
        if ob.waiting > 0 || ob.queue.is_empty() {
            return;
        }
        let Some(sender) = ob.sender.take() else {
            return;
        };
        let (batch, upto) = ob.take_queue();
        drop(ob);
        conn.spawn_writer(sender.send_batch_dyn(batch), upto);
    }
}

/// Decrements a count when dropped.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reason recorded on connections closed by finalize.
pub(crate) const FINALIZED: &str = "the engine was finalized";

#[cfg(test)]
mod tests {
    //! The outbox without sockets: a sender that records what it is handed
    //! and writes only when the test lets it.

    use std::time::Duration;

    use courier_transport::MessageSender;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config::Config;

    /// What the sender was handed: one entry per write, with its messages.
    type Log = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

    /// Records each write; each waits for a permit of `gate`.
    struct Gated {
        log: Log,
        gate: Arc<Semaphore>,
        pacing: Pacing,
    }

    impl Gated {
        async fn pass(&self) -> std::result::Result<(), TransportError> {
            match self.gate.acquire().await {
                Ok(permit) => {
                    permit.forget();
                    Ok(())
                }
                Err(_) => Err(TransportError::Closed {
                    peer: "gated".into(),
                }),
            }
        }
    }

    impl MessageSender for Gated {
        fn max_message_size(&self) -> usize {
            1 << 20
        }

        fn pacing(&self) -> Pacing {
            self.pacing
        }

        async fn transmit(
            &mut self,
            parts: &[&[u8]],
            _len: usize,
        ) -> std::result::Result<(), TransportError> {
            self.pass().await?;
            lock(&self.log).push(vec![parts.concat()]);
            Ok(())
        }

        async fn transmit_batch(
            &mut self,
            batch: &Batch,
        ) -> std::result::Result<(), TransportError> {
            self.pass().await?;
            lock(&self.log).push(batch.iter().map(<[u8]>::to_vec).collect());
            Ok(())
        }

        async fn close(&mut self) -> std::result::Result<(), TransportError> {
            Ok(())
        }
    }

    /// A connection whose writes pass `open` permits, then wait.
    fn conn(open: usize, max_queued: usize) -> (Arc<Conn>, Log, Arc<Semaphore>) {
        conn_paced(open, max_queued, Pacing::Coalesce)
    }

    fn conn_paced(
        open: usize,
        max_queued: usize,
        pacing: Pacing,
    ) -> (Arc<Conn>, Log, Arc<Semaphore>) {
        let log = Log::default();
        let gate = Arc::new(Semaphore::new(open));
        let sender = Gated {
            log: log.clone(),
            gate: gate.clone(),
            pacing,
        };
        let config = Config {
            max_queued_response_bytes: max_queued,
            ..Config::default()
        };
        let conn = Conn::new(
            1,
            "test://peer".parse().unwrap(),
            Box::new(sender),
            Arc::new(Progress::new(Duration::ZERO, Duration::ZERO)),
            ConnLimits::new(&config),
            tokio::runtime::Handle::current(),
            true,
        );
        (conn, log, gate)
    }

    fn writes(log: &Log) -> Vec<Vec<Vec<u8>>> {
        lock(log).clone()
    }

    /// Polls a future once.
    fn poll_now<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// Runs the other tasks until `done` says so (bounded: a hang fails).
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the condition never came true");
    }

    #[tokio::test]
    async fn messages_queued_during_a_write_go_out_as_one_batch() {
        let (conn, log, gate) = conn(0, 1 << 20);
        // The first message takes the sender and waits in its write.
        let first = conn.send(&[b"first"]);
        tokio::pin!(first);
        assert!(poll_now(first.as_mut()).is_pending());
        // Meanwhile ten more are queued, each at once.
        for i in 0..10u8 {
            conn.send(&[b"m", &[i]]).await.unwrap();
        }
        gate.add_permits(2);
        first.await.unwrap();
        until(|| writes(&log).len() == 2).await;
        let w = writes(&log);
        assert_eq!(w[0], [b"first".to_vec()]);
        let batch: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'm', i]).collect();
        assert_eq!(w[1], batch, "one batch, in order");
        assert!(conn.limits.has_room(1 << 20), "nothing left counted");
    }

    #[tokio::test]
    async fn stream_items_sent_back_to_back_go_out_as_one_batch() {
        let (conn, log, _gate) = conn(10, 1 << 20);
        // The producer queues its items without yielding: nothing is
        // written yet; the flush it scheduled runs once it yields.
        for i in 0..5u8 {
            conn.send_item(&[b"i", &[i]]).await.unwrap();
        }
        assert!(
            writes(&log).is_empty(),
            "written before the producer yielded"
        );
        until(|| writes(&log).len() == 1).await;
        let batch: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'i', i]).collect();
        assert_eq!(writes(&log)[0], batch, "one batch, in order");
        // Past ITEM_BATCH bytes, the producer writes the batch itself.
        let big = vec![0u8; 8 * 1024];
        for _ in 0..(ITEM_BATCH / big.len()) {
            conn.send_item(&[&big]).await.unwrap();
        }
        assert_eq!(writes(&log).len(), 2, "a full batch waits for no flush");
        assert!(conn.limits.has_room(1 << 20), "nothing left counted");
    }

    #[tokio::test]
    async fn one_message_at_a_time_is_written_at_once_without_a_batch() {
        let (conn, log, _gate) = conn(3, 1 << 20);
        conn.send(&[b"a"]).await.unwrap();
        conn.send(&[b"b"]).await.unwrap();
        conn.send_flushed(&[b"c"]).await.unwrap();
        assert_eq!(
            writes(&log),
            [[b"a".to_vec()], [b"b".to_vec()], [b"c".to_vec()]]
        );
    }

    #[tokio::test]
    async fn a_cork_holds_messages_until_it_is_lifted() {
        let (conn, log, _gate) = conn(10, 1 << 20);
        assert!(conn.cork());
        conn.send(&[b"x"]).await.unwrap();
        conn.send(&[b"y"]).await.unwrap();
        assert!(writes(&log).is_empty(), "written under the cork");
        conn.uncork().await;
        assert_eq!(writes(&log), [[b"x".to_vec(), b"y".to_vec()]]);
    }

    #[tokio::test]
    async fn an_eager_medium_is_never_corked() {
        let (conn, log, _gate) = conn_paced(10, 1 << 20, Pacing::Eager);
        assert!(!conn.cork());
        conn.send(&[b"x"]).await.unwrap();
        assert_eq!(writes(&log), [[b"x".to_vec()]], "written at once");
        conn.uncork().await;
        assert_eq!(writes(&log).len(), 1);
    }

    #[tokio::test]
    async fn send_flushed_returns_once_written_and_lifts_a_cork() {
        let (conn, log, gate) = conn(0, 1 << 20);
        assert!(conn.cork());
        let flushed = conn.send_flushed(&[b"ack"]);
        tokio::pin!(flushed);
        assert!(poll_now(flushed.as_mut()).is_pending());
        assert!(writes(&log).is_empty());
        gate.add_permits(1);
        flushed.await.unwrap();
        assert_eq!(writes(&log), [[b"ack".to_vec()]]);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_max_queued_response_bytes() {
        let (conn, log, gate) = conn(0, 100);
        let first = conn.send(&[&[1u8; 10]]);
        tokio::pin!(first);
        assert!(poll_now(first.as_mut()).is_pending());
        // 10 bytes being written from their sender's own buffer; the queue
        // takes 100 more, the budget, and not a byte more.
        conn.send(&[&[2u8; 60]]).await.unwrap();
        conn.send(&[&[2u8; 40]]).await.unwrap();
        let over = conn.send(&[&[3u8; 1]]);
        tokio::pin!(over);
        assert!(
            poll_now(over.as_mut()).is_pending(),
            "queued over the budget"
        );
        gate.add_permits(3);
        first.await.unwrap();
        over.await.unwrap();
        until(|| writes(&log).iter().map(Vec::len).sum::<usize>() == 4).await;
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_may_give_up_without_harm() {
        let (conn, log, gate) = conn(0, 100);
        let first = conn.send(&[b"first"]);
        tokio::pin!(first);
        assert!(poll_now(first.as_mut()).is_pending());
        conn.send(&[&[1u8; 100]]).await.unwrap();
        {
            // Over the budget: it waits; then its caller gives up (a
            // timeout), and its message is not sent.
            let over = conn.send(&[b"given up"]);
            tokio::pin!(over);
            assert!(poll_now(over.as_mut()).is_pending());
        }
        gate.add_permits(3);
        first.await.unwrap();
        conn.send_flushed(&[b"after"]).await.unwrap();
        assert!(!conn.is_dead(), "the connection survived");
        let w = writes(&log);
        assert_eq!(w[0], [b"first".to_vec()]);
        assert_eq!(w[1], [vec![1u8; 100]]);
        assert_eq!(w[2], [b"after".to_vec()]);
        assert_eq!(w.len(), 3, "the message given up was not sent");
    }

    #[tokio::test]
    async fn a_dead_connection_drops_its_queue_and_refuses_more() {
        let (conn, _log, _gate) = conn(0, 1 << 20);
        let first = conn.send(&[b"stuck"]);
        tokio::pin!(first);
        assert!(poll_now(first.as_mut()).is_pending());
        conn.send(&[b"queued"]).await.unwrap();
        let flushed = conn.send_flushed(&[b"waits"]);
        tokio::pin!(flushed);
        assert!(poll_now(flushed.as_mut()).is_pending());
        conn.kill("the test ended it");
        for r in [first.await, flushed.await, conn.send(&[b"late"]).await] {
            match r {
                Err(Error::ConnectionLost { reason, .. }) => {
                    assert_eq!(reason, "the test ended it");
                }
                other => panic!("expected a lost connection, got {other:?}"),
            }
        }
        assert!(
            conn.limits.has_room(1 << 20),
            "the queue's bytes were released"
        );
    }

    #[tokio::test]
    async fn a_large_message_waits_its_turn_and_keeps_the_order() {
        let (conn, log, gate) = conn(0, 64 << 20);
        let first = conn.send(&[b"small 1"]);
        tokio::pin!(first);
        assert!(poll_now(first.as_mut()).is_pending());
        conn.send(&[b"small 2"]).await.unwrap();
        let big = vec![7u8; COPY_MAX + 1];
        let parts: [&[u8]; 1] = [&big];
        let large = conn.send(&parts);
        tokio::pin!(large);
        assert!(
            poll_now(large.as_mut()).is_pending(),
            "it waits for the sender"
        );
        gate.add_permits(3);
        first.await.unwrap();
        large.await.unwrap();
        let w = writes(&log);
        assert_eq!(w[0], [b"small 1".to_vec()]);
        assert_eq!(w[1], [b"small 2".to_vec()], "what was queued before it");
        assert_eq!(w[2], std::slice::from_ref(&big));
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_and_the_connection_stays() {
        let (conn, log, _gate) = conn(1, 1 << 20);
        let err = conn.send(&[&vec![0u8; (1 << 20) + 1]]).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport(TransportError::MessageTooLarge { .. })
            ),
            "{err}"
        );
        conn.send(&[b"fits"]).await.unwrap();
        assert_eq!(writes(&log), [[b"fits".to_vec()]]);
    }
}
