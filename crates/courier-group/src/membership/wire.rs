//! The membership's messages on the wire, and the per-engine router that
//! hands each to its group's task.
//!
//! Three RPCs, registered once per engine, whatever its number of groups:
//! `courier.group.swim` (one-way: a foca message), `courier.group.leave`
//! (one-way: "this member leaves"), and `courier.group.view` (a member's
//! view, for tools). The payload of the two one-way RPCs is, in postcard:
//! the wire version (`u16`, first, so that any future layout can be told
//! apart), the group's name, then the bytes (foca's message, or the
//! leaving member's identity).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use courier::{Bytes, Engine, Handle, RpcOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::id::Id;
use super::view::View;

/// The one-way RPC that carries foca's messages.
pub const SWIM_RPC: &str = "courier.group.swim";
/// The one-way RPC by which a leaving member tells the others.
pub const LEAVE_RPC: &str = "courier.group.leave";
/// The RPC any member answers with its view: argument `Option<String>`
/// (the group's name; `None`: the member's only, or first, group),
/// response [`View`].
pub const VIEW_RPC: &str = "courier.group.view";
/// The version of the membership's messages and of group files.
pub const WIRE_VERSION: u16 = 1;

/// Messages a group's task may have waiting; more are dropped (and
/// counted), as a full socket buffer drops datagrams: SWIM recovers.
pub(crate) const INBOX_CAPACITY: usize = 1024;

/// A one-way message's payload: wire version, group, bytes.
pub(crate) fn encode(group: &str, data: &[u8]) -> Vec<u8> {
    // Encoding a u16, a str and a byte slice into a Vec cannot fail.
    postcard::to_allocvec(&(WIRE_VERSION, group, data)).unwrap_or_default()
}

/// Why a message was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not even a version.
    Malformed(String),
    /// Another wire version.
    Version(u16),
}

/// Decodes a one-way message's payload into (group, bytes).
pub(crate) fn decode(payload: &[u8]) -> Result<(String, Vec<u8>), Refused> {
    let (version, rest) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| Refused::Malformed(format!("no wire version: {e}")))?;
    if version != WIRE_VERSION {
        return Err(Refused::Version(version));
    }
    let (group, data, rest): (String, Vec<u8>, &[u8]) = postcard::take_from_bytes(rest)
        .map(|((g, d), rest)| (g, d, rest))
        .map_err(|e| Refused::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Refused::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok((group, data))
}

/// What reaches a group's task from the network.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A foca message.
    Swim(Vec<u8>),
    /// A member says it leaves.
    Leave(Id),
}

/// Messages an engine received and did not apply, by reason, since it
/// first joined a group: what [`crate::Group::dropped`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// For a group this engine is not a member of.
    pub other_group: u64,
    /// Of another wire version.
    pub wire_version: u64,
    /// Not a membership message (undecodable envelope, or bytes foca could
    /// not decode).
    pub malformed: u64,
    /// Decoded, but refused by foca (from ourselves, from a member known
    /// down, ...) or arriving while the group's task had too many waiting.
    pub refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    other_group: AtomicU64,
    wire_version: AtomicU64,
    malformed: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Dropped {
        Dropped {
            other_group: self.other_group.load(Ordering::Relaxed),
            wire_version: self.wire_version.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A group's entry in its engine's router.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) inbox: mpsc::Sender<Inbound>,
    pub(crate) view: watch::Receiver<View>,
    /// Tells the entry of this group from that of a later group of the
    /// same name on the same engine.
    pub(crate) token: u64,
}

/// Per engine: its groups by name, and what it dropped.
#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Mutex<Vec<(String, Route)>>,
    pub(crate) counters: Counters,
}

impl Router {
    fn routes(&self) -> std::sync::MutexGuard<'_, Vec<(String, Route)>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds group `name`; `false` if the engine already has one of that name.
    pub(crate) fn add(&self, name: &str, route: Route) -> bool {
        let mut routes = self.routes();
        if routes.iter().any(|(n, _)| n == name) {
            return false;
        }
        routes.push((name.to_owned(), route));
        true
    }

    /// Removes group `name`'s route, if it is the one of `token`.
    pub(crate) fn remove(&self, name: &str, token: u64) {
        self.routes()
            .retain(|(n, r)| !(n == name && r.token == token));
    }

    /// Hands a one-way message to its group's task, or drops it.
    fn deliver(&self, rpc: &str, payload: &[u8], h: &Handle, wrap: fn(Vec<u8>) -> Option<Inbound>) {
        // Only a dropped message names its sender: formatting costs.
        let from = || h.address().to_string();
        let (group, data) = match decode(payload) {
            Ok(m) => m,
            Err(Refused::Version(v)) => {
                self.counters.wire_version.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    rpc,
                    from = from(),
                    version = v,
                    ours = WIRE_VERSION,
                    "dropped a membership message of another wire version"
                );
                return;
            }
            Err(Refused::Malformed(why)) => {
                self.counters.malformed();
                tracing::debug!(
                    rpc,
                    from = from(),
                    "dropped a malformed membership message: {why}"
                );
                return;
            }
        };
        let inbox = self
            .routes()
            .iter()
            .find(|(n, _)| *n == group)
            .map(|(_, r)| r.inbox.clone());
        let Some(inbox) = inbox else {
            self.counters.other_group.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                rpc,
                from = from(),
                group,
                "dropped a membership message for a group this engine is not in"
            );
            return;
        };
        let Some(message) = wrap(data) else {
            self.counters.malformed();
            tracing::debug!(
                rpc,
                from = from(),
                group,
                "dropped a malformed membership message"
            );
            return;
        };
        if inbox.try_send(message).is_err() {
            self.counters.refused();
            tracing::debug!(
                rpc,
                from = from(),
                group,
                "dropped a membership message: the group's task is behind or stopped"
            );
        }
    }

    /// The view of group `name` (`None`: the first group).
    fn view(&self, name: Option<&str>) -> Result<View, String> {
        let routes = self.routes();
        let found = match name {
            Some(name) => routes.iter().find(|(n, _)| n == name),
            None => routes.first(),
        };
        match (found, name) {
            (Some((_, r)), _) => Ok(r.view.borrow().clone()),
            (None, Some(name)) => Err(format!("this engine is not a member of group '{name}'")),
            (None, None) => Err("this engine is not a member of any group".to_owned()),
        }
    }
}

/// The router of `engine`, registering the group RPCs on it the first time.
///
/// # Errors
/// The engine's, when an RPC cannot be registered (a name taken by
/// something else).
pub(crate) fn router_of(engine: &Engine) -> courier::Result<Arc<Router>> {
    static ROUTERS: OnceLock<Mutex<HashMap<String, Weak<Router>>>> = OnceLock::new();
    let mut routers = ROUTERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    routers.retain(|_, r| r.strong_count() > 0);
    let key = engine.address().to_string();
    // An engine finalized and another made at its address registers anew.
    if let Some(router) = routers.get(&key).and_then(Weak::upgrade) {
        if engine.registered(SWIM_RPC, 0) {
            return Ok(router);
        }
    }
    let router = Arc::new(Router::default());
    let r = router.clone();
    engine.register_raw(
        SWIM_RPC,
        RpcOptions::default().disable_response(),
        move |h: Handle, payload: Bytes| {
            r.deliver(SWIM_RPC, &payload, &h, |d| Some(Inbound::Swim(d)));
            std::future::ready(())
        },
    )?;
    let r = router.clone();
    engine.register_raw(
        LEAVE_RPC,
        RpcOptions::default().disable_response(),
        move |h: Handle, payload: Bytes| {
            r.deliver(LEAVE_RPC, &payload, &h, |d| {
                postcard::from_bytes::<Id>(&d).ok().map(Inbound::Leave)
            });
            std::future::ready(())
        },
    )?;
    let r = router.clone();
    engine.register_with(
        VIEW_RPC,
        RpcOptions::default().idempotent(),
        move |h: Handle, group: Option<String>| {
            let view = r.view(group.as_deref());
            async move {
                match view {
                    Ok(view) => h.respond(&view).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
        },
    )?;
    routers.insert(key, Arc::downgrade(&router));
    Ok(router)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_told_apart() {
        let m = encode("g", b"\x01\x02");
        assert_eq!(decode(&m).unwrap(), ("g".to_owned(), vec![1, 2]));
        let other = postcard::to_allocvec(&(WIRE_VERSION + 1, "g", b"x".as_slice())).unwrap();
        assert_eq!(decode(&other), Err(Refused::Version(WIRE_VERSION + 1)));
        assert!(matches!(decode(&[]), Err(Refused::Malformed(_))));
        assert!(matches!(
            decode(&[1, 0xff, 0xff]),
            Err(Refused::Malformed(_))
        ));
        let mut long = encode("g", b"x");
        long.push(0);
        assert!(matches!(decode(&long), Err(Refused::Malformed(_))));
    }
}
