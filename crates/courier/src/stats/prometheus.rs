//! The Prometheus text exposition format (0.0.4) of a [`Stats`].

use super::Stats;

pub(super) fn render(_stats: &Stats) -> String {
    String::new()
}
