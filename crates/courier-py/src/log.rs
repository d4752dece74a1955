//! The engine's warnings and errors (its `tracing` events), to Python's
//! `logging`: the `courier.engine` logger.
//!
//! Only events at `WARN` and `ERROR` are taken (a connection closed for a
//! bad frame, a one-way handler that failed, a response that could not be
//! sent): they are rare, so the bridge costs nothing on the paths that
//! matter; every other callsite is told `Interest::never`, as with no
//! subscriber at all, and spans are never recorded. Events are not handed
//! to Python where they happen: the engine's threads must never wait for
//! the GIL (one holding an engine lock would stall the engine behind
//! Python). They are queued, and a `courier-py-log` thread attaches to the
//! interpreter to log them. The queue is bounded: past [`QUEUE_LIMIT`]
//! waiting events, new ones are counted and the count is logged instead.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Condvar, Mutex, MutexGuard, Once};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// How many events may wait for the logging thread.
const QUEUE_LIMIT: usize = 1024;

/// The Python logger the events go to.
const LOGGER: &str = "courier.engine";

/// Events waiting for the logging thread, and how many were dropped.
struct Queue {
    events: VecDeque<(Level, String)>,
    dropped: usize,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    events: VecDeque::new(),
    dropped: 0,
});
static READY: Condvar = Condvar::new();
static LOGGER_THREAD: Once = Once::new();

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the bridge as the process's `tracing` subscriber, unless one
/// is installed already (then that one keeps the events).
pub(crate) fn install() {
    let _ = tracing::subscriber::set_global_default(Bridge);
}

/// The subscriber: warnings and errors, queued for Python.
struct Bridge;

fn wanted(metadata: &Metadata<'_>) -> bool {
    metadata.is_event() && *metadata.level() <= Level::WARN
}

impl Subscriber for Bridge {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if wanted(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        // Never called for a span (`enabled` takes none); an id is owed.
        span::Id::from_u64(1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text::default();
        event.record(&mut text);
        let metadata = event.metadata();
        let line = if text.fields.is_empty() {
            format!("{} ({})", text.message, metadata.target())
        } else {
            format!("{} ({}{})", text.message, metadata.target(), text.fields)
        };
        push(*metadata.level(), line);
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}

/// An event's message, then its other fields as `, name=value`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, ", {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, ", {}={value:?}", field.name());
        }
    }
}

fn push(level: Level, line: String) {
    LOGGER_THREAD.call_once(|| {
        // Without its thread, events wait in the (bounded) queue.
        let _ = std::thread::Builder::new()
            .name("courier-py-log".into())
            .spawn(log_thread);
    });
    {
        let mut q = queue();
        if q.events.len() >= QUEUE_LIMIT {
            q.dropped += 1;
            return;
        }
        q.events.push_back((level, line));
    }
    READY.notify_one();
}

/// Python's `logging` level of a `tracing` level.
fn python_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        _ => 10,
    }
}

/// Waits for events without the GIL, then logs them with it.
fn log_thread() {
    loop {
        let (events, dropped) = {
            let mut q = queue();
            while q.events.is_empty() && q.dropped == 0 {
                q = READY.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            (
                std::mem::take(&mut q.events),
                std::mem::take(&mut q.dropped),
            )
        };
        // Not while the interpreter is going away: the events are lost.
        Python::try_attach(|py| {
            let logger = match py
                .import("logging")
                .and_then(|m| m.getattr("getLogger")?.call1((LOGGER,)))
            {
                Ok(logger) => logger,
                Err(e) => return e.print(py),
            };
            for (level, line) in events {
                if let Err(e) = logger.call_method1("log", (python_level(level), line)) {
                    e.print(py);
                }
            }
            if dropped > 0 {
                let line =
                    format!("{dropped} more engine messages were dropped (too many at once)");
                let _ = logger.call_method1("log", (30u8, line));
            }
        });
    }
}
