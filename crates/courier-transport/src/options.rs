//! Plugin options read as typed structs: what is behind
//! [`PluginContext::options`](crate::PluginContext::options).
//!
//! Options arrive as a JSON object (`protocols.toml` defaults overridden by
//! the engine's config). They are read with serde straight from that object;
//! `serde_path_to_error` keeps track of the option being read, so a
//! plugin's message always names the key: `option 'nodelay': invalid type:
//! integer `3`, expected a boolean`, `unknown field `nodelya`, expected
//! `nodelay``.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::TransportError;

/// Reads `options` as a `T`; errors are [`TransportError::InvalidOptions`]
/// of `plugin`, naming the option at fault.
pub(crate) fn from_options<T: DeserializeOwned>(
    plugin: &str,
    options: &Map<String, Value>,
) -> Result<T, TransportError> {
    let value = Value::Object(options.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("option '{path}': {inner}")
        };
        TransportError::invalid_options(plugin, message)
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        nodelay: bool,
        queue: usize,
        ratio: f64,
        window: Option<u64>,
        streams: NonZeroU32,
        cert: Option<PathBuf>,
        mode: Mode,
        nested: Nested,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[serde(default)]
        level: u8,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Fast,
        Safe,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                nodelay: true,
                queue: 8,
                ratio: 0.5,
                window: None,
                streams: NonZeroU32::MIN,
                cert: None,
                mode: Mode::Fast,
                nested: Nested::default(),
            }
        }
    }

    fn read<T: DeserializeOwned>(json: Value) -> Result<T, String> {
        let Value::Object(map) = json else {
            panic!("not an object: {json}")
        };
        from_options("demo", &map).map_err(|e| e.to_string())
    }

    #[test]
    fn absent_options_take_their_defaults_and_present_ones_their_values() {
        assert_eq!(
            read::<Example>(serde_json::json!({})),
            Ok(Example::default())
        );
        let e: Example = read(serde_json::json!({
            "nodelay": false, "queue": 3, "ratio": 1, "window": 7, "streams": 9,
            "cert": "/c.pem", "mode": "safe", "nested": {"level": 2},
        }))
        .unwrap();
        assert_eq!(
            e,
            Example {
                nodelay: false,
                queue: 3,
                ratio: 1.0,
                window: Some(7),
                streams: NonZeroU32::new(9).unwrap(),
                cert: Some(PathBuf::from("/c.pem")),
                mode: Mode::Safe,
                nested: Nested { level: 2 },
            }
        );
        // `null` is "none" for an optional option.
        let e: Example = read(serde_json::json!({ "window": null })).unwrap();
        assert_eq!(e.window, None);
    }

    #[test]
    fn errors_name_the_plugin_the_option_and_what_was_expected() {
        for (json, needles) in [
            (
                serde_json::json!({ "nodelay": true, "nodelya": false }),
                &[
                    "invalid options for the 'demo' plugin",
                    "`nodelya`",
                    "`nodelay`",
                ][..],
            ),
            (
                serde_json::json!({ "nodelay": 3 }),
                &["option 'nodelay'", "integer `3`", "a boolean"],
            ),
            (
                serde_json::json!({ "queue": -1 }),
                &["option 'queue'", "-1", "usize"],
            ),
            (
                serde_json::json!({ "ratio": "half" }),
                &["option 'ratio'", "\"half\"", "f64"],
            ),
            (
                serde_json::json!({ "streams": 0 }),
                &["option 'streams'", "nonzero"],
            ),
            (
                serde_json::json!({ "mode": "sideways" }),
                &["option 'mode'", "`sideways`", "`fast`", "`safe`"],
            ),
            (
                serde_json::json!({ "nested": { "level": 300 } }),
                &["option 'nested.level'", "300", "u8"],
            ),
            (
                serde_json::json!({ "nested": { "depth": 1 } }),
                &["option 'nested", "`depth`", "`level`"],
            ),
        ] {
            let err = read::<Example>(json.clone()).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{json}: {needle:?} not in {err}");
            }
        }
    }

    #[test]
    fn a_plugin_without_options_refuses_every_key_and_needs_none() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoOptions {}
        read::<NoOptions>(serde_json::json!({})).unwrap();
        let err = read::<NoOptions>(serde_json::json!({ "nodelay": true })).unwrap_err();
        assert!(err.contains("unknown field `nodelay`"), "{err}");
    }

    #[test]
    fn required_options_and_plugin_checks_name_the_option() {
        #[derive(Debug, Deserialize)]
        struct Needs {
            #[allow(dead_code)]
            path: String,
            #[serde(default, deserialize_with = "even")]
            #[allow(dead_code)]
            count: u32,
        }
        fn even<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let n = u32::deserialize(d)?;
            if n % 2 == 0 {
                Ok(n)
            } else {
                Err(serde::de::Error::custom(format!("{n} is odd")))
            }
        }
        let err = read::<Needs>(serde_json::json!({})).unwrap_err();
        assert!(err.contains("missing field `path`"), "{err}");
        let err = read::<Needs>(serde_json::json!({ "path": "p", "count": 3 })).unwrap_err();
        assert!(err.contains("option 'count': 3 is odd"), "{err}");
    }
}
