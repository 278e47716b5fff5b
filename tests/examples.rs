//! The examples, exercised over real sockets: each test compiles the example's own module in
//! and runs the same code its `main` does.

mod common;

#[path = "../examples/chat_client.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat_client;
#[path = "../examples/custom_stack.rs"]
#[allow(dead_code, unreachable_pub)]
mod custom_stack;
#[path = "../examples/http_auth.rs"]
#[allow(dead_code, unreachable_pub)]
mod http_auth;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use common::*;
use im_connect::layer::JwtVerifier;
use im_connect::server::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A test server whose connections run the custom stack, refusing "spam".
async fn filtered_server() -> TestServer {
    let config = config();
    let filter = custom_stack::ContentFilterLayer::new(["spam"]);
    let server = Server::builder()
        .stack(move |node, verifier| custom_stack::filtered_stack(node, verifier, filter))
        .start(config.clone())
        .await
        .expect("server starts");
    TestServer::serve(server, config).await
}

#[tokio::test]
async fn custom_stack_filter_refuses_banned_words_and_passes_the_rest() {
    let srv = filtered_server().await;
    let mut alice = ws_login(&srv, "alice", "web").await;
    let mut bob = ws_login(&srv, "bob", "android").await;

    ws_send_json(
        &mut alice,
        json!({"code": 3, "requestId": "bad", "ids": ["bob"],
               "data": {"text": "cheap SPAM here", "extra": [1, 2]}}),
    )
    .await;
    let refused = ws_json(&mut alice).await;
    assert_eq!(refused["code"], -1, "{refused}");
    assert_eq!(refused["requestId"], "bad");
    assert_eq!(refused["metadata"]["reason"], custom_stack::CONTENT_REFUSED);
    assert!(
        refused["message"].as_str().unwrap().contains("spam"),
        "{refused}"
    );

    ws_send_json(
        &mut alice,
        json!({"code": 3, "requestId": "good", "ids": ["bob"], "data": {"text": "hello bob"}}),
    )
    .await;
    let ack = ws_json(&mut alice).await;
    assert_eq!(
        (ack["code"].as_i64(), ack["requestId"].as_str()),
        (Some(0), Some("good"))
    );
    // The refused message never went out: the first thing bob gets is the good one.
    let got = ws_json(&mut bob).await;
    assert_eq!(got["data"], json!({"text": "hello bob"}), "{got}");
    assert_eq!(got["metadata"]["userId"], "alice");

    // The rest of the stack is the packaged one: heartbeats pass the filter untouched.
    ws_send_json(&mut bob, json!({"code": 2, "requestId": "hb"})).await;
    let beat = ws_json(&mut bob).await;
    assert_eq!(
        (beat["code"].as_i64(), beat["requestId"].as_str()),
        (Some(2), Some("hb"))
    );
}

/// Sends one HTTP/1.1 GET with `headers` and returns the status code and body.
async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("an HTTP response within the wait")
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http_auth_answers_401_200_and_429() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = JwtVerifier::hs256(SECRET.as_bytes(), "username", 30).unwrap();
    // A burst of three and a refill so slow that none comes back during the test.
    let server = tokio::spawn(http_auth::serve(listener, verifier, 1.0 / 3600.0, 3));
    let token = token_for(&config(), "alice", 3600);

    let (status, body) = http_get(addr, "/", &[]).await;
    assert_eq!(status, 401, "{body}");
    let bearer = [("Authorization", format!("Bearer {token}"))];
    let (status, body) = http_get(addr, "/", &bearer).await;
    assert_eq!((status, body.as_str()), (200, "hello, alice\n"));
    let (status, body) = http_get(addr, &format!("/?token={token}"), &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello, alice\n"));
    // The limit is the server's, across connections, and holds for good tokens too.
    let (status, body) = http_get(addr, "/", &bearer).await;
    assert_eq!(status, 429, "{body}");
    server.abort();
}

/// A chat client driven like the binary, its input fed by the test and its output collected.
struct Client {
    input: Option<tokio::io::DuplexStream>,
    output: mpsc::UnboundedReceiver<String>,
    done: tokio::task::JoinHandle<Result<chat_client::Ending, im_connect::BoxError>>,
}

impl Client {
    fn start(argv: &[&str]) -> Client {
        let args = chat_client::Args::try_parse_from(argv).expect("arguments parse");
        let (input, read) = tokio::io::duplex(4096);
        let (tx, output) = mpsc::unbounded_channel();
        let done = tokio::spawn(async move {
            let read = tokio::io::BufReader::new(read);
            chat_client::run(&args, read, move |line| drop(tx.send(line))).await
        });
        Client {
            input: Some(input),
            output,
            done,
        }
    }

    async fn type_line(&mut self, line: &str) {
        let input = self.input.as_mut().expect("input open");
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// The next printed line that satisfies `pred`, skipping others.
    async fn expect(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.output.recv())
                .await
                .expect("client output within the wait")
                .expect("client still running");
            if pred(&line) {
                return line;
            }
        }
    }

    async fn ending(self) -> chat_client::Ending {
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("client ends within the wait")
            .unwrap()
            .expect("client ends without error")
    }
}

#[tokio::test]
async fn chat_clients_talk_over_tcp_and_websocket() {
    let srv = filtered_server().await;
    let url = format!("ws://{}/im", srv.ws);
    let tcp = srv.tcp.to_string();
    let (alice_token, bob_token) = (srv.token("alice"), srv.token("bob"));
    let mut bob = Client::start(&[
        "chat_client",
        "--url",
        &url,
        "--token",
        &bob_token,
        "--device",
        "web",
    ]);
    let mut alice = Client::start(&["chat_client", "--tcp", &tcp, "--token", &alice_token]);
    bob.expect(|l| l.starts_with("logged in (web")).await;
    alice.expect(|l| l.starts_with("logged in (linux")).await;

    alice.type_line("not a command").await;
    alice.expect(|l| l.starts_with("usage:")).await;
    alice.type_line("@bob hello from alice").await;
    alice.expect(|l| l.starts_with("ack single_message-")).await;
    let got = bob.expect(|_| true).await;
    assert_eq!(got, "alice: hello from alice");
    bob.type_line("@alice buy spam").await;
    let error = bob.expect(|_| true).await;
    assert!(error.starts_with("error content_refused:"), "{error}");
    bob.type_line("@alice,carol hi both").await;
    bob.expect(|l| l.starts_with("ack single_message-")).await;
    assert_eq!(alice.expect(|_| true).await, "bob: hi both");

    // End of input: alice logs out and the server closes her TCP connection.
    alice.input = None;
    assert!(
        matches!(alice.ending().await, chat_client::Ending::Closed(None, _)),
        "alice sees the close"
    );
    // Shutdown: bob is told why, with the WebSocket close code.
    srv.server.shutdown_with(Duration::from_secs(2)).await;
    assert_eq!(
        bob.ending().await,
        chat_client::Ending::Closed(Some(1001), "server shutting down".into())
    );
}

#[test]
fn chat_client_needs_exactly_one_server() {
    use chat_client::Args;
    assert!(Args::try_parse_from(["c", "--token", "t"]).is_err());
    assert!(
        Args::try_parse_from(["c", "--url", "ws://h/im", "--tcp", "h:1", "--token", "t"]).is_err()
    );
    let args = Args::try_parse_from(["c", "--tcp", "h:1", "--token", "t"]).unwrap();
    assert_eq!((args.heartbeat, args.codes), (20, chat_client::Codes::Seed));
}

#[tokio::test]
async fn chat_client_heartbeats_keep_it_past_the_idle_timeout() {
    let mut config = config();
    config.netty.config.heart_beat_time = 1_500;
    let srv = TestServer::with(config).await;
    let url = format!("ws://{}/im", srv.ws);
    let token = srv.token("carol");
    let mut carol = Client::start(&[
        "chat_client",
        "--url",
        &url,
        "--token",
        &token,
        "--heartbeat",
        "1",
    ]);
    carol.expect(|l| l.starts_with("logged in")).await;

    // Silent but for its heartbeats, for more than twice the idle timeout.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut dave = ws_login(&srv, "dave", "web").await;
    ws_send_json(
        &mut dave,
        json!({"code": 3, "ids": ["carol"], "data": {"text": "still there?"}}),
    )
    .await;
    assert_eq!(ws_json(&mut dave).await["code"], 0);
    assert_eq!(carol.expect(|_| true).await, "dave: still there?");
}
