//! A checker of the Prometheus text exposition format (0.0.4), for tests:
//! the unit tests of `stats/prometheus.rs` and the `courier stats --format
//! prometheus` tests of `courier-cli` (which include this file by path).
//! Standard library only.
//!
//! It reads the text line by line and fails on the first line that breaks
//! the format: a sample that is not `name{labels} value`, a metric or label
//! name outside `[a-zA-Z_:][a-zA-Z0-9_:]*` / `[a-zA-Z_][a-zA-Z0-9_]*`, a
//! label value with an escape other than `\\`, `\"` and `\n`, a value that
//! is not a float, a `TYPE` after its samples or twice, a family whose
//! samples are not together, a sample twice, a counter that does not end
//! in `_total` or goes below zero; and, for each histogram, buckets that
//! are not cumulative in increasing `le`, that do not end with
//! `le="+Inf"` equal to `_count`, or that lack their `_sum`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The sample's name (`courier_rpc_latency_seconds_bucket`, …).
    pub(crate) name: String,
    /// Its labels, unescaped.
    pub(crate) labels: BTreeMap<String, String>,
    /// Its value.
    pub(crate) value: f64,
}

/// What a valid text holds.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    /// Family name -> type (`counter`, `gauge`, `histogram`, …).
    pub(crate) types: BTreeMap<String, String>,
    /// Family name -> help text (unescaped).
    pub(crate) help: BTreeMap<String, String>,
    /// Every sample, in order.
    pub(crate) samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of
    /// `labels`, if exactly one matches.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("value {text:?} is not a float: {e}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `text`; returns the labels and
/// what follows the closing brace.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text
        .strip_prefix('{')
        .ok_or_else(|| "labels must start with '{'".to_owned())?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without '=' in {rest:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {name} is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label {name} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "label {name}: invalid escape {:?}",
                            other.map(|(_, c)| c)
                        ))
                    }
                },
                Some((_, '\n')) => return Err(format!("label {name}: a raw newline")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let rest = &line[name_end..];
    let (labels, rest) = if rest.starts_with('{') {
        parse_labels(rest)?
    } else {
        (BTreeMap::new(), rest)
    };
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| "expected one space before the value".to_owned())?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|e| format!("timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("more than a value and a timestamp after the labels".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The family a sample belongs to, given the declared types.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

/// Checks `text`; the error names the line (from 1) and what is wrong.
pub(crate) fn check(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_metric_name(name) {
                        return Err(at(format!("invalid metric name {name:?}")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if out.types.contains_key(*name) || done.contains(*name) {
                        return Err(at(format!("TYPE of {name} twice, or after its samples")));
                    }
                    if out
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == *name)
                    {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                    out.types.insert((*name).to_owned(), (*kind).to_owned());
                }
                ["HELP", name, help] => {
                    if !is_metric_name(name) {
                        return Err(at(format!("invalid metric name {name:?}")));
                    }
                    let mut text = String::new();
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c != '\\' {
                            text.push(c);
                            continue;
                        }
                        match chars.next() {
                            Some('\\') => text.push('\\'),
                            Some('n') => text.push('\n'),
                            other => return Err(at(format!("invalid escape {other:?}"))),
                        }
                    }
                    if out.help.insert((*name).to_owned(), text).is_some() {
                        return Err(at(format!("HELP of {name} twice")));
                    }
                }
                ["TYPE" | "HELP", ..] => return Err(at("incomplete HELP or TYPE".to_owned())),
                _ => {} // a comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &out.types);
        if current.as_deref() != Some(family.as_str()) {
            if done.contains(&family) {
                return Err(at(format!("the samples of {family} are not together")));
            }
            if let Some(previous) = current.replace(family.clone()) {
                done.insert(previous);
            }
        }
        let kind = out.types.get(&family).map_or("untyped", String::as_str);
        if kind == "counter" {
            if !sample.name.ends_with("_total") {
                return Err(at("a counter whose name does not end in _total".to_owned()));
            }
            if sample.value.is_nan() || sample.value < 0.0 {
                return Err(at("a counter below zero".to_owned()));
            }
        }
        if kind == "histogram"
            && sample.name.ends_with("_bucket") != sample.labels.contains_key("le")
        {
            return Err(at(
                "le belongs on _bucket samples, and only there".to_owned()
            ));
        }
        let key = (
            sample.name.clone(),
            sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if !seen.insert(key) {
            return Err(at("the same sample twice".to_owned()));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Each histogram series: buckets cumulative in increasing `le`, the last
/// `+Inf` and equal to `_count`, and a `_sum`.
fn check_histograms(out: &Exposition) -> Result<(), String> {
    type Series = BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>>;
    for (family, _) in out.types.iter().filter(|(_, t)| *t == "histogram") {
        let series_of = |s: &Sample| -> Vec<(String, String)> {
            s.labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut buckets: Series = BTreeMap::new();
        let bucket_name = format!("{family}_bucket");
        for s in out.samples.iter().filter(|s| s.name == bucket_name) {
            let le = s.labels.get("le").map_or("", String::as_str);
            let le = parse_value(le).map_err(|e| format!("{family}: le: {e}"))?;
            buckets.entry(series_of(s)).or_default().push((le, s.value));
        }
        for (labels, series) in &buckets {
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut previous: Option<(f64, f64)> = None;
            for &(le, n) in series {
                if let Some((le0, n0)) = previous {
                    if le <= le0 {
                        return Err(format!("{family}{labels:?}: le {le} after {le0}"));
                    }
                    if n < n0 {
                        return Err(format!(
                            "{family}{labels:?}: bucket le={le} holds {n} < {n0}: not cumulative"
                        ));
                    }
                }
                previous = Some((le, n));
            }
            let Some((last_le, last)) = previous else {
                continue;
            };
            if last_le != f64::INFINITY {
                return Err(format!("{family}{labels:?}: the last bucket is not +Inf"));
            }
            let count = out
                .value(&format!("{family}_count"), &pairs)
                .ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
            if count != last {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {last} != _count {count}"
                ));
            }
            out.value(&format!("{family}_sum"), &pairs)
                .ok_or_else(|| format!("{family}{labels:?}: no _sum"))?;
        }
        let counts = out
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_count"))
            .count();
        if counts != buckets.len() {
            return Err(format!(
                "{family}: {counts} _count samples for {} series of buckets",
                buckets.len()
            ));
        }
    }
    Ok(())
}
