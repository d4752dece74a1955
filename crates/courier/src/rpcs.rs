//! The RPC table: registered handlers by (RPC id, provider id), and the
//! names behind the ids. Generic over the handler type, so that it knows
//! nothing of how handlers run.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::frame::{rpc_id, RESERVED_PROVIDER};
use crate::sync::{read, write};

/// One registered RPC.
pub(crate) struct RpcEntry<H> {
    pub(crate) name: Arc<str>,
    pub(crate) disable_response: bool,
    /// Registered as idempotent: running it twice does no harm.
    pub(crate) idempotent: bool,
    pub(crate) handler: H,
}

/// Entries by (RPC id, provider id).
/// Keyed by (RPC id, provider id). RPC ids are hashes of names, and
/// entries are only ever inserted by this engine (peers look them up), so
/// a fast hash (FxHash) is safe.
type Entries<H> = FxHashMap<(u64, u16), Arc<RpcEntry<H>>>;

/// The RPCs an engine serves.
pub(crate) struct RpcTable<H> {
    rpcs: RwLock<Entries<H>>,
    names: RwLock<HashMap<u64, String>>,
}

impl<H> RpcTable<H> {
    pub(crate) fn new() -> Self {
        Self {
            rpcs: RwLock::new(FxHashMap::default()),
            names: RwLock::new(HashMap::new()),
        }
    }

    /// Registers `name` at `provider`.
    ///
    /// # Errors
    /// [`Error::InvalidProviderId`], [`Error::RpcIdCollision`],
    /// [`Error::AlreadyRegistered`].
    pub(crate) fn insert(
        &self,
        name: &str,
        provider: u16,
        disable_response: bool,
        idempotent: bool,
        handler: H,
    ) -> Result<()> {
        if provider == RESERVED_PROVIDER {
            return Err(Error::InvalidProviderId(u32::from(provider)));
        }
        let id = rpc_id(name);
        {
            let mut names = write(&self.names);
            match names.get(&id) {
                Some(existing) if existing != name => {
                    return Err(Error::RpcIdCollision {
                        name: name.to_owned(),
                        existing: existing.clone(),
                        id,
                    })
                }
                Some(_) => {}
                None => {
                    names.insert(id, name.to_owned());
                }
            }
        }
        let mut rpcs = write(&self.rpcs);
        let key = (id, provider);
        if rpcs.contains_key(&key) {
            return Err(Error::AlreadyRegistered {
                rpc: name.to_owned(),
                provider,
            });
        }
        rpcs.insert(
            key,
            Arc::new(RpcEntry {
                name: name.into(),
                disable_response,
                idempotent,
                handler,
            }),
        );
        Ok(())
    }

    /// The entry of RPC id `rpc` at `provider`.
    pub(crate) fn get(&self, rpc: u64, provider: u16) -> Option<Arc<RpcEntry<H>>> {
        read(&self.rpcs).get(&(rpc, provider)).cloned()
    }

    /// How an RPC id is named in messages: its name if one was ever
    /// registered here, else the id in hex.
    pub(crate) fn describe(&self, rpc: u64) -> String {
        read(&self.names)
            .get(&rpc)
            .map_or_else(|| format!("id {rpc:#018x}"), |n| format!("'{n}'"))
    }

    pub(crate) fn contains(&self, name: &str, provider: u16) -> bool {
        read(&self.rpcs).contains_key(&(rpc_id(name), provider))
    }

    /// Removes `name` at `provider`.
    ///
    /// # Errors
    /// [`Error::NotRegistered`].
    pub(crate) fn remove(&self, name: &str, provider: u16) -> Result<()> {
        match write(&self.rpcs).remove(&(rpc_id(name), provider)) {
            Some(_) => Ok(()),
            None => Err(Error::NotRegistered {
                rpc: name.to_owned(),
                provider,
            }),
        }
    }

    /// Drops every handler (at finalize: handlers may hold engine handles).
    pub(crate) fn clear(&self) {
        write(&self.rpcs).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_providers() {
        let t = RpcTable::<u8>::new();
        t.insert("a", 0, false, false, 1).unwrap();
        t.insert("a", 1, true, true, 2).unwrap();
        assert!(matches!(
            t.insert("a", 0, false, false, 3),
            Err(Error::AlreadyRegistered { provider: 0, .. })
        ));
        assert!(matches!(
            t.insert("b", RESERVED_PROVIDER, false, false, 3),
            Err(Error::InvalidProviderId(65535))
        ));
        assert_eq!(t.get(rpc_id("a"), 1).map(|e| e.handler), Some(2));
        assert!(t.get(rpc_id("a"), 1).is_some_and(|e| e.disable_response));
        assert_eq!(t.describe(rpc_id("a")), "'a'");
        assert_eq!(t.describe(1), "id 0x0000000000000001");
        t.remove("a", 1).unwrap();
        assert!(!t.contains("a", 1) && t.contains("a", 0));
        assert!(matches!(t.remove("a", 1), Err(Error::NotRegistered { .. })));
        t.clear();
        assert!(!t.contains("a", 0));
    }
}
