//! `courier top ADDR`: a live view of a service's statistics, refreshed
//! every `--interval`, like `top`: rates and latency percentiles per RPC
//! and provider over the last interval, and advice at the bottom.
//!
//! On a terminal each frame replaces the last (clear screen and cursor
//! home, plain ANSI); elsewhere (a pipe, a file, a test) frames are plain
//! text, one after the other, separated by a blank line.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use courier::stats::{Latency, RpcStats, SideStats, Stats};

use crate::stats::{advice_lines, micros, uptime, Source, StatsTimeout};
use crate::{CliResult, Error};

/// Clears the screen and moves the cursor to its top left corner.
const CLEAR_HOME: &str = "\x1b[H\x1b[2J";

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const TOP_LONG_ABOUT: &str = "A live view of the service at ADDR, refreshed every \
    --interval: a header (address, protocol, uptime, whether phases are timed), then a line per \
    RPC, provider and side (served or called), busiest first: calls/s, errors/s, in flight, \
    MiB/s in and out, and p50/p99 latency over the last interval, then advice on the service's \
    settings. The first frame shows rates since the service started.\n\n\
    The service must serve its statistics (`courier serve --stats`). Ctrl-C ends the view; \
    -n N ends it after N frames. On a terminal each frame replaces the last; otherwise (a pipe, \
    a file) frames are printed one after the other, separated by a blank line, with no escape \
    codes.";

#[derive(Debug, Args)]
#[command(after_help = "Examples (against `courier serve --stats`):\n  \
        courier top tcp://127.0.0.1:PORT                 # every second, until Ctrl-C\n  \
        courier top tcp://127.0.0.1:PORT -d 250ms        # four times a second\n  \
        courier top tcp://127.0.0.1:PORT -n 2 > top.txt  # two frames, as text")]
pub(crate) struct TopArgs {
    /// The service's address, as `courier serve --stats` printed it.
    address: String,

    /// Time between frames: seconds (1, 0.5) or with a unit (250ms, 2s).
    #[arg(long, short = 'd', value_name = "TIME", default_value = "1s",
          value_parser = parse_interval)]
    interval: Duration,

    /// Stop after N frames (default: run until Ctrl-C).
    #[arg(long, short = 'n', value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,

    #[command(flatten)]
    timeout: StatsTimeout,

    #[command(flatten)]
    protocol: crate::client::ProtocolArg,
}

/// Reads `1`, `0.5`, `1.5s`, `250ms`: at least a millisecond, at most a
/// day.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| x * scale)
        .ok_or_else(|| format!("'{text}' is not a time such as 1, 0.5, 2s or 250ms"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("'{text}': the interval goes from 1ms to 1 day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The phase whose p50/p99 a side's line shows: the handler's run on the
/// server, the round trip on the caller.
fn main_phase(side: &str) -> &'static str {
    if side == "served" {
        "handler"
    } else {
        "round_trip"
    }
}

/// One line of the view.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    rpc: String,
    provider: u16,
    side: &'static str,
    calls_per_s: f64,
    errors_per_s: f64,
    in_flight: u64,
    mib_in_per_s: f64,
    mib_out_per_s: f64,
    /// Of the main phase, over the interval.
    latency: Option<Latency>,
    /// Of the queue (served only), over the interval.
    queue: Option<Latency>,
}

/// Each side of each RPC, with its name.
fn sides(stats: &Stats) -> impl Iterator<Item = (&RpcStats, &'static str, &SideStats)> {
    stats.rpcs.iter().flat_map(|r| {
        [("served", r.served.as_ref()), ("called", r.called.as_ref())]
            .into_iter()
            .filter_map(move |(side, s)| Some((r, side, s?)))
    })
}

/// The distribution of `phase` over the interval since `before`.
fn over(now: &SideStats, before: Option<&SideStats>, phase: &str) -> Option<Latency> {
    let latency = now.phase(phase)?;
    match before.and_then(|b| b.phase(phase)) {
        Some(earlier) => latency.since(earlier),
        None => (latency.count > 0).then(|| latency.clone()),
    }
}

/// The lines of the view over `seconds` since `before` (`None`: since the
/// start), busiest first.
fn lines(before: Option<&Stats>, now: &Stats, seconds: f64) -> Vec<Line> {
    const MIB: f64 = 1024.0 * 1024.0;
    let rate = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let mut out: Vec<Line> = sides(now)
        .map(|(r, side, s)| {
            let b = before
                .and_then(|b| b.rpc(&r.name, r.provider))
                .and_then(|b| {
                    if side == "served" {
                        b.served.as_ref()
                    } else {
                        b.called.as_ref()
                    }
                });
            let delta = |f: fn(&SideStats) -> u64| f(s).saturating_sub(b.map_or(0, f));
            Line {
                rpc: r.name.clone(),
                provider: r.provider,
                side,
                calls_per_s: rate(delta(|s| s.calls)),
                errors_per_s: rate(delta(SideStats::error_count)),
                in_flight: s.in_flight,
                mib_in_per_s: rate(delta(|s| s.bytes_in)) / MIB,
                mib_out_per_s: rate(delta(|s| s.bytes_out)) / MIB,
                latency: over(s, b, main_phase(side)),
                queue: if side == "served" {
                    over(s, b, "queue")
                } else {
                    None
                },
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.calls_per_s
            .total_cmp(&a.calls_per_s)
            .then_with(|| (&a.rpc, a.provider, a.side).cmp(&(&b.rpc, b.provider, b.side)))
    });
    out
}

/// Columns padded to their widest cell; the first three left-aligned, the
/// numbers right-aligned.
fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let mut width = Vec::new();
    for row in rows {
        width.resize(width.len().max(row.len()), 0);
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&width).enumerate() {
                let pad = " ".repeat(w - cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if i < 3 {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn rate(x: f64) -> String {
    format!("{x:.1}")
}

fn mib(x: f64) -> String {
    format!("{x:.2}")
}

/// A frame of the view: `before` is the previous snapshot (`None` for the
/// first frame, which shows rates since the start).
fn frame(address: &str, before: Option<&Stats>, now: &Stats) -> Vec<String> {
    // The interval, on the service's clock; a service that restarted
    // (its uptime went down) is shown since its start.
    let before = before.filter(|b| b.uptime_ms <= now.uptime_ms);
    let ms = now.uptime_ms - before.map_or(0, |b| b.uptime_ms);
    let seconds = ms as f64 / 1000.0;
    let window = if before.is_some() {
        format!("last {seconds:.1} s")
    } else {
        "since start".to_owned()
    };
    let mut text = vec![format!(
        "courier top - {address} ({}) - up {} - timing {} - {window}",
        now.protocol,
        uptime(now.uptime_ms),
        if now.timing { "on" } else { "off" },
    )];
    let lines = lines(before, now, seconds);
    let total = |f: fn(&Line) -> f64, side: &str| -> f64 {
        // Not `sum`: the sum of no floats is -0.0.
        lines
            .iter()
            .filter(|l| l.side == side)
            .map(f)
            .fold(0.0, |a, b| a + b)
    };
    // Per second over the interval, of an engine-wide counter.
    let per_s = |f: fn(&Stats) -> u64| {
        let n = f(now).saturating_sub(before.map_or(0, f));
        rate(if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        })
    };
    text.push(format!(
        "served {} calls/s, {} errors/s - called {} calls/s - messages in {}/s - \
         connections {} - parks {}/s",
        rate(total(|l| l.calls_per_s, "served")),
        rate(total(|l| l.errors_per_s, "served")),
        rate(total(|l| l.calls_per_s, "called")),
        // Pings included: they are messages, not RPCs.
        per_s(|s| s.progress.messages_in),
        now.peers.len(),
        per_s(|s| s.progress.parks),
    ));
    for p in &now.providers {
        let refused = p.refused.saturating_sub(
            before
                .and_then(|b| b.providers.iter().find(|q| q.provider == p.provider))
                .map_or(0, |q| q.refused),
        );
        text.push(format!(
            "provider {}: running {}/{}, queued {}/{}, refused {refused}",
            p.provider,
            p.running,
            p.max_running
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            p.queued,
            p.max_queued,
        ));
    }
    if !now.timing {
        text.push(
            "(phases not timed: no latencies; `courier serve --stats` times them)".to_owned(),
        );
    }
    text.push(String::new());
    let mut rows = vec![[
        "RPC",
        "PROVIDER",
        "SIDE",
        "CALLS/S",
        "ERRORS/S",
        "IN FLIGHT",
        "MiB/S IN",
        "MiB/S OUT",
        "P50 µs",
        "P99 µs",
        "QUEUE P99 µs",
    ]
    .map(str::to_owned)
    .to_vec()];
    let pct =
        |l: Option<&Latency>, p: fn(&Latency) -> f64| l.map_or("-".to_owned(), |l| micros(p(l)));
    for l in &lines {
        rows.push(vec![
            l.rpc.clone(),
            l.provider.to_string(),
            l.side.to_owned(),
            rate(l.calls_per_s),
            rate(l.errors_per_s),
            l.in_flight.to_string(),
            mib(l.mib_in_per_s),
            mib(l.mib_out_per_s),
            pct(l.latency.as_ref(), |l| l.p50_us),
            pct(l.latency.as_ref(), |l| l.p99_us),
            if l.side == "served" {
                pct(l.queue.as_ref(), |l| l.p99_us)
            } else {
                String::new()
            },
        ]);
    }
    text.extend(columns(&rows));
    if lines.is_empty() {
        text.push("(no RPC served or called yet)".to_owned());
    } else {
        text.push(
            "(p50/p99: the handler's run for served RPCs, the round trip for called ones)"
                .to_owned(),
        );
    }
    text.push(String::new());
    text.extend(advice_lines(&now.advise()));
    text
}

/// Prints a frame: over the last one on a terminal, after it otherwise.
fn show(frame: &[String], terminal: bool, first: bool) -> CliResult {
    let mut text = String::new();
    if terminal {
        text.push_str(CLEAR_HOME);
    } else if !first {
        text.push('\n');
    }
    for line in frame {
        text.push_str(line);
        text.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("write to stdout", e))
}

pub(crate) async fn run(args: TopArgs) -> CliResult {
    let terminal = std::io::stdout().is_terminal();
    let stop = crate::serve::stop_signal();
    tokio::pin!(stop);
    let source = tokio::select! {
        source = Source::open(&args.address, args.protocol.protocol.as_deref(), args.timeout.duration()) => source?,
        () = &mut stop => return Ok(()),
    };
    let result = watch(&source, &args, terminal, stop).await;
    source.close().await;
    result
}

/// Reads and shows frames until `-n` frames, `stop`, or an error.
async fn watch(
    source: &Source,
    args: &TopArgs,
    terminal: bool,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> CliResult {
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Option<Stats> = None;
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => break,
        }
        let now = tokio::select! {
            read = source.read() => read.map_err(|e| if shown > 0 {
                e.context(format!("{} stopped answering after {shown} frames", source.address()))
            } else {
                e
            })?,
            () = &mut stop => break,
        };
        show(
            &frame(source.address(), before.as_ref(), &now),
            terminal,
            shown == 0,
        )?;
        shown += 1;
        if args.iterations.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        before = Some(now);
    }
    // Ctrl-C: leave the prompt on a line of its own.
    if terminal {
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn intervals_read_as_people_write_them() {
        assert_eq!(parse_interval("1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "fast", "0", "-1", "0.1ms", "1e9", "NaN", "inf"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_frame_shows_rates_and_percentiles_over_the_interval() {
        let echo = crate::stats::tests::Echo::start().await;
        let first = echo.calls(2).await;
        let mut later = echo.calls(10).await;
        echo.stop().await;
        // As if the 10 calls took 2 s.
        later.uptime_ms = first.uptime_ms + 2000;

        let lines = lines(Some(&first), &later, 2.0);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for l in &lines {
            assert_eq!(l.rpc, "echo");
            assert!((l.calls_per_s - 5.0).abs() < 1e-9, "{l:?}");
            assert_eq!(l.errors_per_s, 0.0);
            // 10 values in the interval, of the 12.
            assert_eq!(l.latency.as_ref().unwrap().count, 10, "{l:?}");
        }
        let text = frame("mem://x", Some(&first), &later).join("\n");
        assert!(
            text.starts_with("courier top - mem://x (mem) - up "),
            "{text}"
        );
        assert!(text.contains("timing on - last 2.0 s"), "{text}");
        assert!(text.contains("served 5.0 calls/s"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("echo") && l.contains("served"))
            .unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..4], ["echo", "0", "served", "5.0"], "{row}");
        assert!(text.contains("Advice:"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");

        // The first frame: since the start.
        let text = frame("mem://x", None, &first).join("\n");
        assert!(text.contains("since start"), "{text}");
    }
}
