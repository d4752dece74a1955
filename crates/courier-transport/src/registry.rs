//! Protocol names, aliases and plugins: from `protocols.toml` to a transport.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::address::check_protocol_name;
use crate::{DynTransport, TransportError};

/// The protocol table built into Courier (the workspace's `protocols.toml`).
pub const BUILTIN_PROTOCOLS_TOML: &str = include_str!("../../../protocols.toml");

/// Options handed to a plugin: the protocol's defaults from `protocols.toml`,
/// overridden key by key by the engine's JSON config.
pub type PluginOptions = Map<String, Value>;

/// What a plugin gets to build a transport.
#[derive(Debug, Clone)]
pub struct PluginContext<'a> {
    /// The canonical protocol name the transport will serve.
    pub protocol: &'a str,
    /// Merged options (see [`PluginOptions`]).
    pub options: &'a PluginOptions,
    /// The maximum message size the transport must enforce.
    pub max_message_size: usize,
}

impl PluginContext<'_> {
    /// Reads a boolean option, with a default when absent.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] when present but not a boolean.
    pub fn bool_option(
        &self,
        plugin: &str,
        key: &str,
        default: bool,
    ) -> Result<bool, TransportError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(TransportError::InvalidOptions {
                plugin: plugin.to_owned(),
                reason: format!("option '{key}' must be true or false, not {other}"),
            }),
        }
    }

    /// Reads a non-negative integer option, with a default when absent.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] when present but not a
    /// non-negative integer.
    pub fn u64_option(&self, plugin: &str, key: &str, default: u64) -> Result<u64, TransportError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| TransportError::InvalidOptions {
                plugin: plugin.to_owned(),
                reason: format!("option '{key}' must be a non-negative integer, not {v}"),
            }),
        }
    }

    /// Reads a string option, if present.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] when present but not a string.
    pub fn str_option(&self, plugin: &str, key: &str) -> Result<Option<&str>, TransportError> {
        match self.options.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(TransportError::InvalidOptions {
                plugin: plugin.to_owned(),
                reason: format!("option '{key}' must be a string, not {other}"),
            }),
        }
    }

    /// Refuses options the plugin does not know (catches typos).
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] naming the first unknown key.
    pub fn check_known_options(&self, plugin: &str, known: &[&str]) -> Result<(), TransportError> {
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(TransportError::InvalidOptions {
                plugin: plugin.to_owned(),
                reason: format!(
                    "unknown option '{k}' (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            }),
        }
    }
}

/// A transport plugin: a named factory of transports.
///
/// A plugin is registered in a [`Registry`] under its [`Plugin::name`];
/// `protocols.toml` maps protocol names (and their aliases) to plugin names.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, as `plugin = "..."` refers to it in `protocols.toml`.
    fn name(&self) -> &str;

    /// Builds a transport serving `ctx.protocol`.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] for options it cannot use.
    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError>;
}

/// One protocol of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolEntry {
    /// The canonical name (the key of `[protocols.<name>]`).
    pub name: String,
    /// The plugin that implements it.
    pub plugin: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Default plugin options.
    pub options: PluginOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    protocols: BTreeMap<String, TableEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableEntry {
    plugin: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    options: PluginOptions,
}

/// Resolves protocol names to plugins and builds transports.
///
/// ```
/// use courier_transport::Registry;
///
/// let registry = Registry::new(); // the built-in protocol table, no plugins yet
/// assert_eq!(registry.resolve("ofi+tcp")?.name, "tcp");
/// assert_eq!(registry.resolve("na+sm")?.name, "shm");
/// let err = registry.resolve("carrier-pigeon").unwrap_err();
/// assert!(err.to_string().contains("known protocols: "));
/// # Ok::<(), courier_transport::TransportError>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    protocols: BTreeMap<String, ProtocolEntry>,
    /// alias or name -> canonical name
    names: HashMap<String, String>,
    plugins: BTreeMap<String, Arc<dyn Plugin>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("protocols", &self.protocols.keys().collect::<Vec<_>>())
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the built-in protocol table and no plugins.
    pub fn new() -> Self {
        let mut r = Self::empty();
        // The built-in table is part of the source tree and checked by a test;
        // should it ever be broken, start empty rather than panic.
        if let Err(e) = r.load_toml_str(BUILTIN_PROTOCOLS_TOML, "built-in protocols.toml") {
            tracing::error!("{e}");
        }
        r
    }

    /// A registry with no protocols and no plugins.
    pub fn empty() -> Self {
        Self {
            protocols: BTreeMap::new(),
            names: HashMap::new(),
            plugins: BTreeMap::new(),
        }
    }

    /// Adds a plugin (builder style). If no protocol of the table uses the
    /// plugin, a protocol with the plugin's name is declared for it, so a
    /// plugin works without editing any `protocols.toml`.
    #[must_use]
    pub fn with(mut self, plugin: impl Plugin) -> Self {
        self.add_plugin(Arc::new(plugin));
        self
    }

    /// Adds a plugin; see [`Registry::with`]. A plugin of the same name is
    /// replaced.
    pub fn add_plugin(&mut self, plugin: Arc<dyn Plugin>) {
        let name = plugin.name().to_owned();
        let used = self.protocols.values().any(|p| p.plugin == name);
        if !used && !self.names.contains_key(&name) && check_protocol_name(&name).is_ok() {
            self.insert_protocol(ProtocolEntry {
                name: name.clone(),
                plugin: name.clone(),
                aliases: Vec::new(),
                options: PluginOptions::new(),
            });
        }
        self.plugins.insert(name, plugin);
    }

    /// Declares (or replaces) a protocol.
    pub fn insert_protocol(&mut self, entry: ProtocolEntry) {
        if let Some(old) = self.protocols.remove(&entry.name) {
            for a in &old.aliases {
                self.names.remove(a);
            }
        }
        self.names.insert(entry.name.clone(), entry.name.clone());
        for a in &entry.aliases {
            self.names.insert(a.clone(), entry.name.clone());
        }
        self.protocols.insert(entry.name.clone(), entry);
    }

    /// Loads a protocol table from TOML text; its entries replace those of
    /// the same name and add the others. `origin` names the source in errors.
    ///
    /// # Errors
    /// [`TransportError::ProtocolTable`] for invalid TOML, unknown keys, or a
    /// bad name; nothing is changed then.
    pub fn load_toml_str(&mut self, text: &str, origin: &str) -> Result<(), TransportError> {
        let err = |reason: String| TransportError::ProtocolTable {
            origin: origin.to_owned(),
            reason,
        };
        let file: TableFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut entries = Vec::new();
        for (name, e) in file.protocols {
            check_protocol_name(&name).map_err(&err)?;
            for a in &e.aliases {
                check_protocol_name(a).map_err(&err)?;
            }
            entries.push(ProtocolEntry {
                name,
                plugin: e.plugin,
                aliases: e.aliases,
                options: e.options,
            });
        }
        for e in entries {
            self.insert_protocol(e);
        }
        Ok(())
    }

    /// Loads a protocol table from a file; see [`Registry::load_toml_str`].
    ///
    /// # Errors
    /// [`TransportError::ProtocolTable`] when the file cannot be read or parsed.
    pub fn load_toml_file(&mut self, path: impl AsRef<Path>) -> Result<(), TransportError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TransportError::ProtocolTable {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.load_toml_str(&text, &path.display().to_string())
    }

    /// Resolves a protocol name or alias to its entry.
    ///
    /// # Errors
    /// [`TransportError::UnknownProtocol`] listing the known names.
    pub fn resolve(&self, name: &str) -> Result<&ProtocolEntry, TransportError> {
        self.names
            .get(name)
            .and_then(|canonical| self.protocols.get(canonical))
            .ok_or_else(|| TransportError::UnknownProtocol {
                name: name.to_owned(),
                known: self.known_names().join(", "),
            })
    }

    /// Every protocol name and alias, sorted.
    pub fn known_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }

    /// The declared protocols, sorted by name.
    pub fn protocols(&self) -> impl Iterator<Item = &ProtocolEntry> {
        self.protocols.values()
    }

    /// Whether the plugin a protocol needs is registered.
    pub fn is_available(&self, entry: &ProtocolEntry) -> bool {
        self.plugins.contains_key(&entry.plugin)
    }

    /// The names of the registered plugins, sorted.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    /// Builds a transport for `protocol` (a name or alias), with the table's
    /// default options overridden by `overrides`.
    ///
    /// # Errors
    /// Unknown protocol, plugin not built in, or options the plugin refuses.
    pub fn create(
        &self,
        protocol: &str,
        overrides: &PluginOptions,
        max_message_size: usize,
    ) -> Result<(ProtocolEntry, Arc<dyn DynTransport>), TransportError> {
        let entry = self.resolve(protocol)?;
        let plugin =
            self.plugins
                .get(&entry.plugin)
                .ok_or_else(|| TransportError::PluginNotAvailable {
                    protocol: entry.name.clone(),
                    plugin: entry.plugin.clone(),
                    available: if self.plugins.is_empty() {
                        "none".to_owned()
                    } else {
                        self.plugin_names().join(", ")
                    },
                })?;
        let mut options = entry.options.clone();
        for (k, v) in overrides {
            options.insert(k.clone(), v.clone());
        }
        let ctx = PluginContext {
            protocol: &entry.name,
            options: &options,
            max_message_size,
        };
        let transport = plugin.create(&ctx)?;
        Ok((entry.clone(), transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_with_the_documented_aliases() {
        let mut r = Registry::empty();
        r.load_toml_str(BUILTIN_PROTOCOLS_TOML, "built-in").unwrap();
        for (alias, canonical) in [
            ("tcp", "tcp"),
            ("ofi+tcp", "tcp"),
            ("bmi+tcp", "tcp"),
            ("unix", "unix"),
            ("uds", "unix"),
            ("quic", "quic"),
            ("shm", "shm"),
            ("sm", "shm"),
            ("na+sm", "shm"),
        ] {
            assert_eq!(r.resolve(alias).unwrap().name, canonical, "{alias}");
        }
    }

    #[test]
    fn unknown_protocol_lists_known_ones() {
        let err = Registry::new().resolve("ipx").unwrap_err().to_string();
        assert!(err.contains("unknown protocol 'ipx'"), "{err}");
        assert!(err.contains("ofi+tcp") && err.contains("unix"), "{err}");
    }

    #[test]
    fn declared_protocol_without_plugin_says_so() {
        let err = Registry::new()
            .create("na+sm", &PluginOptions::new(), 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'shm' transport plugin"), "{err}");
        assert!(err.contains("not built into this program"), "{err}");
    }

    #[test]
    fn user_table_adds_aliases_and_rejects_typos() {
        let mut r = Registry::new();
        r.load_toml_str(
            "[protocols.tcp]\nplugin = \"tcp\"\naliases = [\"sockets\"]\n",
            "mine.toml",
        )
        .unwrap();
        assert_eq!(r.resolve("sockets").unwrap().name, "tcp");
        // The replaced entry's old aliases are gone with it.
        assert!(r.resolve("ofi+tcp").is_err());
        let err = r
            .load_toml_str("[protocols.x]\nplugin = \"x\"\nalias = []\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("alias"), "{err}");
    }
}
