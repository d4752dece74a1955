//! Address sets and the paths to a peer: an engine built for several
//! protocols (`"tcp,shm"`) listens on each, prints one address set
//! (`tcp://127.0.0.1:41235,shm://courier-…,mem://anon-1-…`), and a lookup
//! of a set chooses the path to take (`docs/transports.md`, "Address
//! sets").
//!
//! Everything here is sans-IO: parsing a set, resolving the protocols an
//! engine is built for, checking a set a lookup is given, and the order in
//! which its parts are tried. `links.rs` does the connecting.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use courier_transport::{Address as WireAddr, DynTransport, ProtocolEntry, Reach, Registry};
use serde_json::{Map, Value};

use crate::config::{Config, PathOrder};
use crate::error::{Error, Result};

/// The address of an engine: one transport address, or several
/// (`tcp://127.0.0.1:41235,shm://courier-…`), one per protocol it listens
/// on, separated by commas, each a full `<protocol>://<address>`.
///
/// It parses from and prints as that string; two sets are equal when they
/// list the same parts in the same order. The syntax is checked here
/// (no empty set or part, every part an address, none given twice); which
/// protocols exist is for the engine to say, at
/// [`Engine::lookup`](crate::Engine::lookup).
///
/// ```
/// use courier::AddressSet;
///
/// let set: AddressSet = "tcp://127.0.0.1:7000, shm://courier-1-2".parse()?;
/// assert_eq!(set.to_string(), "tcp://127.0.0.1:7000,shm://courier-1-2");
/// assert_eq!(set.parts().len(), 2);
/// assert_eq!(set.first().protocol(), "tcp");
///
/// let err = "tcp://127.0.0.1:7000,,shm://x".parse::<AddressSet>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid address set 'tcp://127.0.0.1:7000,,shm://x': part 2 is empty"
/// );
/// # Ok::<(), courier::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AddressSet {
    parts: Arc<[WireAddr]>,
}

impl AddressSet {
    /// The set of one address.
    pub fn single(addr: WireAddr) -> Self {
        Self {
            parts: Arc::from(vec![addr]),
        }
    }

    /// A set of `parts`, in that order.
    ///
    /// # Errors
    /// [`Error::AddressSet`] when `parts` is empty or gives an address twice.
    pub fn new(parts: Vec<WireAddr>) -> Result<Self> {
        let invalid = |reason: String| Error::AddressSet {
            set: join(&parts),
            reason,
        };
        if parts.is_empty() {
            return Err(invalid("it has no address".into()));
        }
        for (i, p) in parts.iter().enumerate() {
            if let Some(j) = parts[..i].iter().position(|q| q == p) {
                return Err(invalid(format!(
                    "'{p}' is given twice (parts {} and {})",
                    j + 1,
                    i + 1
                )));
            }
        }
        Ok(Self {
            parts: Arc::from(parts),
        })
    }

    /// The addresses of the set, in its order.
    pub fn parts(&self) -> &[WireAddr] {
        &self.parts
    }

    /// The first address of the set.
    pub fn first(&self) -> &WireAddr {
        // A set is never empty (`new`, `single` and `from_str` see to it).
        &self.parts[0]
    }

    /// Whether the set has more than one address.
    pub fn is_set(&self) -> bool {
        self.parts.len() > 1
    }
}

fn join(parts: &[WireAddr]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&p.to_string());
    }
    s
}

impl FromStr for AddressSet {
    type Err = Error;

    /// Parses `a,b,…`; spaces around a part are ignored. A string without a
    /// comma is one address, with the transport's error if it is not one.
    fn from_str(s: &str) -> Result<Self> {
        if !s.contains(',') {
            return Ok(Self::single(s.trim().parse::<WireAddr>()?));
        }
        let invalid = |reason: String| Error::AddressSet {
            set: s.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        for (i, part) in s.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err(invalid(format!("part {} is empty", i + 1)));
            }
            let addr = part
                .parse::<WireAddr>()
                .map_err(|e| invalid(format!("part {} ('{part}'): {e}", i + 1)))?;
            parts.push(addr);
        }
        Self::new(parts).map_err(|e| as_given(e, s))
    }
}

/// An [`Error::AddressSet`] about `set` as the user wrote it (`new` names
/// the set it was given, which may be canonical or trimmed).
fn as_given(e: Error, set: &str) -> Error {
    match e {
        Error::AddressSet { reason, .. } => Error::AddressSet {
            set: set.to_owned(),
            reason,
        },
        other => other,
    }
}

impl fmt::Display for AddressSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(p, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AddressSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AddressSet")
            .field(&self.to_string())
            .finish()
    }
}

/// One protocol an engine speaks: its transport, and where paths over it
/// go in the order of a set.
pub(crate) struct Route {
    pub(crate) entry: ProtocolEntry,
    pub(crate) transport: Arc<dyn DynTransport>,
    /// Where to listen (server mode): the address as the engine was given
    /// it, under the canonical protocol name.
    pub(crate) listen: WireAddr,
    pub(crate) key: PathKey,
    /// Added by the engine (the in-process path), not asked for.
    pub(crate) implicit: bool,
}

/// What orders the paths of a set: how far the protocol reaches, its
/// plugin's rank ([`courier_transport::Plugin::path_rank`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathKey {
    pub(crate) reach: Reach,
    pub(crate) rank: u8,
}

/// The order in which the paths of a set are tried: by `keys[i]` (`None`:
/// a part no route speaks, left out), returning indices into `keys`.
/// `Fastest`: nearest reach first; within one reach, lower rank first,
/// except among network paths, which keep the set's order; ties keep the
/// set's order. `Listed`: the set's order.
pub(crate) fn path_order(keys: &[Option<PathKey>], order: PathOrder) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_some()).collect();
    if order == PathOrder::Fastest {
        idx.sort_by_key(|&i| {
            let k = keys[i].unwrap_or(PathKey {
                reach: Reach::Network,
                rank: u8::MAX,
            });
            let rank = if k.reach == Reach::Network { 0 } else { k.rank };
            (k.reach, rank, i)
        });
    }
    idx
}

/// The protocols an engine speaks, and how it chooses among the parts of
/// an address set.
pub(crate) struct Paths {
    routes: Vec<Route>,
    order: PathOrder,
    registry: Registry,
    /// The protocols as listed (`"tcp,shm"`; `"tcp"` for one).
    name: String,
}

impl fmt::Debug for Paths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paths")
            .field("name", &self.name)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl Paths {
    /// Resolves what an engine is built for: `plan` is a protocol name, a
    /// full address, or a comma-separated list of them (`"tcp,shm"`,
    /// `"tcp://0.0.0.0:7000,shm"`), and creates a transport for each, plus
    /// the ones `config.paths` adds (`auto_sm`, the in-process path).
    ///
    /// # Errors
    /// [`Error::AddressSet`] for an empty list, an empty part, a protocol
    /// listed twice; the transport's errors for an unknown protocol (with
    /// the known names), a malformed address, bad options.
    pub(crate) fn build(plan: &str, config: &Config, registry: Registry) -> Result<Self> {
        let invalid = |reason: String| Error::AddressSet {
            set: plan.to_owned(),
            reason,
        };
        let mut wanted: Vec<(WireAddr, bool)> = Vec::new();
        let several = plan.contains(',');
        for (i, part) in plan.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err(if several {
                    invalid(format!("part {} is empty", i + 1))
                } else {
                    invalid("it names no protocol".into())
                });
            }
            let addr = if part.contains("://") {
                part.parse::<WireAddr>()
            } else {
                WireAddr::new(part, "")
            };
            let addr = addr.map_err(|e| {
                if several {
                    invalid(format!("part {} ('{part}'): {e}", i + 1))
                } else {
                    e.into()
                }
            })?;
            wanted.push((addr, false));
        }
        let mut entries: Vec<(ProtocolEntry, WireAddr, bool)> = Vec::new();
        for (addr, implicit) in wanted {
            let entry = registry.resolve(addr.protocol())?;
            if let Some((_, first, _)) = entries.iter().find(|(e, ..)| e.name == entry.name) {
                return Err(invalid(format!(
                    "protocol '{}' is listed twice ('{first}' and '{addr}'): an engine \
                     listens once per protocol",
                    entry.name
                )));
            }
            let listen = addr.with_protocol(&entry.name);
            entries.push((entry, listen, implicit));
        }
        let reach = |e: &ProtocolEntry| registry.reach(e);
        if config.paths.auto_sm && !entries.iter().any(|(e, ..)| reach(e) == Some(Reach::Host)) {
            if let Some(e) = fastest_plain(&registry, Reach::Host) {
                let listen = WireAddr::new(e.name.clone(), "")?;
                entries.push((e, listen, false));
            }
        }
        if entries.len() > 1
            && config.paths.in_process
            && !entries
                .iter()
                .any(|(e, ..)| reach(e) == Some(Reach::Process))
        {
            if let Some(e) = fastest_plain(&registry, Reach::Process) {
                let listen = WireAddr::new(e.name.clone(), "")?;
                entries.push((e, listen, true));
            }
        }
        let name = entries
            .iter()
            .filter(|(.., implicit)| !implicit)
            .map(|(e, ..)| e.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let alone = entries.len() == 1;
        if !alone {
            // Options for a protocol the engine does not speak would be
            // ignored: more likely a mistake than a wish.
            for key in config.transport.keys() {
                if let Ok(e) = registry.resolve(key) {
                    if !entries.iter().any(|(spoken, ..)| spoken.name == e.name) {
                        return Err(Error::Config(format!(
                            "`transport` has options for '{key}', a protocol this engine \
                             ({name}) does not speak"
                        )));
                    }
                }
            }
        }
        let mut routes = Vec::with_capacity(entries.len());
        for (entry, listen, implicit) in entries {
            let options = if alone {
                config.transport.clone()
            } else {
                options_for(&entry, &routes, &config.transport, &registry)
            };
            let (entry, transport) =
                registry.create(&entry.name, &options, config.max_message_size)?;
            let key = PathKey {
                reach: registry.reach(&entry).unwrap_or(Reach::Network),
                rank: registry
                    .path_rank(&entry)
                    .unwrap_or(courier_transport::DEFAULT_PATH_RANK),
            };
            routes.push(Route {
                entry,
                transport,
                listen,
                key,
                implicit,
            });
        }
        Ok(Self {
            routes,
            order: config.paths.order,
            registry,
            name,
        })
    }

    /// The protocols as listed (`"tcp,shm"`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The plugins of the listed protocols (`"tcp,shm"`).
    pub(crate) fn plugins(&self) -> String {
        self.routes
            .iter()
            .filter(|r| !r.implicit)
            .map(|r| r.entry.plugin.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every protocol spoken, the first listed first.
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first protocol listed.
    pub(crate) fn primary(&self) -> &Route {
        // `build` refuses an empty list.
        &self.routes[0]
    }

    /// The route of `protocol` (a canonical name or an alias).
    fn route(&self, protocol: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.entry.name == protocol || r.entry.aliases.iter().any(|a| a == protocol))
    }

    /// Checks a set given to lookup, naming its protocols canonically.
    /// One address must be of a protocol this engine speaks; of a set, at
    /// least one part must be, and the others must be protocols the
    /// registry knows (they are skipped).
    ///
    /// # Errors
    /// [`Error::ProtocolMismatch`] when no part is of a spoken protocol;
    /// [`Error::AddressSet`] for an unknown protocol or a part given twice
    /// under two names.
    pub(crate) fn check_lookup(&self, set: &AddressSet) -> Result<AddressSet> {
        let mismatch = || Error::ProtocolMismatch {
            address: set.to_string(),
            protocol: set
                .parts()
                .iter()
                .map(WireAddr::protocol)
                .collect::<Vec<_>>()
                .join(","),
            engine: self.name.clone(),
        };
        if !set.is_set() {
            let part = set.first();
            let route = self.route(part.protocol()).ok_or_else(mismatch)?;
            return Ok(AddressSet::single(part.with_protocol(&route.entry.name)));
        }
        let mut parts = Vec::with_capacity(set.parts().len());
        let mut spoken = false;
        for part in set.parts() {
            let name = match self.route(part.protocol()) {
                Some(r) => {
                    spoken = true;
                    r.entry.name.clone()
                }
                None => match self.registry.resolve(part.protocol()) {
                    Ok(e) => e.name,
                    Err(_) => {
                        return Err(Error::AddressSet {
                            set: set.to_string(),
                            reason: format!(
                                "unknown protocol '{}' (known: {})",
                                part.protocol(),
                                self.registry.known_names().join(", ")
                            ),
                        })
                    }
                },
            };
            parts.push(part.with_protocol(&name));
        }
        if !spoken {
            return Err(mismatch());
        }
        AddressSet::new(parts).map_err(|e| as_given(e, &set.to_string()))
    }

    /// A set as a peer announced it in its Hello, its known protocols named
    /// canonically; `None` if it does not parse.
    pub(crate) fn announced(&self, text: &str) -> Option<AddressSet> {
        let set = text.parse::<AddressSet>().ok()?;
        let parts = set
            .parts()
            .iter()
            .map(|p| match self.registry.resolve(p.protocol()) {
                Ok(e) => p.with_protocol(&e.name),
                Err(_) => p.clone(),
            })
            .collect();
        AddressSet::new(parts).ok()
    }

    /// The paths to `set` (checked by [`Paths::check_lookup`]) in the order
    /// they are tried: each part this engine speaks, with its route.
    pub(crate) fn order<'a>(&'a self, set: &'a AddressSet) -> Vec<(&'a WireAddr, &'a Route)> {
        let routes: Vec<Option<&Route>> = set
            .parts()
            .iter()
            .map(|p| self.route(p.protocol()))
            .collect();
        let keys: Vec<Option<PathKey>> = routes.iter().map(|r| r.map(|r| r.key)).collect();
        path_order(&keys, self.order)
            .into_iter()
            .filter_map(|i| Some((&set.parts()[i], routes[i]?)))
            .collect()
    }
}

/// The plain protocol (no layer) of `reach` the registry can build with
/// the lowest rank, for `auto_sm` and the in-process path.
fn fastest_plain(registry: &Registry, reach: Reach) -> Option<ProtocolEntry> {
    registry
        .protocols()
        .filter(|e| e.layers.is_empty() && registry.reach(e) == Some(reach))
        .min_by_key(|e| {
            (
                registry
                    .path_rank(e)
                    .unwrap_or(courier_transport::DEFAULT_PATH_RANK),
                e.name.clone(),
            )
        })
        .cloned()
}

/// The transport options of `entry` in an engine of several protocols:
/// the object under a key naming it (canonical name, alias, or as
/// written), when `transport` has one; otherwise, for the first protocol
/// (`done` is empty), every key that names no protocol, so that options
/// written for one protocol keep working when a second is added; none for
/// the others.
fn options_for(
    entry: &ProtocolEntry,
    done: &[Route],
    transport: &Map<String, Value>,
    registry: &Registry,
) -> Map<String, Value> {
    let named = transport.iter().find(|(k, _)| {
        registry
            .resolve(k)
            .map(|e| e.name == entry.name)
            .unwrap_or(false)
    });
    if let Some((_, v)) = named {
        return match v {
            Value::Object(m) => m.clone(),
            // Let the plugin refuse it, naming what it got.
            other => {
                let mut m = Map::new();
                m.insert(entry.name.clone(), other.clone());
                m
            }
        };
    }
    if !done.is_empty() {
        return Map::new();
    }
    transport
        .iter()
        .filter(|(k, _)| registry.resolve(k).is_err())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reach: Reach, rank: u8) -> Option<PathKey> {
        Some(PathKey { reach, rank })
    }

    #[test]
    fn a_set_parses_prints_and_compares_by_its_parts() {
        let set: AddressSet = " tcp://127.0.0.1:1 ,shm://a".parse().unwrap();
        assert_eq!(set.to_string(), "tcp://127.0.0.1:1,shm://a");
        assert!(set.is_set());
        assert_eq!(set, "tcp://127.0.0.1:1,shm://a".parse().unwrap());
        assert_ne!(set, "shm://a,tcp://127.0.0.1:1".parse().unwrap());
        let one: AddressSet = "tcp://127.0.0.1:1".parse().unwrap();
        assert!(!one.is_set());
        assert_eq!(one.first().rest(), "127.0.0.1:1");
    }

    #[test]
    fn bad_sets_are_refused_naming_what_is_wrong() {
        let err = |s: &str| s.parse::<AddressSet>().unwrap_err().to_string();
        assert_eq!(err(","), "invalid address set ',': part 1 is empty");
        assert_eq!(
            err("tcp://a:1,tcp://a:1"),
            "invalid address set 'tcp://a:1,tcp://a:1': 'tcp://a:1' is given twice (parts 1 and 2)"
        );
        assert!(
            err("tcp://a:1,shm")
                .starts_with("invalid address set 'tcp://a:1,shm': part 2 ('shm'): "),
            "{}",
            err("tcp://a:1,shm")
        );
        // One address keeps the transport's own error.
        assert!(err("nonsense").contains("expected '<protocol>://<address>'"));
        assert!(AddressSet::new(Vec::new()).is_err());
    }

    #[test]
    fn fastest_takes_the_process_then_the_host_by_rank_then_the_network_as_listed() {
        let keys = [
            key(Reach::Network, 100), // tcp
            key(Reach::Host, 20),     // unix
            key(Reach::Network, 50),  // quic
            key(Reach::Host, 10),     // shm
            None,                     // a protocol this engine does not speak
            key(Reach::Process, 100), // mem
        ];
        assert_eq!(path_order(&keys, PathOrder::Fastest), vec![5, 3, 1, 0, 2]);
        assert_eq!(path_order(&keys, PathOrder::Listed), vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn equal_keys_keep_the_order_of_the_set() {
        let keys = [key(Reach::Host, 100), key(Reach::Host, 100)];
        assert_eq!(path_order(&keys, PathOrder::Fastest), vec![0, 1]);
        assert!(path_order(&[None, None], PathOrder::Fastest).is_empty());
    }
}
