//! A terminal chat client for im-connect, over WebSocket or TCP, speaking JSON.
//!
//! ```sh
//! cargo run --release                                    # the gateway, dev profile
//! TOKEN=$(cargo run --release -- token --user alice)
//! cargo run --release --example chat_client -- --url ws://127.0.0.1:19000/im --token "$TOKEN"
//! # or over TCP:
//! cargo run --release --example chat_client -- --tcp 127.0.0.1:9000 --token "$TOKEN"
//! ```
//!
//! It logs in (REGISTER), then reads lines from standard input: `@bob hello` sends a
//! SINGLE_MESSAGE with text `hello` to user `bob` (`@bob,carol hi` to both). Every frame the
//! server sends is printed: messages with their sender, ACKs, ERRORs with their reason,
//! kicks. A heartbeat goes out every 20 seconds (`--heartbeat`). At the end of the input (or
//! `/quit`) it logs out and waits for the server to close; when the server closes, it prints
//! the close code and reason and exits.
//!
//! WebSocket clients offer the `json` subprotocol and send the token in the `token` query
//! parameter as well as in REGISTER; TCP clients send it in REGISTER. `wss://` is not
//! supported (put a TLS-terminating proxy in front, or use a TLS-capable client).

use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use im_connect::protocol::{CodeTable, Kind};
use im_connect::BoxError;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// How long to wait for the server to close after logging out.
const LOGOUT_WAIT: Duration = Duration::from_secs(5);

/// Command line of the chat client.
#[derive(Debug, Parser)]
#[command(about = "Terminal chat client for im-connect")]
#[command(group(clap::ArgGroup::new("server").required(true).args(["url", "tcp"])))]
pub struct Args {
    /// WebSocket URL of the gateway, e.g. ws://127.0.0.1:19000/im.
    #[arg(long)]
    pub url: Option<String>,
    /// TCP address of the gateway, e.g. 127.0.0.1:9000.
    #[arg(long)]
    pub tcp: Option<String>,
    /// The login token (a JWT; `im-connect token --user NAME` prints one for the dev profile).
    #[arg(long, env = "IM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Device type to log in with: android, ios, web, mac, win or linux.
    #[arg(long, default_value = "linux")]
    pub device: String,
    /// The server's code table (`netty.config.codeTable`).
    #[arg(long, value_enum, default_value_t = Codes::Seed)]
    pub codes: Codes,
    /// Seconds between heartbeats; keep it below the server's heartBeatTime.
    #[arg(long, default_value_t = 20)]
    pub heartbeat: u64,
}

/// Code numberings the client can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Codes {
    /// The design document's numbers (the default).
    Seed,
    /// The Lucky Cloud numbers.
    Lucky,
}

impl Codes {
    fn table(self) -> CodeTable {
        match self {
            Codes::Seed => CodeTable::SEED,
            Codes::Lucky => CodeTable::LUCKY,
        }
    }
}

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server closed: the WebSocket close code and reason (`None` on TCP, which has none).
    Closed(Option<u16>, String),
    /// The connection ended without a close (the server vanished, or logout timed out).
    Dropped,
}

/// One open connection to the gateway, either transport, JSON frames both ways.
enum Link {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp(Framed<TcpStream, LengthDelimitedCodec>),
}

/// What arrives from the server.
enum Incoming {
    Frame(Value),
    Unreadable(String),
    Closed(Option<u16>, String),
}

impl Link {
    async fn connect(args: &Args) -> Result<Link, BoxError> {
        if let Some(addr) = &args.tcp {
            let stream = TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            return Ok(Link::Tcp(Framed::new(stream, LengthDelimitedCodec::new())));
        }
        let url = args.url.as_deref().ok_or("give --url or --tcp")?;
        if url.starts_with("wss:") {
            return Err("wss:// is not supported by this client".into());
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        let mut request = format!("{url}{separator}token={}", args.token)
            .into_client_request()
            .map_err(|e| format!("bad --url: {e}"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "json".parse()?);
        let authority = request.uri().authority().ok_or("--url has no host")?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _)) => Ok(Link::Ws(Box::new(ws))),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let body = res.body().as_deref().unwrap_or_default();
                let body = String::from_utf8_lossy(body);
                Err(format!("handshake refused: {} {}", res.status(), body.trim()).into())
            }
            Err(e) => Err(format!("handshake failed: {e}").into()),
        }
    }

    async fn send(&mut self, frame: &Value) -> Result<(), BoxError> {
        let text = frame.to_string();
        match self {
            Link::Ws(ws) => ws.send(Message::Text(text.into())).await?,
            Link::Tcp(tcp) => tcp.send(Bytes::from(text)).await?,
        }
        Ok(())
    }

    /// The next thing from the server; `None` when the connection ended without a close.
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Link::Ws(ws) => loop {
                let incoming = match ws.next().await? {
                    Err(_) => return None,
                    Ok(Message::Text(text)) => parse(text.as_bytes()),
                    Ok(Message::Binary(bytes)) => parse(&bytes),
                    Ok(Message::Close(frame)) => {
                        let (code, reason) = frame
                            .map(|CloseFrame { code, reason }| (code.into(), reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        Incoming::Closed(Some(code), reason)
                    }
                    // Pings are answered by tungstenite itself.
                    Ok(_) => continue,
                };
                return Some(incoming);
            },
            Link::Tcp(tcp) => match tcp.next().await {
                Some(Ok(bytes)) => Some(parse(&bytes)),
                Some(Err(_)) => None,
                None => Some(Incoming::Closed(None, "connection closed".into())),
            },
        }
    }
}

fn parse(bytes: &[u8]) -> Incoming {
    match serde_json::from_slice(bytes) {
        Ok(value) => Incoming::Frame(value),
        Err(_) => Incoming::Unreadable(format!("unreadable frame of {} bytes", bytes.len())),
    }
}

/// The client's session: what it sends, and how it prints what it gets.
struct Session {
    table: CodeTable,
    token: String,
    device: String,
    sent: u64,
}

impl Session {
    fn frame(&mut self, kind: Kind) -> Value {
        self.sent += 1;
        json!({
            "code": self.table.code(kind),
            "requestId": format!("{}-{}", kind.snake_name(), self.sent),
            "timestamp": now_millis(),
        })
    }

    fn register(&mut self) -> Value {
        let mut frame = self.frame(Kind::Register);
        frame["token"] = self.token.clone().into();
        frame["deviceType"] = self.device.clone().into();
        frame
    }

    /// The frame an input line asks for, or the usage hint to print instead.
    fn message(&mut self, line: &str) -> Result<Value, &'static str> {
        let usage = "usage: @user message (or @alice,bob message; /quit to leave)";
        let rest = line.strip_prefix('@').ok_or(usage)?;
        let (to, text) = rest.split_once(char::is_whitespace).ok_or(usage)?;
        let ids: Vec<&str> = to.split(',').filter(|id| !id.is_empty()).collect();
        let text = text.trim();
        if ids.is_empty() || text.is_empty() {
            return Err(usage);
        }
        let mut frame = self.frame(Kind::SingleMessage);
        frame["ids"] = json!(ids);
        frame["data"] = json!({ "text": text });
        Ok(frame)
    }

    /// The kind of a frame the server sent, read from its number.
    fn kind_of(&self, frame: &Value) -> Option<Kind> {
        let code = frame.get("code")?.as_i64()?;
        // REGISTER and its reply share a number in the seed table: from the server it is
        // always the reply.
        Kind::ALL
            .into_iter()
            .filter(|k| !matches!(k, Kind::Register | Kind::HeartBeat))
            .find(|&k| i64::from(self.table.code(k)) == code)
    }

    /// A readable line for a frame from the server; `None` for heartbeat replies.
    fn describe(&self, frame: &Value) -> Option<String> {
        let field = |name: &str| frame.get(name).and_then(Value::as_str).unwrap_or("");
        let meta = |name: &str| frame["metadata"].get(name).and_then(Value::as_str);
        let line = match self.kind_of(frame) {
            Some(Kind::HeartBeatReply) => return None,
            Some(Kind::RegisterReply) => format!(
                "logged in ({}, node {})",
                meta("deviceType").unwrap_or("?"),
                meta("brokerId").unwrap_or("?")
            ),
            Some(Kind::Ack) => format!("ack {}", field("requestId")),
            Some(Kind::Error) => format!(
                "error {}: {} ({})",
                meta("reason").unwrap_or("?"),
                field("message"),
                field("requestId")
            ),
            Some(Kind::ForceLogout) => format!("kicked: {}", field("message")),
            Some(Kind::RefreshToken) => "token expires soon: log in again with a fresh one".into(),
            Some(Kind::SingleMessage) => {
                format!("{}: {}", meta("userId").unwrap_or("?"), text_of(frame))
            }
            Some(kind) => format!(
                "{} from {}: {}",
                kind.snake_name(),
                meta("userId").unwrap_or("?"),
                text_of(frame)
            ),
            None => format!("frame {frame}"),
        };
        Some(line)
    }
}

/// `data.text` when it is a string, else `data` as compact JSON.
fn text_of(frame: &Value) -> String {
    match frame.get("data") {
        Some(Value::Object(data)) if data.get("text").is_some_and(Value::is_string) => {
            data["text"].as_str().unwrap_or_default().to_owned()
        }
        Some(data) => data.to_string(),
        None => String::new(),
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Connects, logs in and chats: lines from `input` go out, and every line worth showing is
/// handed to `out`. Returns how the connection ended.
pub async fn run<R>(args: &Args, input: R, mut out: impl FnMut(String)) -> Result<Ending, BoxError>
where
    R: AsyncBufRead + Unpin,
{
    let mut link = Link::connect(args).await?;
    let mut session = Session {
        table: args.codes.table(),
        token: args.token.clone(),
        device: args.device.clone(),
        sent: 0,
    };
    link.send(&session.register()).await?;

    let period = Duration::from_secs(args.heartbeat.max(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut lines = input.lines();
    // Set once the input ended and the logout went out: then only the close is awaited.
    let mut leaving: Option<tokio::time::Instant> = None;
    let far_future = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);

    loop {
        let deadline = leaving.unwrap_or(far_future);
        tokio::select! {
            incoming = link.next() => match incoming {
                Some(Incoming::Frame(frame)) => {
                    if let Some(line) = session.describe(&frame) {
                        out(line);
                    }
                }
                Some(Incoming::Unreadable(line)) => out(line),
                Some(Incoming::Closed(code, reason)) => return Ok(Ending::Closed(code, reason)),
                None => return Ok(Ending::Dropped),
            },
            line = lines.next_line(), if leaving.is_none() => {
                let line = line?;
                match line.as_deref().map(str::trim) {
                    None | Some("/quit") => {
                        link.send(&session.frame(Kind::ForceLogout)).await?;
                        leaving = Some(tokio::time::Instant::now() + LOGOUT_WAIT);
                    }
                    Some("") => {}
                    Some(line) => match session.message(line) {
                        Ok(frame) => link.send(&frame).await?,
                        Err(usage) => out(usage.to_owned()),
                    },
                }
            }
            _ = heartbeat.tick() => link.send(&session.frame(Kind::HeartBeat)).await?,
            () = tokio::time::sleep_until(deadline), if leaving.is_some() => {
                return Ok(Ending::Dropped);
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    match run(&args, stdin, |line| println!("{line}")).await {
        Ok(Ending::Closed(Some(code), reason)) => println!("closed: {code} {reason}"),
        Ok(Ending::Closed(None, reason)) => println!("closed: {reason}"),
        Ok(Ending::Dropped) => println!("connection lost"),
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
