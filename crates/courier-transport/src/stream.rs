//! Message sender and receiver over any tokio byte stream.
//!
//! A plugin whose medium is a byte stream (TCP, Unix sockets, a pipe, a
//! TLS stream) gets the whole message contract by wrapping the two halves of
//! its stream in [`StreamSender`] and [`StreamReceiver`]; see
//! [`framing`](crate::framing) for the bytes on the wire.

use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framing::{length_prefix, DeframeError, Deframer, MAX_FRAMED_MESSAGE, PREAMBLE};
use crate::transport::{MessageReceiver, MessageSender};
use crate::{Address, TransportError};

/// Messages up to this size are copied into one buffer and written with one
/// `write`; larger ones are written with vectored writes, without a copy.
const COPY_THRESHOLD: usize = 16 * 1024;

/// The sending half of a framed byte stream.
#[derive(Debug)]
pub struct StreamSender<W> {
    io: W,
    peer: Address,
    max: usize,
    preamble_sent: bool,
    broken: bool,
    scratch: Vec<u8>,
}

impl<W> StreamSender<W> {
    /// Wraps the write half of a stream to `peer`, refusing messages over `max`.
    pub fn new(io: W, peer: Address, max: usize) -> Self {
        Self {
            io,
            peer,
            max: max.min(MAX_FRAMED_MESSAGE),
            preamble_sent: false,
            broken: false,
            scratch: Vec::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamSender<W> {
    async fn write_message(&mut self, parts: &[&[u8]], len: usize) -> std::io::Result<()> {
        let prefix = length_prefix(len).unwrap_or_default();
        let preamble: &[u8] = if self.preamble_sent { &[] } else { &PREAMBLE };
        if len <= COPY_THRESHOLD {
            self.scratch.clear();
            self.scratch.extend_from_slice(preamble);
            self.scratch.extend_from_slice(&prefix);
            for p in parts {
                self.scratch.extend_from_slice(p);
            }
            self.io.write_all(&self.scratch).await?;
        } else {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() + 2);
            slices.push(IoSlice::new(preamble));
            slices.push(IoSlice::new(&prefix));
            slices.extend(parts.iter().map(|p| IoSlice::new(p)));
            let mut bufs: &mut [IoSlice<'_>] = &mut slices;
            IoSlice::advance_slices(&mut bufs, 0);
            while !bufs.is_empty() {
                let n = self.io.write_vectored(bufs).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
        }
        self.preamble_sent = true;
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> MessageSender for StreamSender<W> {
    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn transmit(&mut self, parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Closed {
                peer: self.peer.to_string(),
            });
        }
        // Until the write completes, a dropped future leaves the stream
        // mid-message: mark it broken first, clear the mark once done.
        self.broken = true;
        match self.write_message(parts, len).await {
            Ok(()) => {
                self.broken = false;
                Ok(())
            }
            Err(source) => Err(TransportError::Io {
                peer: self.peer.to_string(),
                source,
            }),
        }
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        self.broken = true;
        self.io
            .shutdown()
            .await
            .map_err(|source| TransportError::Io {
                peer: self.peer.to_string(),
                source,
            })
    }
}

/// The receiving half of a framed byte stream.
#[derive(Debug)]
pub struct StreamReceiver<R> {
    io: R,
    peer: Address,
    deframer: Deframer,
}

impl<R> StreamReceiver<R> {
    /// Wraps the read half of a stream from `peer`, refusing messages over `max`.
    pub fn new(io: R, peer: Address, max: usize) -> Self {
        Self {
            io,
            peer,
            deframer: Deframer::new(max),
        }
    }

    fn malformed(&self, err: &DeframeError) -> TransportError {
        match *err {
            DeframeError::TooLarge { size, max } => TransportError::MessageTooLarge { size, max },
            DeframeError::BadPreamble(_) => TransportError::Malformed {
                peer: self.peer.to_string(),
                reason: err.to_string(),
            },
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> MessageReceiver for StreamReceiver<R> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.deframer.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(self.malformed(&e)),
            }
            let n = self
                .io
                .read_buf(self.deframer.read_buf())
                .await
                .map_err(|source| TransportError::Io {
                    peer: self.peer.to_string(),
                    source,
                })?;
            if n == 0 {
                if self.deframer.is_idle() {
                    return Ok(None);
                }
                return Err(TransportError::Malformed {
                    peer: self.peer.to_string(),
                    reason: format!("the connection closed after {}", self.deframer.progress()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Address {
        "test://pipe".parse().unwrap()
    }

    #[tokio::test]
    async fn round_trips_small_and_large_messages() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut tx = StreamSender::new(a, peer(), 1 << 22);
        let mut rx = StreamReceiver::new(b, peer(), 1 << 22);
        let big = vec![0xabu8; 1 << 21];
        let writer = tokio::spawn(async move {
            tx.send(&[b"head", b"er"]).await.unwrap();
            tx.send(&[]).await.unwrap();
            tx.send(&[&big[..10], &big[10..]]).await.unwrap();
            tx.close().await.unwrap();
        });
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"header");
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 0);
        let m = rx.recv().await.unwrap().unwrap();
        assert_eq!(m.len(), 1 << 21);
        assert!(m.iter().all(|&b| b == 0xab));
        assert!(rx.recv().await.unwrap().is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_send_writes_nothing_and_keeps_the_stream() {
        let (a, b) = tokio::io::duplex(1024);
        let mut tx = StreamSender::new(a, peer(), 16);
        let mut rx = StreamReceiver::new(b, peer(), 16);
        let err = tx.send(&[&[0u8; 17]]).await.unwrap_err();
        assert!(matches!(
            err,
            TransportError::MessageTooLarge { size: 17, max: 16 }
        ));
        tx.send(&[b"fits"]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"fits");
    }

    #[tokio::test]
    async fn hang_up_mid_message_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut rx = StreamReceiver::new(b, peer(), 1024);
        let mut bytes = PREAMBLE.to_vec();
        bytes.extend_from_slice(&10u32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        a.write_all(&bytes).await.unwrap();
        drop(a);
        let err = rx.recv().await.unwrap_err();
        assert!(err.to_string().contains("3 of 10 bytes"), "{err}");
    }
}
