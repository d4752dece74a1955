//! Connection set-up over the unix socket.
//!
//! ```text
//! client                                          server
//! connect ───────────────────────────────────────► accept (same uid or root only)
//! memfd: size, header, seals; 4 eventfds; map
//! "CRSHMHI\x01" + SCM_RIGHTS[memfd, 4 eventfds] ─► check hello, fd count, header,
//!                                                  seals, size; map; close memfd
//! close memfd ◄────────────────────────────────── 0x01 (accepted)
//!             ◄────────────────────────────────── or 0x00 + reason, then hang-up
//! ```
//!
//! After that the socket carries nothing: it is the liveness channel.

use std::io;

use courier_transport::{Address, TransportError};
use rustix::net::{RecvFlags, SendFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::conn::{EventFds, Settings, ShmConnection};
use crate::segment::{self, Layout, ACCEPTED, FD_COUNT, HELLO, REFUSED};
use crate::shared;

/// Longest refusal reason a client reads.
const MAX_REASON: usize = 1024;

fn io(e: rustix::io::Errno) -> io::Error {
    e.into()
}

async fn read_some(socket: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    socket
        .async_io(Interest::READABLE, || {
            rustix::net::recv(socket, &mut *buf, RecvFlags::empty())
                .map(|(n, _)| n)
                .map_err(io)
        })
        .await
}

async fn write_all(socket: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = socket
            .async_io(Interest::WRITABLE, || {
                rustix::net::send(socket, buf, SendFlags::NOSIGNAL).map_err(io)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// The client's side: creates the segment, passes it, waits for the answer.
pub(crate) async fn client(
    socket: UnixStream,
    peer: Address,
    layout: Layout,
    settings: Settings,
) -> io::Result<ShmConnection> {
    let memfd = segment::create_memfd(layout)?;
    let efds: EventFds = [
        segment::new_eventfd()?,
        segment::new_eventfd()?,
        segment::new_eventfd()?,
        segment::new_eventfd()?,
    ];
    let rings = shared::map(&memfd, layout, 0, true)?;
    {
        let all = [&memfd, &efds[0], &efds[1], &efds[2], &efds[3]];
        let sent = segment::send_with_fds(&socket, &HELLO, &segment::borrow_all(&all)).await;
        if let Err(e) = sent {
            // A server that refuses us before reading (another uid) writes
            // its reason and hangs up, which can break our send: its reason
            // is still in our receive queue, and says more than EPIPE.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                let mut answer = [0u8; 1];
                if let Ok(1) = read_some(&socket, &mut answer).await {
                    if answer[0] == REFUSED {
                        return Err(refusal(&socket).await);
                    }
                }
            }
            return Err(e);
        }
    }
    // Mapped here and passed: the descriptor is no longer needed.
    drop(memfd);
    let mut answer = [0u8; 1];
    if read_some(&socket, &mut answer).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server hung up during the handshake (is it a Courier shm endpoint?)",
        ));
    }
    match answer[0] {
        ACCEPTED => ShmConnection::new(socket, peer, rings, efds, 0, settings),
        REFUSED => Err(refusal(&socket).await),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected handshake answer {other:#04x} (is it a Courier shm endpoint?)"),
        )),
    }
}

/// Reads a refusal's reason (after its `REFUSED` byte) into the error.
async fn refusal(socket: &UnixStream) -> io::Error {
    let mut reason = Vec::new();
    let mut buf = [0u8; 256];
    while reason.len() < MAX_REASON {
        match read_some(socket, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => reason.extend_from_slice(&buf[..n]),
        }
    }
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "the server refused the shared segment: {}",
            String::from_utf8_lossy(&reason)
        ),
    )
}

/// Why a server-side handshake failed.
enum Failure {
    /// The client sent something invalid: told to it, then hung up.
    Refused(String),
    /// The socket failed.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What a valid hello brought.
struct Accepted {
    rings: (shared::RingWriter, shared::RingReader, u64),
    efds: EventFds,
}

/// Receives and checks the client's hello and segment, and maps it.
async fn receive_segment(socket: &UnixStream) -> Result<Accepted, Failure> {
    let cred = socket.peer_cred()?;
    let me = rustix::process::geteuid().as_raw();
    if cred.uid() != me && cred.uid() != 0 {
        return Err(Failure::Refused(format!(
            "the client runs as uid {}, this server accepts only uid {me} (and root)",
            cred.uid()
        )));
    }
    let mut hello = [0u8; HELLO.len()];
    let received = segment::recv_with_fds(socket, &mut hello).await?;
    if received.len == 0 {
        return Err(Failure::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the client hung up before its handshake",
        )));
    }
    let mut got = received.len;
    while got < hello.len() {
        match read_some(socket, &mut hello[got..]).await? {
            0 => {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the client hung up after {got} bytes of its handshake"),
                )))
            }
            n => got += n,
        }
    }
    if hello != HELLO {
        return Err(Failure::Refused(format!(
            "bad hello {hello:02x?} (expected {HELLO:02x?})"
        )));
    }
    if received.truncated || received.fds.len() != FD_COUNT {
        return Err(Failure::Refused(format!(
            "expected {FD_COUNT} descriptors (a memfd and 4 eventfds), got {}{}",
            received.fds.len(),
            if received.truncated { " and more" } else { "" }
        )));
    }
    let mut fds = received.fds.into_iter();
    let (Some(memfd), Some(e0), Some(e1), Some(e2), Some(e3)) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(Failure::Refused("missing descriptors".into()));
    };
    let layout = segment::read_header(&memfd).map_err(Failure::Refused)?;
    let rings = shared::map(&memfd, layout, 1, false).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            Failure::Refused(e.to_string())
        } else {
            Failure::Refused(format!("cannot map the segment: {e}"))
        }
    })?;
    // The mapping stays; the descriptor is closed here.
    drop(memfd);
    let efds: EventFds = [e0, e1, e2, e3];
    for fd in &efds {
        segment::set_nonblocking(fd).map_err(|e| Failure::Refused(format!("bad eventfd: {e}")))?;
    }
    Ok(Accepted { rings, efds })
}

/// The server's side: checks and maps the client's segment, answers.
pub(crate) async fn server(
    socket: UnixStream,
    peer: Address,
    settings: Settings,
) -> Result<ShmConnection, TransportError> {
    let io_error = |source| TransportError::Io {
        peer: peer.to_string(),
        source,
    };
    match receive_segment(&socket).await {
        Ok(Accepted { rings, efds }) => {
            write_all(&socket, &[ACCEPTED]).await.map_err(io_error)?;
            ShmConnection::new(socket, peer.clone(), rings, efds, 1, settings).map_err(io_error)
        }
        Err(Failure::Io(e)) => Err(io_error(e)),
        Err(Failure::Refused(reason)) => {
            let mut answer = vec![REFUSED];
            answer.extend_from_slice(reason.as_bytes());
            // Best effort: the client may be gone already.
            let _ = write_all(&socket, &answer).await;
            tracing::debug!(%peer, "refused a shared-memory connection: {reason}");
            Err(TransportError::Malformed {
                peer: peer.to_string(),
                reason: format!("refused its shared segment: {reason}"),
            })
        }
    }
}
