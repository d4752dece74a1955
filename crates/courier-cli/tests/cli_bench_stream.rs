//! `courier bench --mode stream` and `--mode sweep` as CI runs them: every
//! row is printed, the JSON has every documented field and no error, and
//! bad options are errors. Never a timing threshold: the figures are
//! whatever this machine gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Run;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// A hang guard for one command (`--quick` takes seconds).
const GUARD: Duration = Duration::from_secs(300);

/// The fields of every record of `--mode stream`'s `results`
/// (docs/benchmarks.md, "Streams and large payloads").
const STREAM_FIELDS: [&str; 23] = [
    "protocol",
    "plugin",
    "direction",
    "item_bytes",
    "items",
    "runs",
    "items_per_s",
    "items_per_s_min",
    "items_per_s_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "raw_items_per_s",
    "raw_mib_per_s",
    "raw_mib_per_s_min",
    "raw_mib_per_s_max",
    "vs_raw",
    "unary_in_flight",
    "unary_rpcs_per_s",
    "unary_rpcs_per_s_min",
    "unary_rpcs_per_s_max",
    "vs_unary",
    "per_run",
];

const STREAM_PER_RUN_FIELDS: [&str; 5] = [
    "items_per_s",
    "elapsed_s",
    "raw_items_per_s",
    "raw_elapsed_s",
    "unary_rpcs_per_s",
];

/// The fields of every record of `--mode sweep`'s `results`.
const SWEEP_FIELDS: [&str; 16] = [
    "protocol",
    "plugin",
    "payload_bytes",
    "calls",
    "runs",
    "p50_us",
    "p50_us_min",
    "p50_us_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "raw_p50_us",
    "raw_mib_per_s",
    "p50_vs_raw",
    "mib_per_s_vs_raw",
    "per_run",
];

const SWEEP_PER_RUN_FIELDS: [&str; 7] = [
    "p50_us",
    "mib_per_s",
    "calls",
    "elapsed_s",
    "raw_p50_us",
    "raw_mib_per_s",
    "raw_calls",
];

fn run(args: &[&str]) -> Run {
    common::run_with(args, None, GUARD)
}

/// A scratch directory for this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "courier-cli-bench-stream-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn number(v: &Value) -> bool {
    v.as_f64().is_some_and(f64::is_finite)
}

/// The CI smoke test of `--mode stream`: a row per (protocol, direction,
/// size), and a complete JSON record for each, with no error.
#[test]
fn quick_stream_bench_prints_every_row_and_a_complete_json() {
    let scratch = Scratch::new("stream");
    let json = scratch.path("stream.json");
    let r = run(&[
        "bench",
        "--mode",
        "stream",
        "--quick",
        "--protocols",
        "mem,tcp",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");

    let rows = r.rows();
    for protocol in ["mem", "tcp"] {
        for dir in ["server", "client"] {
            for size in ["64 B", "1 MiB"] {
                let row = rows
                    .iter()
                    .find(|c| c[0] == protocol && c[1] == dir && c[2] == size)
                    .unwrap_or_else(|| panic!("no row {protocol} {dir} {size}:\n{}", r.stdout));
                assert_eq!(row.len(), 11, "{row:?}");
                // items, items/s, raw items/s, ÷ raw are numbers.
                for i in [3, 4, 6, 8] {
                    assert!(row[i].parse::<f64>().is_ok(), "{row:?}");
                }
                // The unary comparison for small items only, MiB/s for
                // large ones only.
                let small = size == "64 B";
                assert_eq!(row[9].parse::<f64>().is_ok(), small, "{row:?}");
                assert_eq!(row[10].parse::<f64>().is_ok(), small, "{row:?}");
                assert_eq!(row[5].parse::<f64>().is_ok(), !small, "{row:?}");
            }
        }
    }
    assert_eq!(rows.len(), 2 * 2 * 2, "{}", r.stdout);

    let doc = read_json(&json);
    assert_eq!(doc["schema"], "courier-bench-stream/1");
    for k in ["cores", "kernel", "cpu_model", "hostname", "os", "arch"] {
        assert!(doc["machine"].get(k).is_some(), "machine.{k}: {doc}");
    }
    let config = &doc["config"];
    for k in [
        "command",
        "protocols",
        "sizes",
        "runs",
        "quick",
        "progress_spin_us",
        "window_bytes",
        "bytes_per_measurement",
        "max_items",
        "min_items",
        "unary_in_flight",
        "unary_max_calls",
        "time_cap_ms",
        "max_message_size",
        "pin",
        "client_cpu",
        "peer_cpu",
        "courier_version",
    ] {
        assert!(config.get(k).is_some(), "config.{k}: {config}");
    }
    assert_eq!(config["protocols"], serde_json::json!(["mem", "tcp"]));
    assert_eq!(config["sizes"], serde_json::json!([64, 1 << 20]));
    assert_eq!(config["quick"], true);
    assert_eq!(config["runs"], 1);
    assert_eq!(config["unary_in_flight"], 32);
    assert!(config["window_bytes"].is_null(), "{config}");
    assert!(number(&doc["elapsed_s"]), "{doc}");
    assert_eq!(doc["errors"], serde_json::json!([]));

    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 8);
    for rec in results {
        let obj = rec.as_object().unwrap();
        for k in STREAM_FIELDS {
            assert!(obj.contains_key(k), "record without {k}: {rec}");
        }
        assert!(["mem", "tcp"].contains(&rec["protocol"].as_str().unwrap()));
        assert!(["server", "client"].contains(&rec["direction"].as_str().unwrap()));
        assert_eq!(rec["runs"], 1);
        assert!(rec["items"].as_u64().unwrap() > 0, "{rec}");
        for k in [
            "items_per_s",
            "mib_per_s",
            "raw_items_per_s",
            "raw_mib_per_s",
            "vs_raw",
        ] {
            assert!(number(&rec[k]), "{k}: {rec}");
        }
        let small = rec["item_bytes"].as_u64().unwrap() < 64 << 10;
        for k in ["unary_in_flight", "unary_rpcs_per_s", "vs_unary"] {
            assert_eq!(number(&rec[k]), small, "{k}: {rec}");
        }
        let runs = rec["per_run"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{rec}");
        for k in STREAM_PER_RUN_FIELDS {
            assert!(runs[0].get(k).is_some(), "per_run without {k}: {rec}");
        }
    }
}

/// `--window` reaches both engines: items four times the window (they may
/// overshoot their credit by one) go through both ways, and the JSON says
/// which window was used.
#[test]
fn stream_window_option_is_applied_and_recorded() {
    let scratch = Scratch::new("window");
    let json = scratch.path("window.json");
    let r = run(&[
        "bench",
        "--mode",
        "stream",
        "--quick",
        "--protocols",
        "mem",
        "--sizes",
        "256K",
        "--window",
        "64K",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout.contains("window 64 KiB"), "{}", r.stdout);
    let doc = read_json(&json);
    assert_eq!(doc["config"]["window_bytes"], 64 << 10);
    assert_eq!(doc["errors"], serde_json::json!([]));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{doc}");
    for rec in results {
        assert_eq!(rec["item_bytes"], 256 << 10);
        assert!(rec["unary_rpcs_per_s"].is_null(), "{rec}");
    }
}

/// `--mode sweep`: a row and a complete record per (protocol, size), one
/// call in flight; a payload above the default largest message (64 MiB)
/// goes through.
#[test]
fn sweep_prints_every_size_and_a_complete_json() {
    let scratch = Scratch::new("sweep");
    let json = scratch.path("sweep.json");
    let r = run(&[
        "bench",
        "--mode",
        "sweep",
        "--quick",
        "--protocols",
        "mem,tcp",
        "--sizes",
        "64,1M,65M",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let rows = r.rows();
    assert_eq!(rows.len(), 2 * 3, "{}", r.stdout);
    for row in &rows {
        assert_eq!(row.len(), 9, "{row:?}");
        for cell in &row[2..] {
            assert!(cell.parse::<f64>().is_ok(), "{row:?}");
        }
    }
    let doc = read_json(&json);
    assert_eq!(doc["schema"], "courier-bench-sweep/1");
    let config = &doc["config"];
    assert_eq!(config["in_flight"], 1);
    assert_eq!(config["sizes"], serde_json::json!([64, 1 << 20, 65 << 20]));
    // The engines keep their default largest message: the 65 MiB calls go
    // by the bulk path (the transport alone takes them in one message).
    assert_eq!(config["engine_max_message_size"], 64 << 20, "{config}");
    assert!(
        config["transport_max_message_size"].as_u64().unwrap() > 65 << 20,
        "{config}"
    );
    assert_eq!(doc["errors"], serde_json::json!([]));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for rec in results {
        let obj = rec.as_object().unwrap();
        for k in SWEEP_FIELDS {
            assert!(obj.contains_key(k), "record without {k}: {rec}");
        }
        for k in ["p50_us", "mib_per_s", "raw_p50_us", "raw_mib_per_s"] {
            assert!(number(&rec[k]), "{k}: {rec}");
        }
        let runs = rec["per_run"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{rec}");
        for k in SWEEP_PER_RUN_FIELDS {
            assert!(runs[0].get(k).is_some(), "per_run without {k}: {rec}");
        }
    }
}

#[test]
fn stream_and_sweep_options_are_checked() {
    for (args, says) in [
        (
            &["bench", "--mode", "rpc", "--window", "64K"][..],
            "--window applies to --mode stream only",
        ),
        (
            &["bench", "--mode", "stream", "--window", "0"][..],
            "--window 0",
        ),
        (
            &["bench", "--mode", "stream", "--clients", "2"][..],
            "--clients applies to --mode rpc only",
        ),
        (
            &["bench", "--mode", "sweep", "--clients", "2"][..],
            "--clients applies to --mode rpc only",
        ),
        (
            &["bench", "--mode", "stream", "--window", "4X"][..],
            "suffix",
        ),
    ] {
        let r = run(args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("courier: "), "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}
