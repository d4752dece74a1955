//! `courier bench` as a user (and CI) runs it: the table is complete, the
//! JSON has every documented field, protocols resolve through the
//! registry, and bad input is an error. Never a timing threshold: the
//! figures are whatever this machine gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// How long one command may take before the test gives up on it (a hang
/// guard; `--quick` takes seconds).
const GUARD: Duration = Duration::from_secs(180);

/// The fields of every record of the JSON's `results` (docs/benchmarks.md).
const RECORD_FIELDS: [&str; 28] = [
    "protocol",
    "plugin",
    "layer",
    "policy",
    "progress_spin_us",
    "payload_bytes",
    "in_flight",
    "clients",
    "runs",
    "calls",
    "p50_us",
    "p50_us_min",
    "p50_us_max",
    "p99_us",
    "p99_us_min",
    "p99_us_max",
    "p999_us",
    "p999_us_min",
    "p999_us_max",
    "rpcs_per_s",
    "rpcs_per_s_min",
    "rpcs_per_s_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "p50_vs_raw",
    "rpcs_per_s_vs_raw",
    "per_run",
];

const PER_RUN_FIELDS: [&str; 8] = [
    "p50_us",
    "p99_us",
    "p999_us",
    "rpcs_per_s",
    "mib_per_s",
    "calls",
    "elapsed_s",
    "client_calls",
];

/// Runs `courier ARGS` (with `COURIER_PROTOCOLS` set to `table` if given).
fn run_with(args: &[&str], table: Option<&Path>) -> Run {
    common::run_with(args, table, GUARD)
}

fn run(args: &[&str]) -> Run {
    run_with(args, None)
}

/// A scratch directory for this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "courier-cli-bench-test-{}-{name}",
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

/// The CI smoke test: `courier bench --quick --protocols tcp,unix --json F`
/// prints a row for every (protocol, layer, size, in flight), and the JSON
/// holds a complete record for each.
#[test]
fn quick_bench_prints_every_row_and_a_complete_json() {
    let scratch = Scratch::new("quick");
    let json = scratch.path("bench.json");
    let svg = scratch.path("bench.svg");
    let r = run(&[
        "bench",
        "--quick",
        "--protocols",
        "tcp,unix",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    // The progress bar is hidden when stderr is not a terminal.
    assert!(r.stderr.is_empty(), "{r:?}");

    let sizes = ["0 B", "64 B", "64 KiB", "1 MiB"];
    let in_flight = ["1", "32"];
    let layers = ["engine", "raw", "socket"];
    let rows = r.rows();
    for protocol in ["tcp", "unix"] {
        for size in sizes {
            for n in in_flight {
                for layer in layers {
                    let row = rows
                        .iter()
                        .find(|c| c[0] == protocol && c[2] == size && c[3] == n && c[4] == layer)
                        .unwrap_or_else(|| {
                            panic!("no row for {protocol} {layer} {size} ×{n}:\n{}", r.stdout)
                        });
                    assert_eq!(row.len(), 12, "{row:?}");
                    let policy = match courier::DEFAULT_PROGRESS_SPIN_US {
                        0 => "park".to_owned(),
                        us => format!("spin {us}µs"),
                    };
                    assert_eq!(row[1], policy, "{row:?}");
                    // Every figure is a number, MiB/s only from 64 KiB on.
                    for cell in &row[5..=8] {
                        assert!(cell.parse::<f64>().is_ok(), "{row:?}");
                    }
                    let big = size.ends_with("KiB") || size.ends_with("MiB");
                    assert_eq!(row[9].parse::<f64>().is_ok(), big, "{row:?}");
                    assert!(row[10].parse::<f64>().is_ok(), "{row:?}");
                }
            }
        }
    }
    assert_eq!(rows.len(), 2 * 4 * 2 * 3, "{}", r.stdout);

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["cores", "kernel", "cpu_model", "hostname"] {
        assert!(doc["machine"].get(k).is_some(), "machine.{k}: {doc}");
    }
    assert!(doc["machine"]["cores"].as_u64().unwrap() >= 1);
    let config = &doc["config"];
    assert_eq!(config["quick"], true);
    assert_eq!(config["runs"], 1);
    assert_eq!(config["protocols"], serde_json::json!(["tcp", "unix"]));
    assert!(config["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--quick"));
    assert_eq!(doc["errors"], serde_json::json!([]));
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 48);
    for rec in results {
        let obj = rec.as_object().unwrap();
        for k in RECORD_FIELDS {
            assert!(obj.contains_key(k), "record without {k}: {rec}");
        }
        for k in ["p50_us", "p99_us", "p999_us", "rpcs_per_s"] {
            assert!(rec[k].as_f64().unwrap() > 0.0, "{k}: {rec}");
        }
        assert_eq!(rec["runs"], 1);
        assert_eq!(rec["clients"], 1);
        assert_eq!(
            rec["mib_per_s"].is_null(),
            rec["payload_bytes"].as_u64().unwrap() < 64 << 10,
            "{rec}"
        );
        assert!(rec["p50_vs_raw"].as_f64().is_some(), "{rec}");
        let runs = rec["per_run"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        for k in PER_RUN_FIELDS {
            assert!(runs[0].get(k).is_some(), "per_run without {k}: {rec}");
        }
        assert!(["engine", "raw", "socket"].contains(&rec["layer"].as_str().unwrap()));
    }

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    // The legend names every protocol and layer.
    for word in ["tcp", "unix", "engine", "raw", "socket"] {
        assert!(
            svg.lines().any(|l| l.trim() == word),
            "no '{word}' in the SVG"
        );
    }
}

#[test]
fn unknown_protocol_is_an_error_listing_the_known_ones() {
    let r = run(&["bench", "--quick", "--protocols", "tcp,carrier-pigeon"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.starts_with("courier: "), "{r:?}");
    assert!(
        r.stderr.contains("unknown protocol 'carrier-pigeon'"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("ofi+tcp") && r.stderr.contains("unix"),
        "{r:?}"
    );
    // Nothing was measured.
    assert!(r.stdout.is_empty(), "{r:?}");
}

/// A protocol declared in the table whose plugin this program lacks is
/// reported as such (a custom table, so the test holds once quic and shm
/// are built in).
#[test]
fn declared_protocol_without_its_plugin_is_reported() {
    let scratch = Scratch::new("missing");
    let table = scratch.path("protocols.toml");
    std::fs::write(
        &table,
        "[protocols.pigeon]\nplugin = \"avian\"\naliases = [\"ipoac\"]\n",
    )
    .unwrap();
    let r = run_with(&["bench", "--quick", "--protocols", "ipoac"], Some(&table));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.starts_with("courier: "), "{r:?}");
    assert!(r.stderr.contains("'pigeon'"), "{r:?}");
    assert!(r.stderr.contains("'avian' transport plugin"), "{r:?}");
    assert!(r.stderr.contains("not built into this program"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

/// The protocols of `courier protocols` that are not built in (quic and
/// shm until their plugins land) are refused the same way.
#[test]
fn built_in_table_protocols_without_plugin_are_reported() {
    let listing = run(&["protocols"]);
    let missing: Vec<String> = listing
        .stdout
        .lines()
        .filter(|l| l.contains("not built in"))
        .filter_map(|l| l.split('|').nth(1).map(|c| c.trim().to_owned()))
        .collect();
    for p in missing {
        let r = run(&["bench", "--quick", "--protocols", &p]);
        assert_eq!(r.code(), Some(1), "{p}: {r:?}");
        assert!(
            r.stderr.contains("not built into this program"),
            "{p}: {r:?}"
        );
    }
}

/// Names resolve through the registry, custom tables included: an alias
/// of a custom protocol on the tcp plugin is measured under its canonical
/// name, with the plain-socket floor its plugin has.
#[test]
fn custom_protocol_aliases_resolve_to_canonical_names() {
    let scratch = Scratch::new("custom");
    let table = scratch.path("protocols.toml");
    std::fs::write(
        &table,
        "[protocols.mytcp]\nplugin = \"tcp\"\naliases = [\"my+tcp\"]\noptions = { nodelay = true }\n",
    )
    .unwrap();
    let r = run_with(
        &[
            "bench",
            "--protocols",
            "my+tcp,mytcp",
            "--sizes",
            "64,4K",
            "--in-flight",
            "2",
            "--runs",
            "2",
            "--calls",
            "200",
        ],
        Some(&table),
    );
    assert_eq!(r.code(), Some(0), "{r:?}");
    let rows = r.rows();
    assert_eq!(rows.len(), 2 * 3, "{}", r.stdout);
    for row in &rows {
        assert_eq!(row[0], "mytcp", "{row:?}");
        assert_eq!(row[3], "2", "{row:?}");
        // Two runs: median (min..max).
        assert!(row[5].contains(" (") && row[5].contains(".."), "{row:?}");
    }
    assert!(rows.iter().any(|c| c[2] == "4 KiB" && c[4] == "socket"));
}

#[test]
fn bad_options_are_errors() {
    for args in [
        &["bench", "--sizes", "4X"][..],
        &["bench", "--sizes", "2G"][..],
        &["bench", "--in-flight", "0"][..],
        &["bench", "--runs", "0"][..],
        &["bench", "--layers", "kernel"][..],
        &["bench", "--pin", "sideways"][..],
    ] {
        let r = run(args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("courier: "), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
    }
    let r = run(&["bench", "--sizes", "4X"]);
    assert!(r.stderr.contains("suffix"), "{r:?}");
    // The peer subcommand is hidden from the help.
    let r = run(&["--help"]);
    assert!(r.stdout.contains("bench"), "{r:?}");
    assert!(!r.stdout.contains("bench-peer"), "{r:?}");
}

/// `--layers` and `--progress-spin-us` choose the rows: one per policy and
/// layer asked for.
#[test]
fn layers_and_policies_select_what_is_measured() {
    let r = run(&[
        "bench",
        "--protocols",
        "unix",
        "--sizes",
        "0",
        "--in-flight",
        "1",
        "--layers",
        "engine,raw",
        "--progress-spin-us",
        "0,20",
        "--runs",
        "1",
        "--calls",
        "100",
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let rows = r.rows();
    assert_eq!(rows.len(), 4, "{}", r.stdout);
    for policy in ["park", "spin 20µs"] {
        for layer in ["engine", "raw"] {
            assert!(
                rows.iter().any(|c| c[1] == policy && c[4] == layer),
                "{policy} {layer}: {}",
                r.stdout
            );
        }
    }
    assert!(!rows.iter().any(|c| c[4] == "socket"));
}

/// `--set tcp,shm`: a row of its own, engine layers only, named by the set;
/// its client, this process, reaches the peer (a child process) by shm, as
/// the note under the table and the JSON record's `plugin` say. The JSON's
/// `config.sets` lists it, `config.protocols` does not.
#[test]
fn a_set_row_is_measured_by_the_path_a_lookup_takes() {
    let scratch = Scratch::new("set");
    let json = scratch.path("bench.json");
    let r = run(&[
        "bench",
        "--quick",
        "--protocols",
        "shm",
        "--set",
        "tcp,shm",
        "--sizes",
        "64",
        "--in-flight",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let rows = r.rows();
    let set_rows: Vec<&Vec<String>> = rows.iter().filter(|c| c[0] == "tcp,shm").collect();
    assert_eq!(set_rows.len(), 1, "{}", r.stdout);
    assert_eq!(set_rows[0][4], "engine", "{:?}", set_rows[0]);
    // No raw floor of a set: no ratio to it.
    assert_eq!(set_rows[0][10], "-", "{:?}", set_rows[0]);
    assert_eq!(
        rows.iter().filter(|c| c[0] == "shm").count(),
        2,
        "{}",
        r.stdout
    );
    let note = r
        .stdout
        .lines()
        .find(|l| l.starts_with("tcp,shm: an address set"))
        .unwrap_or_else(|| panic!("no note on the set:\n{}", r.stdout));
    assert!(note.contains("connected by shm"), "{note}");
    assert!(note.contains("engine p50 over shm's alone: "), "{note}");
    assert!(note.contains("(64 B ×1)"), "{note}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["config"]["protocols"], serde_json::json!(["shm"]));
    assert_eq!(doc["config"]["sets"], serde_json::json!(["tcp,shm"]));
    let set: Vec<&Value> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rec| rec["protocol"] == "tcp,shm")
        .collect();
    assert_eq!(set.len(), 1, "{doc}");
    assert_eq!(set[0]["plugin"], "shm", "{}", set[0]);
    assert_eq!(set[0]["layer"], "engine", "{}", set[0]);
    assert!(set[0]["p50_vs_raw"].is_null(), "{}", set[0]);
    for k in RECORD_FIELDS {
        assert!(set[0].get(k).is_some(), "record without {k}: {}", set[0]);
    }
}

#[test]
fn a_bad_set_is_an_error_saying_why() {
    for (args, says) in [
        (
            &["bench", "--set", "tcp"][..],
            "a set has two protocols or more",
        ),
        (
            &["bench", "--set", "tcp,,shm"][..],
            "an empty protocol name",
        ),
        (
            &["bench", "--set", "tcp,tcp"][..],
            "protocol 'tcp' is given twice",
        ),
        (
            &["bench", "--set", "tcp,mem"][..],
            "'mem' reaches one process only",
        ),
        (
            &["bench", "--set", "tcp,carrier-pigeon"][..],
            "unknown protocol 'carrier-pigeon'",
        ),
        (
            &["bench", "--mode", "bulk", "--set", "tcp,shm"][..],
            "--set applies to --mode rpc only",
        ),
    ] {
        let r = run(args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("courier: "), "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}
