//! Protocol names, aliases and plugins: from `protocols.toml` to a transport.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
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
    /// Reads the options as a `T`, the plugin's options struct, with serde.
    ///
    /// Declare the struct with `#[serde(deny_unknown_fields)]`, so a typo is
    /// refused rather than ignored, and `#[serde(default)]` (with a
    /// `Default` impl giving each option's default), so absent options take
    /// their defaults. A plugin with no options declares an empty struct.
    ///
    /// ```
    /// use courier_transport::{PluginContext, PluginOptions, TransportError};
    /// use serde::Deserialize;
    ///
    /// #[derive(Debug, Deserialize)]
    /// #[serde(deny_unknown_fields, default)]
    /// struct MyOptions {
    ///     nodelay: bool,
    ///     queue: usize,
    /// }
    ///
    /// impl Default for MyOptions {
    ///     fn default() -> Self {
    ///         Self { nodelay: true, queue: 64 }
    ///     }
    /// }
    ///
    /// let options: PluginOptions = serde_json::from_str(r#"{"queue": 8}"#).unwrap();
    /// let ctx = PluginContext { protocol: "my", options: &options, max_message_size: 1024 };
    /// let read: MyOptions = ctx.options("my")?;
    /// assert!(read.nodelay && read.queue == 8);
    ///
    /// let options: PluginOptions = serde_json::from_str(r#"{"nodelya": false}"#).unwrap();
    /// let ctx = PluginContext { options: &options, ..ctx };
    /// let err = ctx.options::<MyOptions>("my").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid options for the 'my' plugin: option 'nodelya': \
    ///      unknown field `nodelya`, expected `nodelay` or `queue`"
    /// );
    /// # Ok::<(), TransportError>(())
    /// ```
    ///
    /// A value of the wrong type is refused with the option's name and what
    /// it must be (`option 'queue': invalid value: integer `-1`, expected usize`).
    /// A check of the plugin's own, in a `deserialize_with` function or a
    /// `Deserialize` impl, is reported the same way: return
    /// `de::Error::invalid_value(found, &"what it must be")`, or
    /// `de::Error::custom(message)` for `option '<key>': <message>`.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] of `plugin`, naming the option.
    pub fn options<T: DeserializeOwned>(&self, plugin: &str) -> Result<T, TransportError> {
        crate::options::from_options(plugin, self.options)
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

    /// How far its connections reach. The default, [`Reach::Host`], is the
    /// safe answer for a plugin that does not say: tools such as
    /// `courier bench` use it to decide whether a peer may run in another
    /// process, and tests whether it may run on another host.
    fn reach(&self) -> Reach {
        Reach::Host
    }

    /// Where a path over this plugin goes among the paths of one address
    /// set that have the same [`Reach`] (`docs/transports.md`, "Address
    /// sets"): lower ranks are tried first. Among [`Reach::Network`]
    /// paths, the order the set lists them in decides instead. The
    /// default, [`DEFAULT_PATH_RANK`], puts a plugin that does not say
    /// after those that do (`shm` says 10, `unix` 20).
    fn path_rank(&self) -> u8 {
        DEFAULT_PATH_RANK
    }
}

/// The [`Plugin::path_rank`] of a plugin that does not give one.
pub const DEFAULT_PATH_RANK: u8 = 100;

/// How far a transport's connections reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Reach {
    /// Peers in the same process only (the `mem` plugin).
    Process,
    /// Peers on the same host (`unix`, `shm`).
    Host,
    /// Peers on other hosts (`tcp`, `quic`).
    Network,
}

/// A protocol layer: a plugin that wraps the transport of another protocol,
/// named `<layer>+<protocol>` as in Mercury's `ofi+tcp`.
///
/// `chaos+tcp` is the `tcp` transport seen through the `chaos` layer, which
/// injects faults; layers stack (`chaos+chaos+unix` is legal, if odd). A
/// layer never sees RPCs either: it gets the inner transport as an
/// `Arc<dyn DynTransport>` and returns the transport that wraps it.
///
/// The wrapping transport serves the stacked protocol name: it must report
/// `ctx.protocol` from [`DynTransport::protocol`], give addresses under that
/// name (`chaos+tcp://127.0.0.1:4000`), and hand the inner transport the
/// same addresses under the inner name ([`Address::with_protocol`](crate::Address::with_protocol)).
pub trait Layer: Send + Sync + 'static {
    /// The layer's name, as written before `+`. It may not contain `+`.
    fn name(&self) -> &str;

    /// Wraps `inner`. `ctx.protocol` is the stacked canonical name (for
    /// instance `chaos+tcp`); `ctx.options` are the layer's own options.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] for options it cannot use.
    fn wrap(
        &self,
        ctx: &PluginContext<'_>,
        inner: Arc<dyn DynTransport>,
    ) -> Result<Arc<dyn DynTransport>, TransportError>;
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
    /// The layers above the plugin, outermost first, for a stacked protocol
    /// such as `chaos+tcp` (`["chaos"]`); empty for a plain one.
    pub layers: Vec<String>,
}

/// One layer of the table (`[layers.<name>]`): a name for a layer plugin
/// with default options, so `flaky+tcp` can mean "the chaos layer with these
/// settings over tcp".
#[derive(Debug, Clone, PartialEq)]
pub struct LayerEntry {
    /// The name written before `+`.
    pub name: String,
    /// The layer plugin that implements it.
    pub plugin: String,
    /// Default options of the layer.
    pub options: PluginOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    protocols: BTreeMap<String, TableEntry>,
    #[serde(default)]
    layers: BTreeMap<String, LayerTableEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerTableEntry {
    plugin: String,
    #[serde(default)]
    options: PluginOptions,
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
    layer_table: BTreeMap<String, LayerEntry>,
    layer_plugins: BTreeMap<String, Arc<dyn Layer>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("protocols", &self.protocols.keys().collect::<Vec<_>>())
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("layers", &self.layer_plugins.keys().collect::<Vec<_>>())
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
            layer_table: BTreeMap::new(),
            layer_plugins: BTreeMap::new(),
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
                layers: Vec::new(),
            });
        }
        self.plugins.insert(name, plugin);
    }

    /// Adds a layer plugin (builder style). If the table has no layer of the
    /// plugin's name, one is declared for it with no default options.
    #[must_use]
    pub fn with_layer(mut self, layer: impl Layer) -> Self {
        self.add_layer(Arc::new(layer));
        self
    }

    /// Adds a layer plugin; see [`Registry::with_layer`]. A layer plugin of
    /// the same name is replaced. A name that cannot be written before `+`
    /// (empty, or holding `+` or characters a protocol name may not hold) is
    /// ignored with a warning.
    pub fn add_layer(&mut self, layer: Arc<dyn Layer>) {
        let name = layer.name().to_owned();
        if let Err(reason) = check_layer_name(&name) {
            tracing::warn!("layer plugin ignored: {reason}");
            return;
        }
        self.layer_table
            .entry(name.clone())
            .or_insert_with(|| LayerEntry {
                name: name.clone(),
                plugin: name.clone(),
                options: PluginOptions::new(),
            });
        self.layer_plugins.insert(name, layer);
    }

    /// Declares (or replaces) a layer name.
    pub fn insert_layer(&mut self, entry: LayerEntry) {
        self.layer_table.insert(entry.name.clone(), entry);
    }

    /// The declared layers, sorted by name.
    pub fn layers(&self) -> impl Iterator<Item = &LayerEntry> {
        self.layer_table.values()
    }

    /// Whether the plugin a layer needs is registered.
    pub fn is_layer_available(&self, entry: &LayerEntry) -> bool {
        self.layer_plugins.contains_key(&entry.plugin)
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
                layers: Vec::new(),
            });
        }
        let mut layers = Vec::new();
        for (name, e) in file.layers {
            check_layer_name(&name).map_err(&err)?;
            layers.push(LayerEntry {
                name,
                plugin: e.plugin,
                options: e.options,
            });
        }
        for e in entries {
            self.insert_protocol(e);
        }
        for e in layers {
            self.insert_layer(e);
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

    /// Resolves a protocol name or alias to its entry. A stacked name such
    /// as `chaos+ofi+tcp` resolves to the entry `chaos+tcp` (layers
    /// `["chaos"]` over the `tcp` plugin), when no protocol or alias of
    /// the table is spelled that way already (`ofi+tcp` is an alias, not
    /// a stack).
    ///
    /// # Errors
    /// [`TransportError::UnknownProtocol`] listing the known names and
    /// layers.
    pub fn resolve(&self, name: &str) -> Result<ProtocolEntry, TransportError> {
        if let Some(entry) = self.names.get(name).and_then(|c| self.protocols.get(c)) {
            return Ok(entry.clone());
        }
        if let Some((layer, rest)) = name.split_once('+') {
            if let Some(l) = self.layer_table.get(layer) {
                let inner = self.resolve(rest)?;
                let mut layers = vec![l.name.clone()];
                layers.extend(inner.layers.iter().cloned());
                return Ok(ProtocolEntry {
                    name: format!("{}+{}", l.name, inner.name),
                    plugin: inner.plugin,
                    aliases: inner
                        .aliases
                        .iter()
                        .map(|a| format!("{}+{a}", l.name))
                        .collect(),
                    options: inner.options,
                    layers,
                });
            }
        }
        Err(TransportError::UnknownProtocol {
            name: name.to_owned(),
            known: self.known_names().join(", "),
        })
    }

    /// Every protocol name and alias, sorted, then each layer as `<name>+…`.
    pub fn known_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v.extend(self.layer_table.keys().map(|l| format!("{l}+…")));
        v
    }

    /// The declared protocols, sorted by name.
    pub fn protocols(&self) -> impl Iterator<Item = &ProtocolEntry> {
        self.protocols.values()
    }

    /// Whether the plugin a protocol needs is registered (and, for a
    /// stacked protocol, the plugin of every layer).
    pub fn is_available(&self, entry: &ProtocolEntry) -> bool {
        self.plugins.contains_key(&entry.plugin)
            && entry.layers.iter().all(|l| {
                self.layer_table
                    .get(l)
                    .is_some_and(|e| self.layer_plugins.contains_key(&e.plugin))
            })
    }

    /// How far a protocol's connections reach (the plugin's
    /// [`Plugin::reach`]; layers do not change it), or `None` when its plugin
    /// is not registered.
    pub fn reach(&self, entry: &ProtocolEntry) -> Option<Reach> {
        self.plugins.get(&entry.plugin).map(|p| p.reach())
    }

    /// A protocol's [`Plugin::path_rank`], or `None` when its plugin is not
    /// registered.
    pub fn path_rank(&self, entry: &ProtocolEntry) -> Option<u8> {
        self.plugins.get(&entry.plugin).map(|p| p.path_rank())
    }

    /// The names of the registered plugins, sorted.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    /// Builds a transport for `protocol` (a name, an alias, or a stacked
    /// name such as `chaos+tcp`), with the table's default options
    /// overridden by `overrides`.
    ///
    /// For a stacked protocol, `overrides` may hold one object per layer,
    /// under the layer's name (`{"chaos": {"seed": 7}, "nodelay": false}`):
    /// that object overrides the layer's default options, and the other keys
    /// go to the plugin at the bottom of the stack.
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
        let not_available = |protocol: &str, plugin: &str| TransportError::PluginNotAvailable {
            protocol: protocol.to_owned(),
            plugin: plugin.to_owned(),
            available: {
                let mut names = self.plugin_names();
                names.extend(self.layer_plugins.keys().map(|l| format!("{l} (layer)")));
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            },
        };
        let plugin = self
            .plugins
            .get(&entry.plugin)
            .ok_or_else(|| not_available(&entry.name, &entry.plugin))?;
        let mut options = entry.options.clone();
        for (k, v) in overrides {
            if !entry.layers.contains(k) {
                options.insert(k.clone(), v.clone());
            }
        }
        // The bottom of the stack serves the protocol without its layers.
        let base = strip_layers(&entry.name, entry.layers.len());
        let ctx = PluginContext {
            protocol: base,
            options: &options,
            max_message_size,
        };
        let mut transport = plugin.create(&ctx)?;
        // Wrap from the innermost layer out.
        for (depth, layer) in entry.layers.iter().enumerate().rev() {
            let table = self
                .layer_table
                .get(layer)
                .ok_or_else(|| not_available(&entry.name, layer))?;
            let wrapper = self
                .layer_plugins
                .get(&table.plugin)
                .ok_or_else(|| not_available(&entry.name, &table.plugin))?;
            let mut layer_options = table.options.clone();
            match overrides.get(layer) {
                None => {}
                Some(Value::Object(o)) => {
                    for (k, v) in o {
                        layer_options.insert(k.clone(), v.clone());
                    }
                }
                Some(other) => {
                    return Err(TransportError::InvalidOptions {
                        plugin: table.plugin.clone(),
                        reason: format!(
                            "the options of layer '{layer}' must be an object, not {other}"
                        ),
                    })
                }
            }
            let stacked = strip_layers(&entry.name, depth);
            let ctx = PluginContext {
                protocol: stacked,
                options: &layer_options,
                max_message_size,
            };
            transport = wrapper.wrap(&ctx, transport)?;
        }
        Ok((entry, transport))
    }
}

/// `name` without its first `n` layers (`strip_layers("a+b+tcp", 1)` is
/// `b+tcp`); layer names hold no `+`.
fn strip_layers(name: &str, n: usize) -> &str {
    let mut rest = name;
    for _ in 0..n {
        rest = rest.split_once('+').map_or(rest, |(_, r)| r);
    }
    rest
}

/// Checks that `name` can be written before `+` as a layer.
fn check_layer_name(name: &str) -> Result<(), String> {
    check_protocol_name(name)?;
    if name.contains('+') {
        return Err(format!("layer name '{name}' contains '+'"));
    }
    Ok(())
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

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    /// A plugin and layer that logs what it is asked to build.
    struct Logged(&'static str, Log);
    /// A transport that only knows its protocol name.
    struct Named(String);
    impl DynTransport for Named {
        fn protocol(&self) -> &str {
            &self.0
        }
        fn max_message_size(&self) -> usize {
            0
        }
        fn listen_dyn<'a>(
            &'a self,
            _: &'a crate::Address,
        ) -> crate::BoxFuture<'a, Result<Box<dyn crate::DynListener>, TransportError>> {
            unimplemented!("not used by these tests")
        }
        fn connect_dyn<'a>(
            &'a self,
            _: &'a crate::Address,
        ) -> crate::BoxFuture<'a, Result<Box<dyn crate::DynConnection>, TransportError>> {
            unimplemented!("not used by these tests")
        }
    }
    impl Plugin for Logged {
        fn name(&self) -> &str {
            self.0
        }
        fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
            let line = format!("create {} {:?}", ctx.protocol, ctx.options);
            self.1.lock().unwrap().push(line);
            Ok(Arc::new(Named(ctx.protocol.to_owned())))
        }
    }
    impl Layer for Logged {
        fn name(&self) -> &str {
            self.0
        }
        fn wrap(
            &self,
            ctx: &PluginContext<'_>,
            inner: Arc<dyn DynTransport>,
        ) -> Result<Arc<dyn DynTransport>, TransportError> {
            let line = format!(
                "wrap {} over {} {:?}",
                ctx.protocol,
                inner.protocol(),
                ctx.options
            );
            self.1.lock().unwrap().push(line);
            Ok(Arc::new(Named(ctx.protocol.to_owned())))
        }
    }

    fn registry(log: &Log) -> Registry {
        Registry::new()
            .with(Logged("tcp", log.clone()))
            .with_layer(Logged("chaos", log.clone()))
    }

    #[test]
    fn stacks_are_built_inside_out_with_their_own_options() {
        let log = Log::default();
        let mut r = registry(&log);
        r.load_toml_str(
            "[layers.flaky]\nplugin = \"chaos\"\noptions = { drop = 0.5, seed = 1 }\n",
            "mine.toml",
        )
        .unwrap();
        let overrides: PluginOptions =
            serde_json::from_str(r#"{"nodelay": false, "flaky": {"seed": 7}}"#).unwrap();
        let (entry, t) = r.create("chaos+flaky+ofi+tcp", &overrides, 1024).unwrap();
        assert_eq!(entry.name, "chaos+flaky+tcp");
        assert_eq!(t.protocol(), "chaos+flaky+tcp");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log[0].starts_with("create tcp ") && log[0].contains(r#""nodelay": Bool(false)"#));
        assert!(
            !log[0].contains("flaky"),
            "layer options leak into the plugin: {}",
            log[0]
        );
        assert!(log[1].starts_with("wrap flaky+tcp over tcp "), "{}", log[1]);
        assert!(
            log[1].contains("drop") && log[1].contains("Number(7)"),
            "{}",
            log[1]
        );
        assert!(
            log[2].starts_with("wrap chaos+flaky+tcp over flaky+tcp {}"),
            "{}",
            log[2]
        );
    }

    #[test]
    fn a_layer_name_that_cannot_stand_before_plus_is_refused() {
        let log = Log::default();
        let r = Registry::new().with_layer(Logged("a+b", log.clone()));
        assert!(
            r.layers().all(|l| l.name != "a+b"),
            "a layer named 'a+b' was registered"
        );
        let mut r = Registry::new();
        let err = r
            .load_toml_str("[layers.\"x+y\"]\nplugin = \"chaos\"\n", "mine.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mine.toml") && err.contains("'+'"), "{err}");
    }

    #[test]
    fn layer_options_must_be_an_object_and_the_layer_plugin_present() {
        let log = Log::default();
        let r = registry(&log);
        let bad: PluginOptions = serde_json::from_str(r#"{"chaos": 3}"#).unwrap();
        let err = r.create("chaos+tcp", &bad, 1024).err().unwrap().to_string();
        assert!(err.contains("layer 'chaos' must be an object"), "{err}");
        let mut r = Registry::new().with(Logged("tcp", log.clone()));
        r.load_toml_str("[layers.gremlin]\nplugin = \"gremlin\"\n", "mine.toml")
            .unwrap();
        let entry = r.resolve("gremlin+tcp").unwrap();
        assert!(!r.is_available(&entry));
        let err = r
            .create("gremlin+tcp", &PluginOptions::new(), 1024)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'gremlin' transport plugin"), "{err}");
    }

    #[test]
    fn stacked_names_resolve_through_layers_and_aliases() {
        let r = registry(&Log::default());
        let e = r.resolve("chaos+ofi+tcp").unwrap();
        assert_eq!(e.name, "chaos+tcp");
        assert_eq!(e.plugin, "tcp");
        assert_eq!(e.layers, ["chaos"]);
        assert!(e.aliases.contains(&"chaos+ofi+tcp".to_owned()));
        assert!(r.is_available(&e));
        let e = r.resolve("chaos+chaos+tcp").unwrap();
        assert_eq!((e.name.as_str(), e.layers.len()), ("chaos+chaos+tcp", 2));
        // An alias spelled with '+' stays an alias, not a stack.
        assert_eq!(r.resolve("ofi+tcp").unwrap().layers.len(), 0);
        let err = r.resolve("gremlin+tcp").unwrap_err().to_string();
        assert!(err.contains("chaos+…"), "{err}");
        let err = r.resolve("chaos+ipx").unwrap_err().to_string();
        assert!(err.contains("unknown protocol 'ipx'"), "{err}");
    }
}
