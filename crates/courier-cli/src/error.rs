//! The one error type of the `courier` command and of its library.

use std::path::PathBuf;

/// What went wrong in a `courier` command, or in one of the
/// [`crate::bench`] helpers. Its message says what failed, and where; the
/// command prints it as `courier: <message>` and exits 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed: building it, a lookup, a call, an error of the
    /// remote handler, a timeout.
    #[error(transparent)]
    Engine(#[from] courier::Error),

    /// The protocol table or a transport failed: an unknown protocol, a
    /// malformed address, a plugin that is not built in, a refused
    /// connection.
    #[error(transparent)]
    Transport(#[from] courier::TransportError),

    /// A group's membership failed: its group file (missing, unreadable,
    /// malformed, stale), a join, a leave, reading a member's view.
    #[error(transparent)]
    Group(#[from] courier_group::MembershipError),

    /// An input or output operation failed: a file, a pipe, a socket, a
    /// child process, a thread.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done, e.g. "read the input file 'a.bin'".
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON document could not be encoded.
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// An argument of `courier call` could not be encoded (postcard).
    #[error("cannot encode argument {argument}: {source}")]
    Encode {
        /// The argument, as given.
        argument: String,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },

    /// A command-line argument or option is invalid.
    #[error("{0}")]
    Argument(String),

    /// Something the command needs is not in this build or on this
    /// platform (a transport plugin, a kind of socket).
    #[error("{0}")]
    Unsupported(String),

    /// The calling thread could not be pinned to a CPU.
    #[error("cannot pin this thread to CPU {cpu}")]
    Pin {
        /// The CPU asked for.
        cpu: usize,
    },

    /// A latency histogram could not be created.
    #[error("cannot create a latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),

    /// Two latency histograms could not be merged.
    #[error("cannot merge latency histograms: {0}")]
    HistogramMerge(#[from] hdrhistogram::AdditionError),

    /// A chart could not be drawn.
    #[error("cannot draw {}: {message}", path.display())]
    Chart {
        /// The SVG file.
        path: PathBuf,
        /// The drawing library's error.
        message: String,
    },

    /// A peer misbehaved: a service called, a server or bench peer this
    /// command started, or the other end of a measurement answered
    /// something unexpected, stopped, or gave no answer in time.
    #[error("{0}")]
    Peer(String),

    /// A child process failed; the last lines of its stderr say more.
    #[error("{source}; its stderr: {stderr}")]
    ChildStderr {
        /// The failure.
        #[source]
        source: Box<Self>,
        /// The last lines of the child's stderr, joined by " / ".
        stderr: String,
    },

    /// The command was interrupted (Ctrl-C or SIGTERM).
    #[error("{0} interrupted")]
    Interrupted(&'static str),

    /// A failure, with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        /// What was being done, e.g. "bench over tcp (park) failed".
        context: String,
        /// The failure.
        #[source]
        source: Box<Self>,
    },
}

impl Error {
    /// An I/O error while doing `action` ("read the input file 'a.bin'").
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }

    /// This error, after `context` ("demo over tcp failed").
    #[must_use]
    pub fn context(self, context: impl Into<String>) -> Self {
        Self::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// This error, followed by a child's last stderr lines if there are any.
    #[must_use]
    pub(crate) fn with_stderr(self, stderr: Option<String>) -> Self {
        match stderr {
            Some(stderr) => Self::ChildStderr {
                source: Box::new(self),
                stderr,
            },
            None => self,
        }
    }
}

/// Adds what was being done to the error of a `Result`.
pub(crate) trait Context<T> {
    /// The error after `context()` ("lookup of the engine peer").
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Error> {
        self.map_err(|e| e.into().context(context()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let io = Error::io(
            "read the input file 'a.bin'",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(io
            .to_string()
            .starts_with("cannot read the input file 'a.bin': "));
        let e = Error::Peer("the raw peer closed the connection".into())
            .context("raw layer, 64 B × 1 in flight")
            .context("bench over tcp (park) failed");
        assert_eq!(
            e.to_string(),
            "bench over tcp (park) failed: raw layer, 64 B × 1 in flight: \
             the raw peer closed the connection"
        );
        let e = Error::Peer("it stopped".into()).with_stderr(Some("boom".into()));
        assert_eq!(e.to_string(), "it stopped; its stderr: boom");
        let e = Error::Peer("it stopped".into()).with_stderr(None);
        assert_eq!(e.to_string(), "it stopped");
    }

    #[test]
    fn errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
    }
}
