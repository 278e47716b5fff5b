//! Opening connections from many loopback source addresses and logging them in.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf, BytesMut};
use im_connect::config::{Codec, Config};
use im_connect::protocol::CodeTable;
use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::wire::{self, Codes, FrameKind, Outgoing, Transport};

/// How long one connect-and-login may take before it counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how a benchmark connects.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// WebSocket or TCP.
    pub(crate) transport: Transport,
    /// JSON or protobuf.
    pub(crate) codec: Codec,
    /// Server addresses; connections are spread over them in turn.
    pub(crate) servers: Vec<SocketAddr>,
    /// Source addresses; connections are spread over them in turn.
    pub(crate) sources: Vec<Ipv4Addr>,
    /// WebSocket upgrade path.
    pub(crate) path: String,
    /// Code numbers of the server's table.
    pub(crate) codes: Codes,
    /// Device type every client logs in with.
    pub(crate) device: String,
    /// Prefix of the user ids, so concurrent runs do not kick each other's users.
    pub(crate) user_prefix: String,
}

impl Target {
    /// A target with the code table and WebSocket path of `config`. Every address must be in
    /// 127.0.0.0/8: the generator never sends load anywhere but this machine.
    pub(crate) fn new(
        config: &Config,
        transport: Transport,
        codec: Codec,
        servers: Vec<SocketAddr>,
        sources: Vec<Ipv4Addr>,
    ) -> anyhow::Result<Target> {
        for server in &servers {
            if !matches!(server, SocketAddr::V4(v4) if v4.ip().is_loopback()) {
                bail!("server address {server} is not in 127.0.0.0/8");
            }
        }
        if let Some(source) = sources.iter().find(|s| !s.is_loopback()) {
            bail!("source address {source} is not in 127.0.0.0/8");
        }
        if servers.is_empty() || sources.is_empty() {
            bail!("at least one server and one source address are needed");
        }
        let nonce = std::process::id() % 100_000;
        Ok(Target {
            transport,
            codec,
            servers,
            sources,
            path: config.netty.config.websocket.path.clone(),
            codes: Codes::new(CodeTable::new(config.netty.config.code_table)),
            device: "web".into(),
            user_prefix: format!("bench{nonce}-"),
        })
    }

    /// The user id of client `index`.
    pub(crate) fn user(&self, index: usize) -> String {
        format!("{}{index}", self.user_prefix)
    }

    /// Opens a TCP connection for client `index` from its source address.
    ///
    /// `IP_BIND_ADDRESS_NO_PORT` defers the choice of the source port to `connect`, so the
    /// kernel needs only the full 4-tuple to be unique and each source address serves more
    /// than one ephemeral port range worth of connections across server ports.
    pub(crate) async fn connect(&self, index: usize) -> io::Result<TcpStream> {
        let source = self.sources[index % self.sources.len()];
        let server = self.servers[(index / self.sources.len()) % self.servers.len()];
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, IpBindAddressNoPort, &true).map_err(io::Error::from)?;
        socket.bind(&SocketAddr::new(source.into(), 0).into())?;
        let stream = TcpSocket::from_std_stream(socket.into())
            .connect(server)
            .await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Everything client `index` writes to log in with `token`, in one piece: on WebSocket the
    /// upgrade request with its REGISTER right behind it, on TCP the REGISTER with the token.
    pub(crate) fn login_bytes(&self, index: usize, token: &str) -> Vec<u8> {
        let request_id = format!("reg-{index}");
        let mut out = Vec::with_capacity(token.len() * 2 + 256);
        let register = Outgoing {
            code: self.codes.register,
            token: (self.transport == Transport::Tcp).then_some(token),
            request_id: &request_id,
            device_type: Some(&self.device),
            ..Outgoing::default()
        };
        if self.transport == Transport::Ws {
            let protocol = match self.codec {
                Codec::Json => "json",
                Codec::Proto => "proto",
            };
            let request = format!(
                "GET {}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: YmVuY2hiZW5jaGJlbmNoMQ==\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
                self.path
            );
            out.extend_from_slice(request.as_bytes());
        }
        let payload = wire::payload(self.codec, &register);
        wire::frame_into(self.transport, self.codec, &payload, &mut out);
        out
    }

    /// A HEART_BEAT frame.
    pub(crate) fn heartbeat(&self) -> Vec<u8> {
        let beat = Outgoing {
            code: self.codes.heart_beat,
            request_id: "hb",
            ..Outgoing::default()
        };
        wire::frame(
            self.transport,
            self.codec,
            &wire::payload(self.codec, &beat),
        )
    }

    /// Connects client `index`, sends `login` and waits for the REGISTER reply.
    pub(crate) async fn login(&self, index: usize, login: &[u8]) -> anyhow::Result<Client> {
        let attempt = async {
            let mut stream = self.connect(index).await.context("connect")?;
            stream.write_all(login).await.context("send login")?;
            let mut client = Client {
                stream,
                buf: BytesMut::with_capacity(512),
            };
            if self.transport == Transport::Ws {
                client.read_upgrade().await?;
            }
            client.read_register_reply(self).await?;
            Ok(client)
        };
        tokio::time::timeout(LOGIN_TIMEOUT, attempt)
            .await
            .map_err(|_| anyhow!("login timed out"))?
    }
}

/// A logged-in connection and the bytes read past its login.
#[derive(Debug)]
pub(crate) struct Client {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Bytes read and not yet parsed.
    pub(crate) buf: BytesMut,
}

impl Client {
    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    async fn read_upgrade(&mut self) -> anyhow::Result<()> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head.lines().next().unwrap_or_default();
                if !status.starts_with("HTTP/1.1 101") {
                    bail!("upgrade refused: {status}");
                }
                self.buf.advance(end + 4);
                return Ok(());
            }
            if self.buf.len() > 16 * 1024 {
                bail!("upgrade response too long");
            }
            self.read_more().await?;
        }
    }

    async fn read_register_reply(&mut self, target: &Target) -> anyhow::Result<()> {
        loop {
            while let Some(parsed) =
                wire::parse(target.transport, &self.buf).map_err(|e| anyhow!(e))?
            {
                let payload = &self.buf[parsed.payload.clone()];
                match parsed.kind {
                    FrameKind::Close => bail!("closed during login"),
                    FrameKind::Data => {
                        let head = wire::head(target.codec, payload)
                            .ok_or_else(|| anyhow!("undecodable frame during login"))?;
                        if head.code == target.codes.error {
                            bail!("login refused: {}", wire::describe(target.codec, payload));
                        }
                        if head.code == target.codes.register_reply {
                            self.buf.advance(parsed.consumed);
                            return Ok(());
                        }
                    }
                    FrameKind::Ping | FrameKind::Other => {}
                }
                self.buf.advance(parsed.consumed);
            }
            self.read_more().await?;
        }
    }
}

/// Mints one token per client, signed with the key `config` names.
pub(crate) fn tokens(
    config: &Config,
    target: &Target,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    (0..count)
        .map(|i| {
            im_connect::layer::auth::mint_token(config, &target.user(i), None, 86_400)
                .map_err(|e| anyhow!("cannot sign a token: {e}"))
        })
        .collect()
}

/// The outcome of logging many clients in.
#[derive(Debug)]
pub(crate) struct LoginRun {
    /// One slot per client, `None` where the login failed.
    pub(crate) clients: Vec<Option<Client>>,
    /// How many failed, and the first error seen.
    pub(crate) failed: usize,
    /// The first error, for the report.
    pub(crate) first_error: Option<String>,
    /// Wall time of the whole login phase.
    pub(crate) elapsed: Duration,
    /// Connect-to-REGISTER-reply time of each successful login.
    pub(crate) latency: super::stats::LatencySummary,
}

/// Logs in one client per entry of `logins`, keeping `concurrency` logins in flight from this
/// one task, and reports progress every `progress`.
pub(crate) async fn login_all(
    target: &Target,
    logins: &[Vec<u8>],
    concurrency: usize,
    progress: Option<Duration>,
) -> LoginRun {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let clock = super::stats::Clock::start();
    let latency = super::stats::Latency::default();
    let mut clients: Vec<Option<Client>> = (0..logins.len()).map(|_| None).collect();
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut done = 0;
    let mut failed = 0;
    let mut first_error = None;
    let mut last_report = clock.elapsed();
    let mut samples = Vec::with_capacity(1);
    while done < logins.len() {
        while next < logins.len() && pending.len() < concurrency.max(1) {
            let index = next;
            pending.push(async move {
                let started = clock.now_ns();
                let result = target.login(index, &logins[index]).await;
                (index, result, clock.now_ns() - started)
            });
            next += 1;
        }
        let Some((index, result, took)) = pending.next().await else {
            break;
        };
        done += 1;
        match result {
            Ok(client) => {
                clients[index] = Some(client);
                samples.push(took);
                latency.record_all(&samples);
                samples.clear();
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("client {index}: {error:#}"));
            }
        }
        if let Some(every) = progress {
            if clock.elapsed() - last_report >= every {
                last_report = clock.elapsed();
                let secs = last_report.as_secs_f64();
                eprintln!(
                    "login: {secs:6.1} s  {done}/{} done ({:.0}/s)  {failed} failed",
                    logins.len(),
                    done as f64 / secs
                );
            }
        }
    }
    LoginRun {
        clients,
        failed,
        first_error,
        elapsed: clock.elapsed(),
        latency: latency.summary(),
    }
}
