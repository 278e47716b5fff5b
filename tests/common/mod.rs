//! Helpers for end-to-end tests: a server on free ports and WebSocket/TCP clients that speak
//! the real wire protocols.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use im_connect::config::{Config, Secret};
use im_connect::protocol::pb::IMessageWrap;
use im_connect::server::Server;
use im_connect::session::Transport;
use prost::Message as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(5);

/// A configuration with no listeners (tests bind port 0), the admin endpoint on a free port
/// and the test secret.
pub fn config() -> Config {
    let mut config = isolated(Config::default());
    config.auth.jwt.secret = Some(Secret::new(SECRET));
    config
}

/// `config` with nothing on a fixed port, so tests run beside each other and beside a
/// server started by hand: no listeners (tests bind port 0), admin on a free port, loopback.
pub fn isolated(mut config: Config) -> Config {
    config.admin.port = 0;
    config.netty.config.websocket.port.clear();
    config.netty.config.tcp.port.clear();
    config.netty.config.host = "127.0.0.1".into();
    config
}

pub struct TestServer {
    pub server: Server,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub config: Config,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(config()).await
    }

    pub async fn with(config: Config) -> TestServer {
        let server = Server::start(config.clone()).await.expect("server starts");
        Self::serve(server, config).await
    }

    /// Binds a WebSocket and a TCP port of `server` (built by the caller, e.g. with a
    /// builder override) on free ports.
    pub async fn serve(server: Server, config: Config) -> TestServer {
        let ws = server
            .bind(Transport::WebSocket, "127.0.0.1", 0)
            .await
            .unwrap();
        let tcp = server.bind(Transport::Tcp, "127.0.0.1", 0).await.unwrap();
        TestServer {
            server,
            ws,
            tcp,
            config,
        }
    }

    pub fn token(&self, user: &str) -> String {
        token_for(&self.config, user, 3600)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/im?{query}", self.ws)
    }
}

pub fn token_for(config: &Config, user: &str, ttl: u64) -> String {
    im_connect::layer::auth::mint_token(config, user, None, ttl).unwrap()
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket with `url`, offering `protocol` when given. Errors carry the HTTP status.
pub async fn ws_connect(url: &str, protocol: Option<&str>) -> Result<Ws, u16> {
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let host = request.uri().authority().unwrap().as_str().to_string();
    let stream = TcpStream::connect(host).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

pub async fn ws_send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

pub async fn ws_send_proto(ws: &mut Ws, msg: &IMessageWrap) {
    ws.send(Message::Binary(msg.encode_to_vec().into()))
        .await
        .unwrap();
}

/// What a WebSocket client sees next, pings and pongs skipped.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Proto(IMessageWrap),
    Close(u16, String),
    Pong,
    Ended,
}

pub async fn ws_next(ws: &mut Ws) -> WsEvent {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a WebSocket message within the wait");
        return match msg {
            None | Some(Err(_)) => WsEvent::Ended,
            Some(Ok(Message::Text(t))) => WsEvent::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Binary(b))) => WsEvent::Proto(IMessageWrap::decode(b).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                    .unwrap_or((1005, String::new()));
                WsEvent::Close(code, reason)
            }
            Some(Ok(Message::Pong(_))) => WsEvent::Pong,
            Some(Ok(_)) => continue,
        };
    }
}

pub async fn ws_json(ws: &mut Ws) -> Value {
    match ws_next(ws).await {
        WsEvent::Json(v) => v,
        other => panic!("expected a JSON frame, got {other:?}"),
    }
}

pub async fn ws_proto(ws: &mut Ws) -> IMessageWrap {
    match ws_next(ws).await {
        WsEvent::Proto(m) => m,
        other => panic!("expected a protobuf frame, got {other:?}"),
    }
}

/// Reads until the Close frame and returns its code and reason.
pub async fn ws_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws_next(ws).await {
            WsEvent::Close(code, reason) => return (code, reason),
            WsEvent::Ended => panic!("connection ended without a Close frame"),
            _ => continue,
        }
    }
}

/// Logs a JSON WebSocket client in: connect with the token and send REGISTER.
pub async fn ws_login(srv: &TestServer, user: &str, device: &str) -> Ws {
    let url = srv.ws_url(&format!("token={}", srv.token(user)));
    let mut ws = ws_connect(&url, Some("json")).await.expect("handshake");
    ws_send_json(
        &mut ws,
        serde_json::json!({"code": 1, "deviceType": device, "requestId": format!("reg-{user}-{device}")}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], 1, "REGISTER reply: {reply}");
    assert_eq!(reply["message"], "ok");
    ws
}

pub struct Tcp {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Tcp {
    pub async fn connect(addr: SocketAddr) -> Tcp {
        Tcp {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    pub async fn send_raw(&mut self, payload: &[u8]) {
        let mut frame = BytesMut::new();
        frame.put_u32(payload.len() as u32);
        frame.put_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_raw(value.to_string().as_bytes()).await;
    }

    pub async fn send_proto(&mut self, msg: &IMessageWrap) {
        self.send_raw(&msg.encode_to_vec()).await;
    }

    /// The next frame's payload, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Some(self.buf.split_to(len).to_vec());
                }
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("TCP data within the wait")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let bytes = self.recv().await.expect("a frame, not a close");
        serde_json::from_slice(&bytes).unwrap()
    }

    pub async fn recv_proto(&mut self) -> IMessageWrap {
        let bytes = self.recv().await.expect("a frame, not a close");
        IMessageWrap::decode(bytes.as_slice()).unwrap()
    }

    /// Asserts the server closes the connection (after any frames, which are returned).
    pub async fn closed(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv().await {
            frames.push(frame);
        }
        frames
    }
}

/// A protobuf REGISTER.
pub fn proto_register(token: &str, device: &str) -> IMessageWrap {
    IMessageWrap {
        code: 1,
        token: token.into(),
        device_type: device.into(),
        request_id: "reg-proto".into(),
        ..Default::default()
    }
}

/// Logs a protobuf TCP client in.
pub async fn tcp_login(srv: &TestServer, user: &str, device: &str) -> Tcp {
    let mut tcp = Tcp::connect(srv.tcp).await;
    tcp.send_proto(&proto_register(&srv.token(user), device))
        .await;
    let reply = tcp.recv_proto().await;
    assert_eq!(reply.code, 1, "REGISTER reply: {reply:?}");
    assert_eq!(reply.message, "ok");
    tcp
}

/// The `data` of a protobuf frame, unpacked from JSON text.
pub fn proto_data(msg: &IMessageWrap) -> Value {
    let any = msg.data.as_ref().expect("data present");
    serde_json::from_slice(&any.value).unwrap()
}
