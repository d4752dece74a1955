//! The three systems, each as a server (run in a child process) and as a
//! client-side "sink" (run in the measuring process): the same RPC in each,
//! a 64-byte request in and an empty response out.
//!
//! * **Courier** over its `tcp` plugin: `register_raw("bench.sink")` answering
//!   `respond_raw(&[])`, called with `remote_raw("bench.sink")`, as in
//!   `courier bench`.
//! * **tonic** (gRPC over HTTP/2) without protoc or prost: one hand-written
//!   unary method, `/courier.Bench/Sink`, served by a tower `Service` that
//!   hands the request to `tonic::server::Grpc::unary`, and called with
//!   `tonic::client::Grpc::unary` over a `tonic::transport::Channel`; both
//!   ends use [`RawCodec`], a `tonic::codec::Codec` that moves the message
//!   bytes as they are (`bytes::Bytes` in, `Bytes` out).
//! * **tarpc** with its serde transport (length-delimited frames, bincode)
//!   over TCP: a `#[tarpc::service]` trait with `async fn sink(payload:
//!   Vec<u8>)`.
//!
//! Every socket has `TCP_NODELAY` (Courier's and tonic's default; tarpc's
//! TCP helpers leave it off, so its sockets are set up here).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use courier_cli::bench::{Caller, EngineSink, Spinner};
use courier_cli::Error;
use futures::StreamExt;
use tarpc::server::Channel as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::UnaryService;
use tonic::Status;

/// The RPC's name on Courier (as in `courier bench`).
pub const COURIER_SINK: &str = "bench.sink";
/// The gRPC method's path.
pub const TONIC_SINK_PATH: &str = "/courier.Bench/Sink";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    CourierTcp,
    Tonic,
    Tarpc,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::CourierTcp => "courier-tcp",
            Self::Tonic => "tonic",
            Self::Tarpc => "tarpc",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "courier-tcp" | "courier" => Ok(Self::CourierTcp),
            "tonic" => Ok(Self::Tonic),
            "tarpc" => Ok(Self::Tarpc),
            _ => Err(format!(
                "unknown system '{s}' (courier-tcp, tonic or tarpc)"
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// tonic: a bytes codec and a hand-written unary service
// ---------------------------------------------------------------------------

/// A gRPC codec whose messages are raw bytes: no protobuf. tonic still
/// frames each message (1-byte compression flag, 4-byte length) inside
/// HTTP/2 DATA frames, with the usual headers and trailers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The method: takes the payload, answers an empty message.
struct SinkMethod;

impl UnaryService<Bytes> for SinkMethod {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(Bytes::new())))
    }
}

/// The server: what tonic-build would generate for a service with one
/// unary method, by hand.
#[derive(Debug, Clone, Copy, Default)]
struct TonicSinkServer;

impl<B> Service<http::Request<B>> for TonicSinkServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == TONIC_SINK_PATH {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                Ok(grpc.unary(SinkMethod, req).await)
            })
        } else {
            Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) })
        }
    }
}

// ---------------------------------------------------------------------------
// tarpc
// ---------------------------------------------------------------------------

#[tarpc::service]
pub trait Bench {
    /// Takes the payload, answers nothing.
    async fn sink(payload: Vec<u8>);
}

#[derive(Clone, Copy)]
struct TarpcSinkServer;

impl Bench for TarpcSinkServer {
    async fn sink(self, _: tarpc::context::Context, _payload: Vec<u8>) {}
}

// ---------------------------------------------------------------------------
// servers
// ---------------------------------------------------------------------------

/// The line a server prints once it listens, followed by its address.
pub const READY: &str = "listening at ";

pub struct ServerArgs {
    pub system: System,
    pub port: u16,
    pub spin_us: u64,
    pub poll: bool,
}

/// Serves until `stop` resolves.
pub async fn serve(
    args: ServerArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    match args.system {
        System::CourierTcp => courier_server(&args, stop).await,
        System::Tonic => tonic_server(&args, stop).await,
        System::Tarpc => tarpc_server(&args, stop).await,
    }
}

fn ready(address: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY}{address}");
    let _ = out.flush();
}

async fn courier_server(args: &ServerArgs, stop: impl Future<Output = ()>) -> Result<(), String> {
    let target = if args.port == 0 {
        "tcp".to_owned()
    } else {
        format!("tcp://127.0.0.1:{}", args.port)
    };
    let engine = courier::Engine::builder(&target)
        .progress_spin(Duration::from_micros(args.spin_us))
        .build()
        .await
        .map_err(|e| format!("courier engine: {e}"))?;
    engine
        .register_raw(
            COURIER_SINK,
            courier::RpcOptions::default(),
            |handle: courier::Handle, _payload: Bytes| async move { handle.respond_raw(&[]).await },
        )
        .map_err(|e| format!("register {COURIER_SINK}: {e}"))?;
    ready(engine.address());
    stop.await;
    engine.finalize().await;
    Ok(())
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))
}

async fn tonic_server(
    args: &ServerArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = bind(args.port).await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let _spin = Spinner::start(args.poll);
    ready(addr);
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(TonicSinkServer, incoming, stop)
        .await
        .map_err(|e| format!("tonic server: {e}"))
}

async fn tarpc_server(args: &ServerArgs, stop: impl Future<Output = ()>) -> Result<(), String> {
    let listener = bind(args.port).await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let _spin = Spinner::start(args.poll);
    ready(addr);
    tokio::pin!(stop);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(|e| format!("accept: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let framed = LengthDelimitedCodec::builder().new_framed(stream);
                let transport = tarpc::serde_transport::new(framed, Bincode::default());
                let channel = tarpc::server::BaseChannel::with_defaults(transport);
                // tarpc's canonical server loop: one task per request.
                conns.spawn(channel.execute(TarpcSinkServer.serve()).for_each(|response| async {
                    tokio::spawn(response);
                }));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------

// Each calling task of a measurement owns a clone of its system's
// `courier_cli::bench::Caller`: Courier's is `EngineSink`, as in
// `courier bench`.

#[derive(Clone)]
pub struct TonicSink(tonic::client::Grpc<tonic::transport::Channel>);

impl Caller for TonicSink {
    async fn call(&mut self, payload: &Bytes) -> Result<(), Error> {
        self.0
            .ready()
            .await
            .map_err(|e| Error::Peer(format!("tonic channel: {e}")))?;
        let reply: tonic::Response<Bytes> = self
            .0
            .unary(
                tonic::Request::new(payload.clone()),
                http::uri::PathAndQuery::from_static(TONIC_SINK_PATH),
                RawCodec,
            )
            .await
            .map_err(|e| Error::Peer(format!("tonic call: {e}")))?;
        match reply.into_inner().len() {
            0 => Ok(()),
            len => Err(Error::Peer(format!(
                "the tonic server answered {len} bytes, not an empty message"
            ))),
        }
    }
}

#[derive(Clone)]
pub struct TarpcSink(BenchClient);

impl Caller for TarpcSink {
    async fn call(&mut self, payload: &Bytes) -> Result<(), Error> {
        self.0
            .sink(tarpc::context::current(), payload.to_vec())
            .await
            .map_err(|e| Error::Peer(format!("tarpc call: {e}")))
    }
}

/// A connected client of one system; dropped (or [`Client::close`]d) at the end.
pub enum Client {
    Courier {
        engine: courier::Engine,
        sink: EngineSink,
    },
    Tonic(TonicSink),
    Tarpc(TarpcSink),
}

impl Client {
    pub async fn connect(system: System, address: &str, spin_us: u64) -> Result<Self, String> {
        match system {
            System::CourierTcp => {
                let engine = courier::Engine::builder("tcp")
                    .client()
                    .progress_spin(Duration::from_micros(spin_us))
                    .build()
                    .await
                    .map_err(|e| format!("courier client engine: {e}"))?;
                let peer = match engine.lookup(address).await {
                    Ok(p) => p,
                    Err(e) => {
                        engine.finalize().await;
                        return Err(format!("lookup {address}: {e}"));
                    }
                };
                let sink = EngineSink::new(&engine, &peer, COURIER_SINK);
                Ok(Self::Courier { engine, sink })
            }
            System::Tonic => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| format!("tonic endpoint {address}: {e}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("tonic connect {address}: {e}"))?;
                Ok(Self::Tonic(TonicSink(tonic::client::Grpc::new(channel))))
            }
            System::Tarpc => {
                let addr: SocketAddr = address
                    .parse()
                    .map_err(|e| format!("tarpc address {address}: {e}"))?;
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("tarpc connect {address}: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let framed = LengthDelimitedCodec::builder().new_framed(stream);
                let transport = tarpc::serde_transport::new(framed, Bincode::default());
                let client = BenchClient::new(tarpc::client::Config::default(), transport).spawn();
                Ok(Self::Tarpc(TarpcSink(client)))
            }
        }
    }

    pub async fn close(self) {
        if let Self::Courier { engine, .. } = self {
            engine.finalize().await;
        }
    }
}
