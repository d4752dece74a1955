//! `courier bench --clients N`: N client processes against one server per
//! layer, their calls summed into one row. Never a timing threshold: the
//! figures are whatever this machine gives, only their arithmetic is
//! checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// A hang guard around one command.
const GUARD: Duration = Duration::from_secs(180);

/// A JSON file of this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "courier-cli-bench-clients-{}-{name}.json",
            std::process::id()
        )))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn three_clients_make_one_row_per_layer_with_all_their_calls() {
    let json = Scratch::new("three");
    let r = common::run_with(
        &[
            "bench",
            "--protocols",
            "tcp",
            "--sizes",
            "64",
            "--in-flight",
            "4",
            "--clients",
            "3",
            "--quick",
            "--json",
            json.0.to_str().unwrap(),
        ],
        None,
        GUARD,
    );
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");

    // The table has a clients column after `in flight`.
    let header = r
        .stdout
        .lines()
        .find(|l| l.starts_with("| protocol "))
        .unwrap();
    let columns: Vec<&str> = header.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(columns[3..6], ["in flight", "clients", "layer"], "{header}");
    let rows = r.rows();
    assert_eq!(rows.len(), 3, "{}", r.stdout);
    for row in &rows {
        assert_eq!(row.len(), 13, "{row:?}");
        assert_eq!((row[3].as_str(), row[4].as_str()), ("4", "3"), "{row:?}");
    }

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json.0).unwrap()).unwrap();
    assert_eq!(doc["errors"], serde_json::json!([]), "{doc}");
    assert_eq!(doc["config"]["clients"], serde_json::json!([3]));
    let results = doc["results"].as_array().unwrap();
    // --quick: at most 2000 calls per client (fewer only past the time cap).
    let max_calls = doc["config"]["max_calls"].as_u64().unwrap();
    for layer in ["engine", "raw", "socket"] {
        let rec = results
            .iter()
            .find(|rec| rec["layer"] == layer)
            .unwrap_or_else(|| panic!("no {layer} record: {doc}"));
        assert_eq!(rec["clients"], 3, "{rec}");
        assert_eq!(rec["in_flight"], 4, "{rec}");
        assert_eq!(rec["payload_bytes"], 64, "{rec}");
        let calls = rec["calls"].as_u64().unwrap();
        let run = &rec["per_run"][0];
        assert_eq!(run["calls"].as_u64().unwrap(), calls, "{rec}");
        // The row's calls are the sum of the three clients' calls; each
        // client made at least one and at most its own budget.
        let each: Vec<u64> = run["client_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(each.len(), 3, "{rec}");
        assert_eq!(each.iter().sum::<u64>(), calls, "{rec}");
        assert!(each.iter().all(|c| (1..=max_calls).contains(c)), "{rec}");
        // The rate is all the calls over the common span.
        let elapsed = run["elapsed_s"].as_f64().unwrap();
        let rate = rec["rpcs_per_s"].as_f64().unwrap();
        assert!(elapsed > 0.0 && rate > 0.0, "{rec}");
        #[allow(clippy::cast_precision_loss)]
        let expected = calls as f64 / elapsed;
        assert!((rate - expected).abs() <= 1e-6 * expected, "{rec}");
        for k in ["p50_us", "p99_us", "p999_us"] {
            assert!(rec[k].as_f64().unwrap() > 0.0, "{k}: {rec}");
        }
        // Ratios to the raw floor under the same load.
        assert!(rec["rpcs_per_s_vs_raw"].as_f64().unwrap() > 0.0, "{rec}");
    }
    let raw = results.iter().find(|rec| rec["layer"] == "raw").unwrap();
    assert_eq!(raw["p50_vs_raw"], 1.0, "{raw}");
}

#[test]
fn client_counts_out_of_range_are_errors() {
    for args in [
        &["bench", "--clients", "0"][..],
        &["bench", "--clients", "65"][..],
        &["bench", "--clients", "2,x"][..],
        &["bench", "--mode", "bulk", "--clients", "2"][..],
    ] {
        let r = common::run_with(args, None, GUARD);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("courier: "), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    // The client subcommand is hidden from the help.
    let r = common::run_with(&["--help"], None, GUARD);
    assert!(!r.stdout.contains("bench-client"), "{r:?}");
    let r = common::run_with(&["bench", "--help"], None, GUARD);
    assert!(r.stdout.contains("--clients"), "{r:?}");
}
