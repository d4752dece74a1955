//! `courier group view FILE|ADDR`: a group's members, as one member sees
//! them (`courier serve --group FILE` makes and joins groups).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use courier_group::{Group, GroupFile, View};

use crate::client::client_builder;
use crate::{out, CliResult, Error, TimeoutArg};

#[derive(Debug, Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Print a group's live members, one per line: address and state.
    #[command(long_about = VIEW_LONG_ABOUT)]
    View(ViewArgs),
}

#[derive(Debug, Args)]
struct ViewArgs {
    /// A group file (as `courier serve --group FILE` writes it), or the
    /// address of a member.
    #[arg(value_name = "FILE|ADDR")]
    target: String,

    /// Also print the members that are down or left.
    #[arg(long)]
    all: bool,

    /// Print the view as one JSON object: group, viewer, version, members
    /// (address, state, generation).
    #[arg(long)]
    json: bool,

    /// Which of the member's groups, given an address (default: its only,
    /// or first, group; a file names its group).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,

    /// Keep watching until Ctrl-C: print the view, then one line per
    /// member that changes (joins, is suspected, goes down, leaves,
    /// rejoins), each line led by the seconds since the watch began
    /// (`+5.6s tcp://127.0.0.1:41236 down`); with --json, the whole view
    /// as one JSON line each time it changes.
    #[arg(long)]
    watch: bool,

    /// How often --watch asks for the view, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250, requires = "watch")]
    interval_ms: u64,

    #[command(flatten)]
    timeout: TimeoutArg,
}

/// The long help of `courier group view`.
const VIEW_LONG_ABOUT: &str = "Print a group's live members, one per line: the address \
    (as `courier call` takes it) and the state, alive or suspect, as one member sees them. \
    Given a group file, the first member it lists that answers is asked; given an address, \
    that member. --all adds the members that are down (they stopped answering) or left \
    (they left on purpose); --json prints the whole view for scripts.\n\n\
    Example:\n  \
    courier serve --group /tmp/kv.json &     # the first makes the group and the file\n  \
    courier serve --group /tmp/kv.json &     # the others join through it\n  \
    courier group view /tmp/kv.json\n  \
    tcp://127.0.0.1:41235 alive\n  \
    tcp://127.0.0.1:41236 alive\n\n\
    With --watch, it keeps asking (through the next member the file lists when the \
    one it asked stops answering) and prints each change as it happens:\n\n  \
    courier group view /tmp/kv.json --watch\n  \
    +0.0s tcp://127.0.0.1:41235 alive\n  \
    +0.0s tcp://127.0.0.1:41236 alive\n  \
    +2.9s tcp://127.0.0.1:41236 suspect\n  \
    +5.6s tcp://127.0.0.1:41236 down\n  \
    +9.1s tcp://127.0.0.1:41236 alive (rejoined)";

pub(crate) async fn run(args: GroupArgs) -> CliResult {
    match args.command {
        GroupCommand::View(args) => view(args).await,
    }
}

async fn view(args: ViewArgs) -> CliResult {
    let timeout = args.timeout.duration().unwrap_or(Duration::from_secs(3600));
    let path = Path::new(&args.target);
    let from_file = path.exists() || !args.target.contains("://");
    // The client speaks the protocols of the member it asks first.
    let first = if from_file {
        GroupFile::read(path)?
            .members
            .first()
            .cloned()
            .unwrap_or_else(|| "tcp://".to_owned())
    } else {
        args.target.clone()
    };
    let engine = client_builder(&first, None)?
        .connect_timeout(timeout)
        .build()
        .await?;
    let ask = || async {
        if from_file {
            Group::view_from_file(&engine, path, timeout).await
        } else {
            Group::view_at(&engine, &args.target, args.group.as_deref(), timeout).await
        }
    };
    let result = if args.watch {
        let every = Duration::from_millis(args.interval_ms.max(1));
        tokio::select! {
            r = watch(ask, every, args.all, args.json) => r,
            () = crate::serve::stop_signal() => Ok(()),
        }
    } else {
        match ask().await {
            Ok(view) => print_view(view, args.all, args.json),
            Err(e) => Err(e.into()),
        }
    };
    engine.finalize().await;
    result
}

/// `--watch`: asks for the view every `every`, prints what changed. Runs
/// until stopped (or stdout closes); a view that cannot be read is said on
/// stderr once per failure streak, and asked for again.
async fn watch<F, Fut>(ask: F, every: Duration, all: bool, json: bool) -> CliResult
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = courier_group::membership::Result<View>>,
{
    let start = Instant::now();
    let stamp = || format!("+{:.1}s", start.elapsed().as_secs_f64());
    let mut last: Option<View> = None;
    let mut failing = false;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let view = match ask().await {
            Ok(view) => view,
            Err(e) => {
                if !failing {
                    eprintln!("{} cannot read the view: {e}", stamp());
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            eprintln!("{} reading the view again, from {}", stamp(), view.viewer);
            failing = false;
        }
        let changed = match &last {
            None => {
                if json {
                    print_view(view.clone(), all, true)?;
                } else {
                    for m in view.members.iter().filter(|m| all || m.state.is_live()) {
                        out(format_args!("{} {} {}", stamp(), m.address, m.state))?;
                    }
                }
                false
            }
            Some(before) => {
                if before.viewer != view.viewer {
                    eprintln!("{} now asking {}", stamp(), view.viewer);
                }
                let changes = view.changes_since(before);
                if !json {
                    for change in &changes {
                        out(format_args!("{} {change}", stamp()))?;
                    }
                }
                !changes.is_empty()
            }
        };
        if changed && json {
            print_view(view.clone(), all, true)?;
        }
        last = Some(view);
    }
}

/// Prints the members of `view` (the live ones, or `all`), as lines or JSON.
fn print_view(mut view: View, all: bool, json: bool) -> CliResult {
    if !all {
        view.members.retain(|m| m.state.is_live());
    }
    if json {
        let text = serde_json::to_string(&view).map_err(|source| Error::Json {
            what: "the group's view",
            source,
        })?;
        return out(text);
    }
    for m in &view.members {
        out(format_args!("{} {}", m.address, m.state))?;
    }
    Ok(())
}
