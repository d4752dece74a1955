//! The task that runs one group's foca: messages in through a channel,
//! timers on tokio's clock, messages out as one-way RPCs sent from tasks
//! of their own, so that neither a handler nor this task ever waits on the
//! network (but when leaving, which waits for its goodbyes to be sent).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use courier::{Bytes, Engine, RawRemoteFunction};
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::id::Id;
use super::view::{Member, MemberState, View};
use super::wire::{self, Inbound, Router, LEAVE_RPC, SWIM_RPC};

/// What a [`crate::Group`] asks its task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send foca's announce (a join request) to the member at `address`;
    /// `sent` says whether it could be sent.
    Announce {
        address: String,
        sent: oneshot::Sender<Result<(), String>>,
    },
    /// Tell the members, leave, and stop; `done` once the goodbyes are sent.
    Leave { done: oneshot::Sender<()> },
}

type Swim = Foca<Id, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// One group's foca and what it needs.
pub(crate) struct Driver {
    pub(crate) foca: Swim,
    pub(crate) runtime: AccumulatingRuntime<Id>,
    /// When each pending timer fires, by sequence number.
    pub(crate) due: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(crate) timers: HashMap<u64, Timer<Id>>,
    pub(crate) next_timer: u64,
    pub(crate) engine: Engine,
    pub(crate) group: Arc<str>,
    pub(crate) swim: RawRemoteFunction,
    pub(crate) leave: RawRemoteFunction,
    /// How long one message may take to be sent before it is given up.
    pub(crate) send_timeout: Duration,
    /// Members that said they leave: address → generation.
    pub(crate) departed: HashMap<String, u64>,
    pub(crate) left: bool,
    pub(crate) view: watch::Sender<View>,
    /// Whether some member has taken us in (foca's `Active`).
    pub(crate) active: watch::Sender<bool>,
    pub(crate) router: Arc<Router>,
    pub(crate) token: u64,
}

/// Most members a member announces itself to directly when it is taken in
/// (see [`Driver::announce_to_known`]).
const FAN_OUT_MAX: usize = 64;

impl Driver {
    /// Runs until the group is left, every handle on it is dropped, or the
    /// engine finalizes.
    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let engine = self.engine.clone();
        let finalized = engine.wait_for_finalize();
        tokio::pin!(finalized);
        self.refresh_view();
        loop {
            let next = self.due.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                () = &mut finalized => {
                    tracing::debug!(group = %self.group, "the engine finalized: the group's task stops");
                    break;
                }
                command = commands.recv() => match command {
                    None => {
                        tracing::debug!(group = %self.group, "every handle on the group was dropped: its task stops");
                        break;
                    }
                    Some(Command::Leave { done }) => {
                        self.leave_group().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(Command::Announce { address, sent }) => {
                        let to = Id::somebody_at(&address);
                        match self.foca.announce(to, &mut self.runtime) {
                            Ok(()) => self.flush(Some((address, sent))),
                            Err(e) => {
                                let _ = sent.send(Err(format!("foca refused to announce: {e}")));
                            }
                        }
                    }
                },
                Some(message) = inbox.recv() => self.inbound(message),
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.fire_due();
                }
            }
            self.flush(None);
        }
        self.router.remove(&self.group, self.token);
    }

    /// A message from the network.
    fn inbound(&mut self, message: Inbound) {
        match message {
            Inbound::Swim(data) => {
                if let Err(e) = self.foca.handle_data(&data, &mut self.runtime) {
                    match e {
                        foca::Error::Decode(_) | foca::Error::MalformedPacket => {
                            self.router.counters.malformed();
                        }
                        _ => self.router.counters.refused(),
                    }
                    tracing::debug!(group = %self.group, "membership message not applied: {e}");
                }
            }
            Inbound::Leave(id) => {
                if id.addr == self.foca.identity().addr {
                    self.router.counters.refused();
                    tracing::debug!(group = %self.group, "ignored a leave notice about this member's own address");
                    return;
                }
                if self.departed.get(&id.addr) == Some(&id.generation) {
                    // Heard already (from it, or relayed).
                    return;
                }
                tracing::debug!(group = %self.group, member = %id.addr, "a member leaves");
                self.departed.insert(id.addr.clone(), id.generation);
                // Relayed once, by each member that hears it first, to every
                // member it knows: the leaver may not have known them all (a
                // member that just joined, or just restarted at its address).
                let notice =
                    wire::encode(&self.group, &postcard::to_allocvec(&id).unwrap_or_default());
                let me = &self.foca.identity().addr;
                let others: Vec<String> = self
                    .foca
                    .iter_membership_state()
                    .map(|m| m.id().addr.clone())
                    .filter(|a| *a != id.addr && a != me)
                    .collect();
                for to in others {
                    let engine = self.engine.clone();
                    let function = self.leave.clone();
                    let payload = notice.clone();
                    let timeout = self.send_timeout;
                    tokio::spawn(async move {
                        if let Err(e) = send_one(&engine, &function, &to, &payload, timeout).await {
                            tracing::debug!(to, "leave notice not relayed: {e}");
                        }
                    });
                }
                let down = foca::Member::new(id, 0, foca::State::Down);
                if let Err(e) = self
                    .foca
                    .apply_many(std::iter::once(down), true, &mut self.runtime)
                {
                    tracing::debug!(group = %self.group, "leave notice not applied: {e}");
                }
            }
        }
    }

    /// Hands foca every timer that is due.
    fn fire_due(&mut self) {
        let now = Instant::now();
        let mut fired = Vec::new();
        while let Some(Reverse((at, seq))) = self.due.peek().copied() {
            if at > now {
                break;
            }
            self.due.pop();
            if let Some(timer) = self.timers.remove(&seq) {
                fired.push(timer);
            }
        }
        // Ordered as foca asks, should several be due at once.
        fired.sort();
        for timer in fired {
            if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(group = %self.group, "timer not applied: {e}");
            }
        }
    }

    /// Does what foca asked for: send, schedule, notify; then publishes
    /// the view if it changed. The outcome of messages to `report`'s
    /// address goes to its sender.
    fn flush(&mut self, report: Option<(String, oneshot::Sender<Result<(), String>>)>) {
        if self.flush_once(report) {
            self.announce_to_known();
            self.flush_once(None);
        }
        self.refresh_view();
    }

    /// Taken in: announce to the members the feed named (up to
    /// [`FAN_OUT_MAX`]), so that each learns of this member from it rather
    /// than by gossip alone. When many join at once, gossip bounded by
    /// `max_transmissions` misses a pair now and then, and the pair then
    /// waits for a probe or the periodic announce (seconds: 15 s once for
    /// 16 members with the default options); with this, a member that
    /// joined earlier hears from each later one, which knows it from its
    /// feed.
    fn announce_to_known(&mut self) {
        let me = self.foca.identity().addr.clone();
        let known: Vec<Id> = self
            .foca
            .iter_members()
            .map(|m| m.id().clone())
            .filter(|id| id.addr != me)
            .take(FAN_OUT_MAX)
            .collect();
        for id in known {
            if let Err(e) = self.foca.announce(id, &mut self.runtime) {
                tracing::debug!(group = %self.group, "foca refused to announce: {e}");
            }
        }
    }

    /// Sends what foca wants sent, schedules its timers, handles its
    /// notifications; true when it was just taken in.
    fn flush_once(
        &mut self,
        mut report: Option<(String, oneshot::Sender<Result<(), String>>)>,
    ) -> bool {
        let mut taken_in = false;
        while let Some((to, data)) = self.runtime.to_send() {
            let tell = match &report {
                Some((address, _)) if *address == to.addr => report.take().map(|(_, tx)| tx),
                _ => None,
            };
            self.send(to.addr, data, tell);
        }
        if let Some((_, tx)) = report {
            let _ = tx.send(Err("foca sent nothing to it".to_owned()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let seq = self.next_timer;
            self.next_timer += 1;
            self.timers.insert(seq, timer);
            self.due.push(Reverse((Instant::now() + after, seq)));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::Active => {
                    tracing::debug!(group = %self.group, "taken in by the group");
                    self.active.send_replace(true);
                    taken_in = true;
                }
                OwnedNotification::Rejoin(id) => tracing::info!(
                    group = %self.group,
                    generation = id.generation,
                    "declared down by the group: rejoined as a new generation"
                ),
                OwnedNotification::Defunct => tracing::warn!(
                    group = %self.group,
                    "declared down by the group, and could not rejoin"
                ),
                OwnedNotification::Idle => {
                    tracing::debug!(group = %self.group, "no other live member known");
                }
                OwnedNotification::MemberUp(id) => {
                    tracing::debug!(group = %self.group, member = %id.addr, "member up");
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::debug!(group = %self.group, member = %id.addr, "member down");
                }
                OwnedNotification::Rename(old, new) => tracing::debug!(
                    group = %self.group,
                    member = %new.addr,
                    old = old.generation,
                    new = new.generation,
                    "member restarted or rejoined"
                ),
            }
        }
        taken_in
    }

    /// Sends one foca message from a task of its own.
    fn send(&self, to: String, data: Bytes, report: Option<oneshot::Sender<Result<(), String>>>) {
        let engine = self.engine.clone();
        let function = self.swim.clone();
        let payload = wire::encode(&self.group, &data);
        let timeout = self.send_timeout;
        let group = self.group.clone();
        tokio::spawn(async move {
            let outcome = send_one(&engine, &function, &to, &payload, timeout).await;
            if let Err(e) = &outcome {
                tracing::debug!(%group, to, "membership message not sent: {e}");
            }
            if let Some(tx) = report {
                let _ = tx.send(outcome);
            }
        });
    }

    /// Tells every member it knows that this one leaves, down ones
    /// included (one believed down may have come back at its address),
    /// and each relays it once to those it knows; has foca declare it
    /// down, and waits until those messages are sent.
    async fn leave_group(&mut self) {
        let me = self.foca.identity().clone();
        let notice = wire::encode(&self.group, &postcard::to_allocvec(&me).unwrap_or_default());
        let mut sends = JoinSet::new();
        let members: Vec<String> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr.clone())
            .filter(|a| *a != me.addr)
            .collect();
        for to in members {
            let engine = self.engine.clone();
            let function = self.leave.clone();
            let payload = notice.clone();
            let timeout = self.send_timeout;
            sends.spawn(async move { send_one(&engine, &function, &to, &payload, timeout).await });
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(group = %self.group, "foca could not leave: {e}");
        }
        while let Some((to, data)) = self.runtime.to_send() {
            let engine = self.engine.clone();
            let function = self.swim.clone();
            let payload = wire::encode(&self.group, &data);
            let timeout = self.send_timeout;
            sends.spawn(
                async move { send_one(&engine, &function, &to.addr, &payload, timeout).await },
            );
        }
        while sends.join_next().await.is_some() {}
        self.left = true;
        tracing::info!(group = %self.group, "left the group");
        // What else foca asked for no longer matters.
        while self.runtime.to_schedule().is_some() {}
        while self.runtime.to_notify().is_some() {}
        self.refresh_view();
    }

    /// Publishes the view if a member or a state changed.
    fn refresh_view(&mut self) {
        let me = self.foca.identity();
        let mut members: Vec<Member> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().addr != me.addr)
            .map(|m| {
                let id = m.id();
                let state = match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down if self.departed.get(&id.addr) == Some(&id.generation) => {
                        MemberState::Left
                    }
                    foca::State::Down => MemberState::Down,
                };
                Member {
                    address: id.addr.clone(),
                    state,
                    generation: id.generation,
                }
            })
            .collect();
        members.push(Member {
            address: me.addr.clone(),
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            generation: me.generation,
        });
        members.sort_by(|a, b| a.address.cmp(&b.address));
        self.view.send_if_modified(|view| {
            if view.members == members {
                return false;
            }
            view.members = members;
            view.version += 1;
            true
        });
    }
}

/// Sends one one-way membership message to `to`, within `timeout`.
async fn send_one(
    engine: &Engine,
    function: &RawRemoteFunction,
    to: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        let address = engine.lookup(to).await?;
        function.on(&address).call(payload).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not sent within {timeout:?}")),
    }
}

/// The one-way functions a group's task sends with.
pub(crate) fn functions(engine: &Engine) -> (RawRemoteFunction, RawRemoteFunction) {
    (
        engine.remote_raw(SWIM_RPC).disable_response(),
        engine.remote_raw(LEAVE_RPC).disable_response(),
    )
}
