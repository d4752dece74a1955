//! `courier._native._protocol_table()`: the protocol table this build knows,
//! for `python -m courier protocols` (the same rows as the Rust CLI's
//! `courier protocols`, read from the same registry).

use pyo3::prelude::*;

use crate::errors;

/// One protocol: its name, aliases, plugin, reach (`"process"`, `"host"`,
/// `"network"`, or `None` when its plugin is not built in) and whether it is
/// available in this build.
type ProtocolRow = (String, Vec<String>, String, Option<&'static str>, bool);

/// One layer: its name, plugin and whether it is available in this build.
type LayerRow = (String, String, bool);

/// The protocols of the default registry (the built-in protocol table plus
/// `$COURIER_PROTOCOLS`), sorted by name, and its layers.
#[pyfunction]
pub(crate) fn _protocol_table(py: Python<'_>) -> PyResult<(Vec<ProtocolRow>, Vec<LayerRow>)> {
    use courier::transport::Reach;
    let registry = courier::default_registry()
        .map_err(|e| errors::courier_error(py, format!("cannot read the protocol table: {e}")))?;
    let protocols = registry
        .protocols()
        .map(|p| {
            let reach = match registry.reach(p) {
                Some(Reach::Process) => Some("process"),
                Some(Reach::Host) => Some("host"),
                Some(Reach::Network) => Some("network"),
                _ => None,
            };
            (
                p.name.clone(),
                p.aliases.clone(),
                p.plugin.clone(),
                reach,
                registry.is_available(p),
            )
        })
        .collect();
    let layers = registry
        .layers()
        .map(|l| {
            (
                l.name.clone(),
                l.plugin.clone(),
                registry.is_layer_available(l),
            )
        })
        .collect();
    Ok((protocols, layers))
}
