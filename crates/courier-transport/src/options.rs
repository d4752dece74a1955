//! Plugin options read as typed structs: the deserializer behind
//! [`PluginContext::options`](crate::PluginContext::options).
//!
//! Options arrive as a JSON object (`protocols.toml` defaults overridden by
//! the engine's config). They are read with serde straight from that object,
//! through a deserializer whose errors know which option they are about, so a
//! plugin's message always names the key: `unknown option 'nodelya' (known:
//! nodelay)`, `option 'nodelay' must be true or false, not 3`.

use std::fmt;

use serde::de::value::{SeqDeserializer, StrDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, MapAccess, Unexpected,
    Visitor,
};
use serde_json::{Map, Value};

use crate::TransportError;

/// Reads `options` as a `T`; errors are [`TransportError::InvalidOptions`]
/// of `plugin`, naming the option at fault.
pub(crate) fn from_options<T: DeserializeOwned>(
    plugin: &str,
    options: &Map<String, Value>,
) -> Result<T, TransportError> {
    T::deserialize(Object(options))
        .map_err(|e| TransportError::invalid_options(plugin, e.to_string()))
}

/// Why options could not be read, and which option (a dotted path for an
/// option inside an object option).
#[derive(Debug)]
struct OptionsError {
    key: Option<String>,
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    /// The key is not one the plugin knows; these are.
    Unknown { known: &'static [&'static str] },
    /// The value is of the wrong type, or out of range.
    Expected { found: String, expected: String },
    /// The plugin needs the option and it is not there.
    Missing,
    /// The plugin's own message.
    Custom(String),
}

impl OptionsError {
    fn new(kind: ErrorKind) -> Self {
        Self { key: None, kind }
    }

    /// The error as seen from the object holding option `key`.
    fn under(mut self, key: &str) -> Self {
        self.key = Some(match self.key.take() {
            None => key.to_owned(),
            Some(inner) => format!("{key}.{inner}"),
        });
        self
    }
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key.as_deref().unwrap_or_default();
        match (&self.kind, self.key.is_some()) {
            (ErrorKind::Unknown { known }, _) => {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                write!(f, "unknown option '{key}' (known: {known})")
            }
            (ErrorKind::Expected { found, expected }, true) => {
                write!(f, "option '{key}' must be {expected}, not {found}")
            }
            (ErrorKind::Expected { found, expected }, false) => {
                write!(f, "the options must be {expected}, not {found}")
            }
            (ErrorKind::Missing, _) => write!(f, "option '{key}' is required"),
            (ErrorKind::Custom(message), true) => write!(f, "option '{key}': {message}"),
            (ErrorKind::Custom(message), false) => f.write_str(message),
        }
    }
}

impl std::error::Error for OptionsError {}

impl de::Error for OptionsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(ErrorKind::Custom(msg.to_string()))
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::invalid_value(unexp, exp)
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::new(ErrorKind::Expected {
            found: found(&unexp),
            expected: expected(&exp.to_string()),
        })
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Self::new(ErrorKind::Expected {
            found: format!("{len} elements"),
            expected: expected(&exp.to_string()),
        })
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let quoted: Vec<String> = expected.iter().map(|v| json_string(v)).collect();
        let expected = match quoted.split_last() {
            None => "nothing".to_owned(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        };
        Self::new(ErrorKind::Expected {
            found: json_string(variant),
            expected,
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::new(ErrorKind::Unknown { known: expected }).under(field)
    }

    fn missing_field(field: &'static str) -> Self {
        Self::new(ErrorKind::Missing).under(field)
    }
}

/// A value as the user wrote it, in JSON.
fn found(unexp: &Unexpected<'_>) -> String {
    match *unexp {
        Unexpected::Bool(b) => b.to_string(),
        Unexpected::Unsigned(n) => n.to_string(),
        Unexpected::Signed(n) => n.to_string(),
        Unexpected::Float(x) => x.to_string(),
        Unexpected::Char(c) => json_string(&c.to_string()),
        Unexpected::Str(s) => json_string(s),
        Unexpected::Unit => "null".to_owned(),
        Unexpected::Seq => "an array".to_owned(),
        Unexpected::Map => "an object".to_owned(),
        ref other => other.to_string(),
    }
}

/// What serde's own visitors expect (`u64`, `a boolean`), in words.
fn expected(serde_says: &str) -> String {
    let words = match serde_says {
        "a boolean" => "true or false",
        "u64" | "usize" | "u128" => "a non-negative integer",
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "a nonzero u64" | "a nonzero usize" | "a nonzero u128" => "a positive integer",
        "a nonzero u8" => "an integer from 1 to 255",
        "a nonzero u16" => "an integer from 1 to 65535",
        "a nonzero u32" => "an integer from 1 to 4294967295",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "path string" => "a path",
        other => other,
    };
    words.to_owned()
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The options object.
struct Object<'a>(&'a Map<String, Value>);

/// One option's value.
#[derive(Clone, Copy)]
struct Item<'a>(&'a Value);

/// The options of an object, one by one, remembering the key of the value
/// being read.
struct Entries<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<(&'a str, &'a Value)>,
}

impl<'a> Entries<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            iter: map.iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = OptionsError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, OptionsError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        let key: StrDeserializer<'_, OptionsError> = key.as_str().into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, OptionsError> {
        let (key, value) = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value was read before its key"))?;
        seed.deserialize(Item(value)).map_err(|e| e.under(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

impl<'de> de::Deserializer<'de> for Object<'_> {
    type Error = OptionsError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionsError> {
        visitor.visit_map(Entries::new(self.0))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, OptionsError> for Item<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Item<'_> {
    type Error = OptionsError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionsError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    match n.as_f64() {
                        Some(x) => visitor.visit_f64(x),
                        None => Err(de::Error::custom(format!("{n} is not a number"))),
                    }
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Item));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OptionsError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, OptionsError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, OptionsError> {
        // Unit variants are written as strings: `direction = "acceptor"`.
        match self.0 {
            Value::String(s) => {
                let variant: StrDeserializer<'_, OptionsError> = s.as_str().into_deserializer();
                visitor.visit_enum(variant)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
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
        for (json, message) in [
            (
                serde_json::json!({ "nodelay": true, "nodelya": false }),
                "invalid options for the 'demo' plugin: unknown option 'nodelya' \
                 (known: nodelay, queue, ratio, window, streams, cert, mode, nested)",
            ),
            (
                serde_json::json!({ "nodelay": 3 }),
                "option 'nodelay' must be true or false, not 3",
            ),
            (
                serde_json::json!({ "queue": -1 }),
                "option 'queue' must be a non-negative integer, not -1",
            ),
            (
                serde_json::json!({ "queue": 1.5 }),
                "option 'queue' must be a non-negative integer, not 1.5",
            ),
            (
                serde_json::json!({ "ratio": "half" }),
                "option 'ratio' must be a number, not \"half\"",
            ),
            (
                serde_json::json!({ "streams": 0 }),
                "option 'streams' must be an integer from 1 to 4294967295, not 0",
            ),
            (
                serde_json::json!({ "cert": [1] }),
                "option 'cert' must be a path, not an array",
            ),
            (
                serde_json::json!({ "mode": "sideways" }),
                "option 'mode' must be \"fast\" or \"safe\", not \"sideways\"",
            ),
            (
                serde_json::json!({ "nested": { "level": 300 } }),
                "option 'nested.level' must be an integer from 0 to 255, not 300",
            ),
            (
                serde_json::json!({ "nested": { "depth": 1 } }),
                "unknown option 'nested.depth' (known: level)",
            ),
        ] {
            let err = read::<Example>(json.clone()).unwrap_err();
            assert!(err.ends_with(message), "{json}: {err}");
        }
    }

    #[test]
    fn a_plugin_without_options_refuses_every_key_and_needs_none() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoOptions {}
        read::<NoOptions>(serde_json::json!({})).unwrap();
        let err = read::<NoOptions>(serde_json::json!({ "nodelay": true })).unwrap_err();
        assert!(
            err.ends_with("unknown option 'nodelay' (known: none)"),
            "{err}"
        );
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
        fn even<'de, D: de::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let n = u32::deserialize(d)?;
            if n % 2 == 0 {
                Ok(n)
            } else {
                Err(de::Error::custom(format!("{n} is odd")))
            }
        }
        let err = read::<Needs>(serde_json::json!({})).unwrap_err();
        assert!(err.ends_with("option 'path' is required"), "{err}");
        let err = read::<Needs>(serde_json::json!({ "path": "p", "count": 3 })).unwrap_err();
        assert!(err.ends_with("option 'count': 3 is odd"), "{err}");
    }
}
