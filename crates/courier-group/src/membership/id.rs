//! A member's identity as foca knows it: its address and a generation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A member: the address others reach it at (opaque: what `lookup` takes)
/// and a generation, new at every start and at every rejoin, so that a
/// member restarted at the same address is a newer member of it (foca
/// keeps one member per address: the newer generation wins).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Id {
    pub(crate) addr: String,
    pub(crate) generation: u64,
}

impl Id {
    /// A new identity at `addr`: a generation none before it had (a
    /// process restarted later starts later on the clock).
    pub(crate) fn new(addr: String) -> Self {
        Self {
            addr,
            generation: next_generation(0),
        }
    }

    /// The identity a join announces to: the member at `addr`, whatever
    /// its generation (foca does not check the destination of a message).
    pub(crate) fn somebody_at(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            generation: 0,
        }
    }
}

/// Microseconds since the epoch, and above every generation this process
/// handed out before and above `after`.
fn next_generation(after: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1)).max(after.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

impl foca::Identity for Id {
    type Addr = String;

    /// Declared down while alive (a false suspicion that stuck, a
    /// partition): come back at once as a newer generation.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            addr: self.addr.clone(),
            generation: next_generation(self.generation),
        })
    }

    fn addr(&self) -> String {
        self.addr.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use foca::Identity;

    use super::*;

    #[test]
    fn a_renewed_or_restarted_member_wins_over_its_past() {
        let first = Id::new("mem://a".into());
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.addr(), first.addr());
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        let restarted = Id::new("mem://a".into());
        assert!(restarted.win_addr_conflict(&renewed));
    }
}
