//! Figures over several runs, and numbers as the tables show them.

use super::measure::Figures;

/// One figure over several runs: their median, min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; NaN everywhere when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// The table cell of a figure over `runs` runs, each number written by
    /// `format` ([`format_us`], [`format_rate`]): the median alone for one
    /// run, `median (min..max)` for several.
    pub fn cell(&self, runs: usize, format: fn(f64) -> String) -> String {
        if runs <= 1 {
            format(self.median)
        } else {
            format!(
                "{} ({}..{})",
                format(self.median),
                format(self.min),
                format(self.max)
            )
        }
    }
}

/// The [`Figures`] of several runs of one measurement, each as a [`Spread`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// How many runs.
    pub runs: usize,
    /// Median round trip, µs.
    pub p50_us: Spread,
    /// 99th percentile, µs.
    pub p99_us: Spread,
    /// 99.9th percentile, µs.
    pub p999_us: Spread,
    /// Calls per second.
    pub rpcs_per_s: Spread,
    /// Payload MiB per second.
    pub mib_per_s: Spread,
    /// Calls measured.
    pub calls: Spread,
}

impl Summary {
    /// The summary of these runs.
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a Figures>) -> Self {
        let runs: Vec<&Figures> = runs.into_iter().collect();
        let spread = |get: fn(&Figures) -> f64| Spread::of(runs.iter().map(|f| get(f)));
        Self {
            runs: runs.len(),
            p50_us: spread(|f| f.p50_us),
            p99_us: spread(|f| f.p99_us),
            p999_us: spread(|f| f.p999_us),
            rpcs_per_s: spread(|f| f.rpcs_per_s),
            mib_per_s: spread(|f| f.mib_per_s),
            #[allow(clippy::cast_precision_loss)]
            calls: spread(|f| f.calls as f64),
        }
    }
}

/// A latency in µs as the tables show it: two decimals below 10, one below
/// 1000, none above.
pub fn format_us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A rate (calls/s, MiB/s) as the tables show it: one decimal below 100,
/// none from 100 on.
pub fn format_rate(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Spread::of([]).median.is_nan());
    }

    #[test]
    fn numbers_format_for_the_table() {
        assert_eq!(format_us(2.71), "2.71");
        assert_eq!(format_us(62.15), "62.1");
        assert_eq!(format_us(1234.5), "1234");
        assert_eq!(format_rate(12.34), "12.3");
        assert_eq!(format_rate(15234.6), "15235");
        let s = Spread {
            median: 62.1,
            min: 58.0,
            max: 70.2,
        };
        assert_eq!(s.cell(1, format_us), "62.1");
        assert_eq!(s.cell(3, format_us), "62.1 (58.0..70.2)");
    }

    #[test]
    fn summary_spreads_every_figure() {
        let run = |p50_us: f64, calls: u64| Figures {
            p50_us,
            p99_us: 2.0 * p50_us,
            p999_us: 3.0 * p50_us,
            rpcs_per_s: 1e6 / p50_us,
            mib_per_s: 0.0,
            calls,
            elapsed_s: 1.0,
        };
        let runs = [run(10.0, 100), run(30.0, 300), run(20.0, 200)];
        let s = Summary::of(&runs);
        assert_eq!(s.runs, 3);
        assert_eq!(
            (s.p50_us.median, s.p50_us.min, s.p50_us.max),
            (20.0, 10.0, 30.0)
        );
        assert_eq!(s.p99_us.median, 40.0);
        assert_eq!(s.p999_us.max, 90.0);
        assert_eq!(s.rpcs_per_s.median, 50_000.0);
        assert_eq!(s.calls.median, 200.0);
    }
}
