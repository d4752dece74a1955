//! The registry engines use unless given another: the built-in protocol
//! table, the bundled plugins, and the plugins a program installs.

use std::sync::{Arc, Mutex, OnceLock};

use courier_transport::{Layer, Plugin, Registry, TransportError};

use crate::sync::lock;

/// The environment variable naming an extra `protocols.toml` that
/// [`default_registry`] loads on top of the built-in table.
pub const PROTOCOLS_ENV: &str = "COURIER_PROTOCOLS";

/// The registry engines use unless given another: the built-in protocol
/// table, the table named by `$COURIER_PROTOCOLS` if set, and the plugins
/// bundled by this crate's cargo features (`tcp`, `unix`, `quic`, `shm`,
/// `mem`, and the `chaos` layer).
///
/// Plugins go through the same public path as any user plugin
/// ([`Registry::with`]); the engine itself names none.
///
/// # Errors
/// [`TransportError::ProtocolTable`] when `$COURIER_PROTOCOLS` names a file
/// that cannot be read or parsed.
pub fn default_registry() -> Result<Registry, TransportError> {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    if let Some(path) = std::env::var_os(PROTOCOLS_ENV) {
        registry.load_toml_file(&path)?;
    }
    #[cfg(feature = "tcp")]
    {
        registry = registry.with(courier_tcp::TcpPlugin);
    }
    #[cfg(feature = "unix")]
    {
        registry = registry.with(courier_unix::UnixPlugin);
    }
    #[cfg(feature = "quic")]
    {
        registry = registry.with(courier_quic::QuicPlugin);
    }
    #[cfg(all(feature = "shm", target_os = "linux"))]
    {
        registry = registry.with(courier_shm::ShmPlugin);
    }
    #[cfg(feature = "mem")]
    {
        registry = registry.with(courier_mem::MemPlugin);
    }
    #[cfg(feature = "chaos")]
    {
        registry = registry.with_layer(courier_chaos::ChaosLayer);
    }
    for extra in lock(installed()).iter() {
        match extra {
            Installed::Plugin(p) => registry.add_plugin(p.clone()),
            Installed::Layer(l) => registry.add_layer(l.clone()),
        }
    }
    Ok(registry)
}

/// A plugin or layer added to every default registry of the process.
enum Installed {
    Plugin(Arc<dyn Plugin>),
    Layer(Arc<dyn Layer>),
}

fn installed() -> &'static Mutex<Vec<Installed>> {
    static INSTALLED: OnceLock<Mutex<Vec<Installed>>> = OnceLock::new();
    INSTALLED.get_or_init(Default::default)
}

/// Adds a transport plugin to every [`default_registry`] of this process
/// from now on, so `Engine::new("<its protocol>")`, the `courier` command
/// built with [`courier-cli`](https://docs.rs/courier-cli) and the
/// conformance suite of `courier-testkit` all find it. A plugin of the same
/// name (a bundled one too) is replaced.
///
/// This is the one-line way to plug a transport in; to keep it to one
/// engine instead, give that engine its own registry with
/// [`EngineBuilder::registry`](crate::EngineBuilder::registry).
///
/// Installing the same plugin again (by name) replaces the earlier one.
///
/// ```
/// # #[cfg(feature = "mem")] {
/// # use courier_mem::MemPlugin as MyPlugin;
/// courier::install_plugin(MyPlugin);
/// let registry = courier::default_registry()?;
/// assert!(registry.plugin_names().contains(&"mem".to_owned()));
/// # }
/// # Ok::<(), courier::TransportError>(())
/// ```
pub fn install_plugin(plugin: impl Plugin) {
    let mut all = lock(installed());
    all.retain(|i| !matches!(i, Installed::Plugin(p) if p.name() == plugin.name()));
    all.push(Installed::Plugin(Arc::new(plugin)));
}

/// Adds a layer plugin (see [`Layer`]) to every
/// [`default_registry`] of this process from now on; see [`install_plugin`].
pub fn install_layer(layer: impl Layer) {
    let mut all = lock(installed());
    all.retain(|i| !matches!(i, Installed::Layer(l) if l.name() == layer.name()));
    all.push(Installed::Layer(Arc::new(layer)));
}
