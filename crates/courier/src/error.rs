//! The engine's error type.

use std::time::Duration;

pub use courier_transport::TransportError;

/// Everything that can go wrong in Courier, with messages that say what
/// failed and where (the RPC, the provider, the address).
///
/// Each variant about a request says whether the request can have reached
/// its handler ("Reach:"; [`Error::reach`] returns it, and
/// [`Error::is_retry_safe`] applies it). Variants that say nothing are
/// not about a request, and count as not reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A transport-level failure: unknown protocol, malformed address,
    /// connect refused, message too large, ... (see [`TransportError`]).
    /// Reach: not reached, except an I/O error or a close part way
    /// (unknown).
    #[error(transparent)]
    Transport(#[from] TransportError),

    /// The engine's configuration (JSON or builder) is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// A runtime the engine starts for itself (the progress thread, the RPC
    /// threads, a blocking engine's runtime) could not be started.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// Which runtime.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// An address uses another protocol than the engine's.
    #[error("address '{address}' uses protocol '{protocol}', but this engine speaks '{engine}'")]
    ProtocolMismatch {
        /// The address given.
        address: String,
        /// Its (canonical) protocol.
        protocol: String,
        /// The engine's protocol.
        engine: String,
    },

    /// An address set (`tcp://127.0.0.1:7000,shm://courier-…`) or the list
    /// of protocols an engine is built for (`"tcp,shm"`) is not usable:
    /// empty, with an empty part, a part that does not parse, a part given
    /// twice, or a protocol nobody declared (`docs/transports.md`,
    /// "Address sets"). Reach: not reached.
    #[error("invalid address set '{set}': {reason}")]
    AddressSet {
        /// The set as given.
        set: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Every path of an address set failed to connect; `tried` says how
    /// each failed, in the order they were tried. Reach: not reached.
    #[error("no path to {address} could connect: {tried}")]
    NoPath {
        /// The address set.
        address: String,
        /// Each path tried and its error (`shm://…: …; tcp://…: …`).
        tried: String,
    },

    /// Connecting took longer than the configured connect timeout.
    /// Reach: not reached (nothing was sent).
    #[error("timed out connecting to {address} after {after:?}")]
    ConnectTimeout {
        /// The address.
        address: String,
        /// The connect timeout.
        after: Duration,
    },

    /// No response within the call's timeout. The server was told (a
    /// `Cancel`), and a late response is discarded. Reach: unknown.
    #[error("RPC '{rpc}' to {address} timed out after {after:?}")]
    Timeout {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
        /// The timeout that expired.
        after: Duration,
    },

    /// The server has no RPC of that name at that provider. Reach: not
    /// reached.
    #[error("no such RPC '{rpc}' at provider {provider} of {address}")]
    NoSuchRpc {
        /// The RPC's name.
        rpc: String,
        /// The provider id asked for.
        provider: u16,
        /// The server's address.
        address: String,
    },

    /// The remote handler returned an error. Reach: reached.
    #[error("RPC '{rpc}' failed at {address}: {message}")]
    Remote {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
        /// The handler's error message.
        message: String,
    },

    /// The remote handler panicked. Reach: reached.
    #[error("RPC '{rpc}' panicked at {address}: {message}")]
    RemotePanic {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
        /// The panic message.
        message: String,
    },

    /// The remote handler finished (or dropped its handle) without
    /// responding. Reach: reached.
    #[error("RPC '{rpc}' at {address}: the handler finished without responding")]
    NoResponse {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
    },

    /// The RPC is registered with `disable_response` at the server, so a
    /// call that waits for a response would wait forever. Reach: not
    /// reached.
    #[error(
        "RPC '{rpc}' at provider {provider} of {address} is one-way (registered with \
         disable_response): call it through a remote function with disable_response()"
    )]
    OneWay {
        /// The RPC's name.
        rpc: String,
        /// The provider id.
        provider: u16,
        /// The server's address.
        address: String,
    },

    /// Serializing arguments or a response failed.
    #[error("cannot encode the {what} of RPC '{rpc}': {source}")]
    Encode {
        /// The RPC's name.
        rpc: String,
        /// "arguments" or "response".
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: postcard::Error,
    },

    /// Deserializing a response failed: the two sides disagree on its type
    /// (bytes left over after the value are a disagreement too).
    #[error("cannot decode the {what} of RPC '{rpc}': {reason}")]
    Decode {
        /// The RPC's name.
        rpc: String,
        /// "response".
        what: &'static str,
        /// What the decoder found wrong.
        reason: String,
    },

    /// This engine is finalized (or finalizing): it makes no more calls, and
    /// calls that were in flight end with this error. Reach: unknown.
    #[error("the engine is finalized")]
    Finalized,

    /// The remote engine is finalizing and refused the request. Reach: not
    /// reached.
    #[error("{address} is finalizing and refused the request")]
    RemoteFinalizing {
        /// The server's address.
        address: String,
    },

    /// Remote shutdown was refused: the remote engine did not enable it.
    #[error("remote shutdown of {address} refused: that engine did not enable remote shutdown")]
    ShutdownRefused {
        /// The server's address.
        address: String,
    },

    /// The connection failed while the call was in flight (the peer died,
    /// reset the connection, stopped answering keepalive probes, or sent
    /// something invalid). Reach: unknown.
    #[error("connection with {address} lost: {reason}")]
    ConnectionLost {
        /// The peer's address.
        address: String,
        /// What ended it.
        reason: String,
    },

    /// The peer answered with a frame that makes no sense for the request
    /// (or refused its header extensions). Reach: unknown.
    #[error("{address} sent an invalid frame: {reason}")]
    Protocol {
        /// The peer's address.
        address: String,
        /// What was wrong.
        reason: String,
    },

    /// The name is already registered at that provider.
    #[error("RPC '{rpc}' is already registered at provider {provider}")]
    AlreadyRegistered {
        /// The RPC's name.
        rpc: String,
        /// The provider id.
        provider: u16,
    },

    /// Nothing to deregister.
    #[error("RPC '{rpc}' is not registered at provider {provider}")]
    NotRegistered {
        /// The RPC's name.
        rpc: String,
        /// The provider id.
        provider: u16,
    },

    /// Provider ids go from 0 to 65534; 65535 is reserved.
    #[error("provider id {0} is out of range (0..=65534; 65535 is reserved)")]
    InvalidProviderId(u32),

    /// Two different names hash to the same RPC id (see [`crate::frame::rpc_id`]).
    #[error("RPC names '{name}' and '{existing}' have the same id {id:#018x}; rename one")]
    RpcIdCollision {
        /// The name being registered.
        name: String,
        /// The name already registered.
        existing: String,
        /// The shared id.
        id: u64,
    },

    /// A handler responded twice.
    #[error("RPC '{rpc}': the handler already responded")]
    AlreadyResponded {
        /// The RPC's name.
        rpc: String,
    },

    /// The engine that exposed a bulk region refused an access to it: the
    /// region is unknown or was dropped, the key does not match (a forged or
    /// stale handle), the mode forbids it (a push into a read-only region),
    /// or the range is past its end. Nothing was transferred past the
    /// refused chunk.
    #[error("bulk transfer with {address} refused: {reason}")]
    BulkRefused {
        /// The exposing engine's address.
        address: String,
        /// Its reason.
        reason: String,
    },

    /// A bulk transfer's arguments are wrong on this side: the local handle
    /// is not a region of this process, its mode forbids the operation, or
    /// a range is past the end of a handle.
    #[error("invalid bulk transfer: {0}")]
    BulkInvalid(String),

    /// A bulk transfer did not finish within its timeout. Reach: unknown.
    #[error("bulk transfer with {address} timed out after {after:?}")]
    BulkTimeout {
        /// The peer's address.
        address: String,
        /// The timeout that expired.
        after: Duration,
    },

    /// A blocking-API call was made from inside an async runtime, where it
    /// would block a runtime thread.
    #[error("{0} is a blocking call and cannot run inside an async runtime; use the async API")]
    BlockingInAsync(&'static str),

    /// The server refused the request at once because the provider (or the
    /// connection) is at its limit of handlers running and queued. No
    /// handler saw the request: sending it again later is safe. Reach: not
    /// reached.
    #[error("RPC '{rpc}' at provider {provider} of {address} refused: busy ({reason})")]
    Busy {
        /// The RPC's name.
        rpc: String,
        /// The provider id.
        provider: u16,
        /// The server's address.
        address: String,
        /// The server's reason (which limit).
        reason: String,
    },

    /// The call's time budget was spent before the request could be sent
    /// (a timeout of zero, or a handler's inherited deadline that already
    /// passed): nothing was sent. Reach: not reached.
    #[error("RPC '{rpc}' to {address} was not sent: its deadline had passed")]
    DeadlineExceeded {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
    },

    /// A payload (the arguments or the response of an RPC) over a
    /// `max_payload_bytes` limit: this engine's, for what it sends or
    /// receives, or the peer's, which refused it. Refused before any of it
    /// moved, and before the receiver allocated anything for it
    /// (`docs/bulk.md`, "Payloads of any size"). Reach: not reached for
    /// arguments; reached for a response (its handler ran).
    #[error("{what} ({size} bytes) refused by {whose}: {why}")]
    TooLarge {
        /// What is too large: "the arguments of RPC 'put'", "the response
        /// of RPC 'get' from tcp://…".
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The `max_payload_bytes` of the engine that refused it.
        max: u64,
        /// Which engine refused it: "this engine", or the peer's address.
        whose: String,
        /// Why: over `max_payload_bytes`, or no memory for it.
        why: String,
        /// Whether it is a response (its handler ran) rather than the
        /// arguments (no handler saw them).
        response: bool,
    },

    /// The call was cancelled: by its [`Request`](crate::blocking::Request)'s
    /// `cancel`, or because the request whose handler made it was
    /// cancelled by its own caller. The server was told; its handler may
    /// have started. Reach: unknown.
    #[error("RPC '{rpc}' to {address} was cancelled")]
    Cancelled {
        /// The RPC's name.
        rpc: String,
        /// The server's address.
        address: String,
    },

    /// A stream item over the largest item (`streams.max_item_bytes`, or
    /// the transport's largest message less the header), refused before
    /// anything was sent; the stream goes on. Reach: not reached.
    #[error("a {size}-byte item of stream '{rpc}' is over the largest item, {max} bytes")]
    StreamItemTooLarge {
        /// The RPC's name.
        rpc: String,
        /// The item's size.
        size: u64,
        /// The largest item.
        max: u64,
    },

    /// A stream operation on a request or call that has no streams: the
    /// caller made a unary call ([`crate::Callable::call`]) to an RPC
    /// whose handler sends or reads items. Reach: not reached.
    #[error("RPC '{rpc}' was not called as a stream (use `stream` on the caller's side)")]
    NotAStream {
        /// The RPC's name.
        rpc: String,
    },

    /// The caller aborted its request stream, with a message
    /// ([`crate::StreamCall::abort`]): what the handler's next read
    /// returns. Reach: reached.
    #[error("the caller at {address} aborted the request stream of '{rpc}': {message}")]
    StreamAborted {
        /// The RPC's name.
        rpc: String,
        /// The caller's address.
        address: String,
        /// The caller's message.
        message: String,
    },

    /// An item sent on a stream whose sending side has ended: the caller
    /// closed its request stream, or the handler finished (its answer is
    /// waiting in [`crate::StreamCall::finish`]). Reach: not reached
    /// (the item was not sent).
    #[error("the {side} stream of '{rpc}' has ended: {why}")]
    StreamEnded {
        /// The RPC's name.
        rpc: String,
        /// `request` or `response`.
        side: &'static str,
        /// Why.
        why: &'static str,
    },
}

/// Whether a failed request can have reached its handler: what decides if
/// sending it again is safe ([`Error::is_retry_safe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// The handler cannot have seen the request: it was never sent, or the
    /// server refused it before any handler ran (busy, no such RPC,
    /// finalizing). Always safe to send again.
    NotReached,
    /// It may have run, or not: the call timed out, was cancelled, or lost
    /// its connection after the request was sent.
    Unknown,
    /// The handler ran (it failed, panicked, or finished without
    /// responding, or its response could not be decoded).
    Reached,
}

impl Error {
    /// Whether the request this error ended can have reached its handler.
    /// Errors that are not about a request (configuration, registration)
    /// are [`Reach::NotReached`].
    pub fn reach(&self) -> Reach {
        match self {
            Self::Timeout { .. }
            | Self::ConnectionLost { .. }
            | Self::Finalized
            | Self::Protocol { .. }
            | Self::Cancelled { .. }
            | Self::BulkTimeout { .. } => Reach::Unknown,
            // A transport error after the connection was up (an I/O error
            // part way through a send) leaves the request's fate unknown;
            // one that kept it from being sent does not.
            Self::Transport(e) => match e {
                TransportError::Io { .. } | TransportError::Closed { .. } => Reach::Unknown,
                _ => Reach::NotReached,
            },
            Self::Remote { .. }
            | Self::RemotePanic { .. }
            | Self::NoResponse { .. }
            | Self::Decode { .. }
            | Self::AlreadyResponded { .. }
            | Self::StreamAborted { .. } => Reach::Reached,
            Self::Config(_)
            | Self::Runtime { .. }
            | Self::ProtocolMismatch { .. }
            | Self::AddressSet { .. }
            | Self::NoPath { .. }
            | Self::ConnectTimeout { .. }
            | Self::NoSuchRpc { .. }
            | Self::OneWay { .. }
            | Self::Encode { .. }
            | Self::RemoteFinalizing { .. }
            | Self::ShutdownRefused { .. }
            | Self::AlreadyRegistered { .. }
            | Self::NotRegistered { .. }
            | Self::InvalidProviderId(_)
            | Self::RpcIdCollision { .. }
            | Self::BulkRefused { .. }
            | Self::BulkInvalid(_)
            | Self::BlockingInAsync(_)
            | Self::Busy { .. }
            | Self::DeadlineExceeded { .. }
            | Self::StreamItemTooLarge { .. }
            | Self::NotAStream { .. }
            | Self::StreamEnded { .. } => Reach::NotReached,
            // Arguments refused, by this engine or the server, before the
            // handler saw them; a response refused: the handler ran.
            Self::TooLarge { response, .. } => {
                if *response {
                    Reach::Reached
                } else {
                    Reach::NotReached
                }
            }
        }
    }

    /// Whether sending the failed request again is safe: always when it
    /// cannot have reached its handler, and otherwise only for an RPC that
    /// is `idempotent` (running it twice does no harm; see
    /// [`RpcOptions::idempotent`](crate::RpcOptions::idempotent)). Courier
    /// itself never retries.
    pub fn is_retry_safe(&self, idempotent: bool) -> bool {
        match self.reach() {
            Reach::NotReached => true,
            Reach::Unknown | Reach::Reached => idempotent,
        }
    }
}

/// Shorthand for `Result<T, courier::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
