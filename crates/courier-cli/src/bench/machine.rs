//! The machine a benchmark runs on, as the table's heading and the JSON
//! describe it.

use std::fmt;

use serde::Serialize;

/// The machine a benchmark runs on. Serialized as the `machine` object of
/// `courier bench --json` (docs/benchmarks.md); displayed as the table
/// heading's `2 cores, <CPU model>, kernel <release>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `std::thread::available_parallelism()`: read it before pinning.
    pub cores: Option<usize>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// The first `model name` (or `Model`, `Hardware`, `cpu model`) of
    /// `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// `/proc/sys/kernel/hostname`.
    pub hostname: Option<String>,
    /// `std::env::consts::OS`.
    pub os: &'static str,
    /// `std::env::consts::ARCH`.
    pub arch: &'static str,
}

impl Machine {
    /// Reads this machine's description (each part `None` where it cannot
    /// be read). Pinning this thread first would make `cores` 1.
    pub fn read() -> Self {
        Self {
            cores: std::thread::available_parallelism()
                .map(std::num::NonZeroUsize::get)
                .ok(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cores {
            Some(n) => write!(f, "{n} cores")?,
            None => f.write_str("unknown cores")?,
        }
        write!(
            f,
            ", {}, kernel {}",
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.kernel.as_deref().unwrap_or("unknown")
        )
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(
                key.trim(),
                "model name" | "Model" | "Hardware" | "cpu model"
            )
            .then(|| value.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn machine_has_the_documented_keys() {
        let m = serde_json::to_value(Machine::read()).unwrap();
        for k in ["cores", "kernel", "cpu_model", "hostname", "os", "arch"] {
            assert!(m.get(k).is_some(), "{k}: {m}");
        }
        assert!(m["cores"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn machine_reads_as_the_heading_shows_it() {
        let m = Machine {
            cores: Some(2),
            kernel: Some("6.18.44".into()),
            cpu_model: None,
            hostname: None,
            os: "linux",
            arch: "x86_64",
        };
        assert_eq!(m.to_string(), "2 cores, unknown CPU, kernel 6.18.44");
    }
}
