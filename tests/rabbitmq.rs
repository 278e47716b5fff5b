//! The RabbitMQ broker against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).
//!
//! Every test declares its own exchange, queues and broker ids (a random suffix), so the tests
//! run in parallel with each other and with anything else using the server, and deletes them at
//! the end. The fault test works in its own virtual host, so cutting its connections touches
//! nobody else's.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_connect::broker::{Broker, Delivery, RabbitBroker, Relay, RelayConfig};
use im_connect::config::{Codec, RabbitMqConfig, RedisConfig};
use im_connect::protocol::pb::IMessageWrap;
use im_connect::protocol::{DeviceParser, DeviceType, Envelope, Kind, Wire};
use im_connect::route::{MemoryRouteStore, RedisRouteStore, RouteStore};
use im_connect::session::{Binding, Close, Connection, ConnectionInfo, SessionRegistry, Transport};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// Fails the test, saying how to fix it, when RabbitMQ is not listening.
fn require_rabbitmq() {
    let addr = "127.0.0.1:5672".parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "RabbitMQ is not reachable on 127.0.0.1:5672; these tests need it running \
             (start it with `rabbitmq-server -detached`, check with `rabbitmqctl status`)"
        );
    }
}

fn unique(tag: &str) -> String {
    format!("test-{tag}-{:08x}", rand::random::<u32>())
}

/// A configuration whose every name is private to one test.
fn rabbit_config(tag: &str) -> RabbitMqConfig {
    let name = unique(tag);
    RabbitMqConfig {
        exchange: name.clone(),
        routing_key_prefix: format!("{name}.node."),
        error_queue: format!("{name}.error"),
        upstream_prefix: format!("{name}.up."),
        queue_expires_ms: 120_000,
        connection_timeout: 3_000,
        ..RabbitMqConfig::default()
    }
}

/// A gateway node without sockets: registry, delivery and the broker under test.
struct Node {
    sessions: Arc<SessionRegistry>,
    delivery: Arc<Delivery>,
    broker: RabbitBroker,
}

impl Node {
    async fn start(config: &RabbitMqConfig, broker_id: &str) -> Node {
        let sessions = Arc::new(SessionRegistry::new());
        let delivery = Arc::new(Delivery::new(
            sessions.clone(),
            Wire::default(),
            DeviceParser::default(),
            Duration::from_secs(300),
        ));
        let broker =
            RabbitBroker::start(config, broker_id.into(), Wire::default(), delivery.clone())
                .await
                .expect("broker starts");
        assert!(broker.health().is_up(), "{:?}", broker.health());
        Node {
            sessions,
            delivery,
            broker,
        }
    }

    /// A client connection of `user`, bound as `device`, speaking `codec`.
    fn connect(&self, user: &str, device: DeviceType, codec: Codec) -> Arc<Connection> {
        let info = ConnectionInfo {
            transport: Transport::WebSocket,
            peer: "127.0.0.1:1".parse().unwrap(),
            local_port: 19000,
            codec: Some(codec),
            handshake_device: None,
        };
        let conn = Arc::new(Connection::new(info, codec, Wire::default(), 4096));
        let user: Arc<str> = user.into();
        let device_id = format!("dev-{}", conn.id());
        drop(conn.bind(Binding::new(user.clone(), device, device_id, || {})));
        assert!(self
            .sessions
            .bind(&user, device.group(), &conn, false)
            .unwrap()
            .is_empty());
        conn
    }
}

/// Waits for `n` frames in `conn`'s outbox (and returns the close, if one was queued).
async fn frames(conn: &Connection, n: usize) -> (Vec<Bytes>, Option<Close>) {
    let mut got = Vec::new();
    let mut close = None;
    let collect = async {
        while got.len() < n && close.is_none() {
            close = conn.outbox().next_batch(&mut got).await;
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .unwrap_or_else(|_| panic!("{n} frames within {WAIT:?}"));
    (got, close)
}

/// Asserts nothing more arrives in `conn`'s outbox for a while.
async fn quiet(conn: &Connection) {
    let mut got = Vec::new();
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        conn.outbox().next_batch(&mut got),
    )
    .await;
    assert!(waited.is_err(), "unexpected frames: {got:?}");
}

fn json_frame(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a JSON frame")
}

/// A plain AMQP client playing the backend.
struct Amqp {
    conn: lapin::Connection,
    channel: lapin::Channel,
}

impl Amqp {
    async fn connect(vhost: &str) -> Amqp {
        let config = RabbitMqConfig {
            virtual_host: vhost.into(),
            ..RabbitMqConfig::default()
        };
        let conn = lapin::Connection::connect(&config.uri(), Default::default())
            .await
            .expect("test client connects");
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Amqp { conn, channel }
    }

    async fn publish(&self, exchange: &str, key: &str, body: &[u8]) -> lapin::Result<()> {
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        assert!(confirm.is_ack());
        Ok(())
    }

    /// Declares the exchange and a queue bound to it under `key`.
    async fn queue_on(&self, queue: &str, exchange: &str, key: &str) {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let kind = lapin::ExchangeKind::Direct;
        let args = FieldTable::default();
        self.channel
            .exchange_declare(exchange.into(), kind, durable, args.clone())
            .await
            .unwrap();
        self.channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), args.clone())
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .unwrap();
    }

    /// The next message of `queue`, waiting for it.
    async fn get(&self, queue: &str) -> lapin::message::BasicGetMessage {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            if let Some(message) = got {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a message in {queue}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn message_count(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let args = FieldTable::default();
        let declared = self
            .channel
            .queue_declare(queue.into(), passive, args)
            .await;
        declared.unwrap().message_count()
    }

    /// Deletes the queues and the exchange a test made.
    async fn clean(&self, config: &RabbitMqConfig, queues: &[String]) {
        let all = queues.iter().chain(std::iter::once(&config.error_queue));
        for queue in all {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(
                config.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

fn node_queue(config: &RabbitMqConfig, broker_id: &str) -> String {
    format!("{}{broker_id}", config.routing_key_prefix)
}

fn chat(ids: &[&str], request_id: &str, text: &str) -> Value {
    json!({
        "code": 3,
        "requestId": request_id,
        "ids": ids,
        "data": {"text": text},
        "metadata": {"userId": "backend-sender"},
    })
}

#[tokio::test]
async fn upstream_publish_is_confirmed_and_lands_on_the_upstream_key() {
    require_rabbitmq();
    let config = rabbit_config("upstream");
    let node = Node::start(&config, "n1").await;
    let amqp = Amqp::connect("/").await;
    let backend = format!("{}.backend", config.exchange);
    let key = format!("{}single_message", config.upstream_prefix);
    amqp.queue_on(&backend, &config.exchange, &key).await;

    let mut env = Envelope::new(Kind::SingleMessage);
    env.request_id = Some("up-1".into());
    env.ids = vec!["bob".into()];
    env.data = Some(json!({"text": "hello"}));
    env.metadata.insert("userId".into(), "alice".into());
    node.broker
        .publish(Kind::SingleMessage, env.clone())
        .await
        .expect("confirmed");

    // The confirm means it is already in the queue, persistent and as JSON with its ids.
    let message = amqp.get(&backend).await;
    assert_eq!(message.delivery.routing_key.as_str(), key);
    assert_eq!(message.delivery.properties.delivery_mode(), &Some(2));
    let body = json_frame(&message.delivery.data);
    assert_eq!(body["ids"], json!(["bob"]));
    assert_eq!(body["metadata"]["userId"], "alice");
    assert_eq!(
        Wire::default()
            .decode_broker(&message.delivery.data)
            .unwrap(),
        env
    );

    // A kind nobody consumes is refused, never dropped silently.
    let err = node
        .broker
        .publish(Kind::VideoMessage, Envelope::new(Kind::VideoMessage))
        .await
        .expect_err("no queue is bound for video messages");
    assert!(err.to_string().contains("video_message"), "{err}");

    node.broker.shutdown().await;
    amqp.clean(&config, &[node_queue(&config, "n1"), backend])
        .await;
}

#[tokio::test]
async fn publishing_fails_at_once_while_rabbitmq_is_unreachable() {
    // Nothing listens on port 1: start-up must still succeed, and publishes fail fast.
    let config = RabbitMqConfig {
        port: 1,
        connection_timeout: 500,
        ..rabbit_config("down")
    };
    let sessions = Arc::new(SessionRegistry::new());
    let delivery = Arc::new(Delivery::new(
        sessions,
        Wire::default(),
        DeviceParser::default(),
        Duration::from_secs(1),
    ));
    let started = std::time::Instant::now();
    let broker = RabbitBroker::start(&config, "n1".into(), Wire::default(), delivery)
        .await
        .expect("start-up does not need RabbitMQ");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!broker.health().is_up());

    let publish = broker.publish(Kind::SingleMessage, Envelope::new(Kind::SingleMessage));
    let result = tokio::time::timeout(Duration::from_millis(100), publish)
        .await
        .expect("fails at once, not after a timeout");
    let err = result.expect_err("nothing to publish to");
    assert!(err.to_string().contains("unavailable"), "{err}");
    broker.shutdown().await;
}

#[tokio::test]
async fn downstream_reaches_every_device_of_the_user_in_its_codec() {
    require_rabbitmq();
    let config = rabbit_config("devices");
    let node = Node::start(&config, "n1").await;
    let phone = node.connect("u1", DeviceType::Ios, Codec::Proto);
    let web = node.connect("u1", DeviceType::Web, Codec::Json);
    let desk = node.connect("u1", DeviceType::Mac, Codec::Json);
    let other = node.connect("u2", DeviceType::Web, Codec::Json);

    let amqp = Amqp::connect("/").await;
    let body = chat(&["u1"], "d-1", "to all my devices");
    let queue = node_queue(&config, "n1");
    amqp.publish(&config.exchange, &queue, body.to_string().as_bytes())
        .await
        .unwrap();

    for conn in [&web, &desk] {
        let (got, _) = frames(conn, 1).await;
        let frame = json_frame(&got[0]);
        assert_eq!(frame["data"], json!({"text": "to all my devices"}));
        assert_eq!(frame["requestId"], "d-1");
        assert!(frame.get("ids").is_none(), "ids never reach clients");
    }
    let (got, _) = frames(&phone, 1).await;
    let proto = IMessageWrap::decode(got[0].as_ref()).unwrap();
    assert_eq!((proto.code, proto.request_id.as_str()), (3, "d-1"));
    assert!(proto.ids.is_empty());
    quiet(&other).await;

    // Acknowledged once delivered: nothing is left in the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(amqp.message_count(&queue).await, 0);

    node.broker.shutdown().await;
    amqp.clean(&config, &[queue]).await;
}

#[tokio::test]
async fn group_messages_fan_out_to_every_member() {
    require_rabbitmq();
    let config = rabbit_config("group");
    let node = Node::start(&config, "n1").await;
    let members: Vec<String> = (0..200).map(|i| format!("member-{i}")).collect();
    let conns: Vec<_> = members
        .iter()
        .map(|m| node.connect(m, DeviceType::Android, Codec::Json))
        .collect();

    let ids: Vec<&str> = members.iter().map(String::as_str).collect();
    let messages = 5;
    let amqp = Amqp::connect("/").await;
    let queue = node_queue(&config, "n1");
    for i in 0..messages {
        let mut body = chat(&ids, &format!("g-{i}"), "hello group");
        body["code"] = json!(4);
        amqp.publish(&config.exchange, &queue, body.to_string().as_bytes())
            .await
            .unwrap();
    }

    for conn in &conns {
        let (got, _) = frames(conn, messages).await;
        let request_ids: Vec<_> = got
            .iter()
            .map(|f| json_frame(f)["requestId"].clone())
            .collect();
        let expected: Vec<_> = (0..messages).map(|i| json!(format!("g-{i}"))).collect();
        assert_eq!(
            request_ids, expected,
            "each member gets each message once, in order"
        );
    }
    assert_eq!(
        node.delivery.delivered_total(),
        (messages * members.len()) as u64
    );

    node.broker.shutdown().await;
    amqp.clean(&config, &[queue]).await;
}

#[tokio::test]
async fn a_message_seen_again_is_delivered_once() {
    require_rabbitmq();
    let config = rabbit_config("dedup");
    let node = Node::start(&config, "n1").await;
    let conn = node.connect("u1", DeviceType::Web, Codec::Json);
    let amqp = Amqp::connect("/").await;
    let queue = node_queue(&config, "n1");

    let repeated = chat(&["u1"], "same-id", "once");
    let mut anonymous = chat(&["u1"], "", "no id");
    anonymous.as_object_mut().unwrap().remove("requestId");
    for body in [&repeated, &repeated, &anonymous, &anonymous, &repeated] {
        amqp.publish(&config.exchange, &queue, body.to_string().as_bytes())
            .await
            .unwrap();
    }
    // The same request id from another sender is another message.
    let mut other_sender = repeated.clone();
    other_sender["metadata"]["userId"] = json!("someone-else");
    amqp.publish(
        &config.exchange,
        &queue,
        other_sender.to_string().as_bytes(),
    )
    .await
    .unwrap();

    let (got, _) = frames(&conn, 4).await;
    let texts: Vec<_> = got
        .iter()
        .map(|f| json_frame(f)["data"]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [json!("once"), json!("no id"), json!("no id"), json!("once")]
    );
    quiet(&conn).await;
    assert_eq!(node.delivery.duplicates_total(), 2);

    node.broker.shutdown().await;
    amqp.clean(&config, &[queue]).await;
}

#[tokio::test]
async fn an_unparseable_message_goes_to_the_error_queue_with_its_reason() {
    require_rabbitmq();
    let config = rabbit_config("error");
    let node = Node::start(&config, "n1").await;
    let conn = node.connect("u1", DeviceType::Web, Codec::Json);
    let amqp = Amqp::connect("/").await;
    let queue = node_queue(&config, "n1");

    amqp.publish(&config.exchange, &queue, b"this is not json")
        .await
        .unwrap();
    amqp.publish(
        &config.exchange,
        &queue,
        br#"{"code": "three", "ids": ["u1"]}"#,
    )
    .await
    .unwrap();
    let good = chat(&["u1"], "after-bad", "still flowing");
    amqp.publish(&config.exchange, &queue, good.to_string().as_bytes())
        .await
        .unwrap();

    // The consumer is not stuck behind the bad messages.
    let (got, _) = frames(&conn, 1).await;
    assert_eq!(json_frame(&got[0])["requestId"], "after-bad");

    for expected_body in [
        &b"this is not json"[..],
        br#"{"code": "three", "ids": ["u1"]}"#,
    ] {
        let parked = amqp.get(&config.error_queue).await;
        assert_eq!(parked.delivery.data, expected_body);
        let headers = parked
            .delivery
            .properties
            .headers()
            .clone()
            .expect("headers");
        let header = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("header {key}: {other:?}"),
        };
        let reason = header(RabbitBroker::ERROR_REASON_HEADER);
        assert!(reason.starts_with("bad_frame"), "{reason}");
        assert_eq!(header(RabbitBroker::ORIGINAL_ROUTING_KEY_HEADER), queue);
        assert_eq!(
            header(RabbitBroker::ORIGINAL_EXCHANGE_HEADER),
            config.exchange
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        amqp.message_count(&queue).await,
        0,
        "bad messages are acked"
    );
    assert_eq!(amqp.message_count(&config.error_queue).await, 0);

    node.broker.shutdown().await;
    amqp.clean(&config, &[queue]).await;
}

#[tokio::test]
async fn force_logout_from_the_broker_kicks() {
    require_rabbitmq();
    let config = rabbit_config("kick");
    let node = Node::start(&config, "n1").await;
    let phone = node.connect("u1", DeviceType::Android, Codec::Json);
    let web = node.connect("u1", DeviceType::Web, Codec::Json);
    let desk = node.connect("u1", DeviceType::Win, Codec::Json);
    let amqp = Amqp::connect("/").await;
    let queue = node_queue(&config, "n1");

    // The group of `deviceType` only.
    let kick = json!({"code": 6, "ids": ["u1"], "deviceType": "ios", "data": {"reason": "admin"}});
    amqp.publish(&config.exchange, &queue, kick.to_string().as_bytes())
        .await
        .unwrap();
    let (got, close) = frames(&phone, 1).await;
    let frame = json_frame(&got[0]);
    assert_eq!(frame["code"], 6);
    assert_eq!(frame["data"]["reason"], "admin");
    assert_eq!(close.expect("closed after the kick").code, 4001);
    assert_eq!(node.sessions.connections("u1").len(), 2);

    // One named connection only, as a cross-node kick names it.
    let named = desk.device_id().unwrap();
    let kick = json!({"code": 6, "ids": ["u1"], "metadata": {"connectionId": named}});
    node.broker
        .send_to_node(
            "n1",
            Wire::default()
                .decode_broker(kick.to_string().as_bytes())
                .unwrap(),
        )
        .await
        .expect("confirmed");
    let (got, close) = frames(&desk, 1).await;
    assert_eq!(json_frame(&got[0])["data"]["reason"], "backend");
    assert_eq!(close.unwrap().code, 4001);
    quiet(&web).await;
    assert_eq!(node.sessions.connections("u1").len(), 1);

    node.broker.shutdown().await;
    amqp.clean(&config, &[queue]).await;
}

#[tokio::test]
async fn send_to_node_reaches_the_other_node_only() {
    require_rabbitmq();
    let config = rabbit_config("nodes");
    let a = Node::start(&config, "a").await;
    let b = Node::start(&config, "b").await;
    let on_a = a.connect("u1", DeviceType::Web, Codec::Json);
    let on_b = b.connect("u1", DeviceType::Web, Codec::Json);

    let mut kick = Envelope::new(Kind::ForceLogout);
    kick.ids = vec!["u1".into()];
    a.broker
        .send_to_node("b", kick.clone())
        .await
        .expect("confirmed");
    let (_, close) = frames(&on_b, 1).await;
    assert_eq!(close.unwrap().code, 4001);
    quiet(&on_a).await;

    let err = a
        .broker
        .send_to_node("no-such-node", kick)
        .await
        .expect_err("a node without a queue is an error");
    assert!(err.to_string().contains("no-such-node"), "{err}");

    a.broker.shutdown().await;
    b.broker.shutdown().await;
    let amqp = Amqp::connect("/").await;
    amqp.clean(
        &config,
        &[node_queue(&config, "a"), node_queue(&config, "b")],
    )
    .await;
}

#[tokio::test]
async fn the_relay_routes_to_the_nodes_holding_the_targets() {
    require_rabbitmq();
    let config = rabbit_config("relay");
    let a = Node::start(&config, "a").await;
    let b = Node::start(&config, "b").await;
    let routes = Arc::new(MemoryRouteStore::new());
    register(&routes, "alice", DeviceType::Web, "a").await;
    register(&routes, "bob", DeviceType::Ios, "b").await;
    register(&routes, "bob", DeviceType::Web, "a").await;
    let relay_config = RelayConfig {
        queue: format!("{}.relay", config.exchange),
        ..RelayConfig::new(&config)
    };
    let relay = Relay::start(relay_config.clone(), routes).await.unwrap();
    assert!(relay.health().is_up(), "{:?}", relay.health());

    let alice = a.connect("alice", DeviceType::Web, Codec::Json);
    let bob_web = a.connect("bob", DeviceType::Web, Codec::Json);
    let bob_phone = b.connect("bob", DeviceType::Ios, Codec::Json);

    let mut env = Envelope::new(Kind::GroupMessage);
    env.request_id = Some("r-1".into());
    env.ids = vec!["alice".into(), "bob".into(), "offline-carol".into()];
    env.metadata.insert("userId".into(), "dave".into());
    a.broker
        .publish(Kind::GroupMessage, env)
        .await
        .expect("confirmed");

    for conn in [&alice, &bob_web, &bob_phone] {
        let (got, _) = frames(conn, 1).await;
        assert_eq!(json_frame(&got[0])["requestId"], "r-1");
    }
    // Node a got one copy for both of its users, node b one for bob.
    wait_for("the relay to count its copies", || {
        relay.routed_total() == 1
    })
    .await;
    assert_eq!(relay.copies_total(), 2);

    relay.shutdown().await;
    a.broker.shutdown().await;
    b.broker.shutdown().await;
    let amqp = Amqp::connect("/").await;
    let queues = [
        node_queue(&config, "a"),
        node_queue(&config, "b"),
        relay_config.queue,
    ];
    amqp.clean(&config, &queues).await;
}

async fn register(routes: &MemoryRouteStore, user: &str, device: DeviceType, node: &str) {
    let entry = im_connect::route::RouteEntry {
        user_id: user.into(),
        token: "t".into(),
        device_type: device,
        device_id: format!("{user}-{}", device.as_str()),
        broker_id: node.into(),
    };
    routes.register(entry).await.unwrap();
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (it ships with RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes numbered chat messages for `user` to `queue` until `stop`, reconnecting when its
/// connection is cut, and records the request ids RabbitMQ confirmed.
async fn backend_publisher(
    vhost: String,
    exchange: String,
    queue: String,
    confirmed: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let config = RabbitMqConfig {
            virtual_host: vhost.clone(),
            ..RabbitMqConfig::default()
        };
        let Ok(conn) = lapin::Connection::connect(&config.uri(), Default::default()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let amqp = Amqp {
            channel: conn.create_channel().await.unwrap(),
            conn,
        };
        if amqp
            .channel
            .confirm_select(Default::default())
            .await
            .is_err()
        {
            continue;
        }
        while !stop.is_cancelled() {
            let id = format!("m-{n}");
            n += 1;
            let body = chat(&["u1"], &id, "numbered");
            match amqp
                .publish(&exchange, &queue, body.to_string().as_bytes())
                .await
            {
                Ok(()) => confirmed.lock().push(id),
                Err(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_resumes_after_the_connections_are_cut_and_nothing_confirmed_is_lost() {
    require_rabbitmq();
    // `RUST_LOG=im_connect=info` shows the broker losing and regaining its connections.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let vhost = unique("fault");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let config = RabbitMqConfig {
        virtual_host: vhost.clone(),
        ..rabbit_config("fault")
    };
    let node = Arc::new(Node::start(&config, "n1").await);
    let conn = node.connect("u1", DeviceType::Web, Codec::Json);
    let queue = node_queue(&config, "n1");

    // What the client receives, drained as a writer would.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (conn, received) = (conn.clone(), received.clone());
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let close = conn.outbox().next_batch(&mut batch).await;
                let ids = batch
                    .drain(..)
                    .map(|f| json_frame(&f)["requestId"].to_string());
                received.lock().extend(ids);
                if close.is_some() {
                    return;
                }
            }
        })
    };
    // Whether readiness ever reported the outage.
    let saw_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (node, saw_down) = (node.clone(), saw_down.clone());
        tokio::spawn(async move {
            loop {
                if !node.broker.health().is_up() {
                    saw_down.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let backend = tokio::spawn(backend_publisher(
        vhost.clone(),
        config.exchange.clone(),
        queue.clone(),
        confirmed.clone(),
        stop.clone(),
    ));

    wait_for("500 confirmed messages before the cut", || {
        confirmed.lock().len() >= 500
    })
    .await;
    let before_cut = confirmed.lock().len();
    let vh = vhost.clone();
    let cut = tokio::task::spawn_blocking(move || {
        rabbitmqctl(&["close_all_connections", "-p", &vh, "--limit", "100", "test"])
    });
    let output = cut.await.unwrap();
    assert!(output.contains("Closing"), "{output}");

    assert!(
        node.broker.ready(WAIT).await,
        "the broker reconnects: {:?}",
        node.broker.health()
    );
    wait_for("500 more confirmed messages after the cut", || {
        confirmed.lock().len() >= before_cut + 500
    })
    .await;
    stop.cancel();
    backend.await.unwrap();

    let confirmed: Vec<String> = confirmed.lock().clone();
    let expected: HashSet<String> = confirmed.iter().map(|id| format!("\"{id}\"")).collect();
    wait_for("every confirmed message delivered", || {
        let received = received.lock();
        let got: HashSet<&String> = received.iter().collect();
        expected.iter().all(|id| got.contains(id))
    })
    .await;
    let received = received.lock().clone();
    eprintln!(
        "confirmed {} ({before_cut} before the cut), received {}",
        confirmed.len(),
        received.len()
    );
    let unique_received: HashSet<&String> = received.iter().collect();
    assert_eq!(
        unique_received.len(),
        received.len(),
        "no message delivered twice"
    );
    assert!(
        saw_down.load(std::sync::atomic::Ordering::Relaxed),
        "readiness reported the outage"
    );

    // Upstream works again on the new connection.
    let amqp = Amqp::connect(&vhost).await;
    let backend_queue = format!("{}.backend", config.exchange);
    let key = format!("{}single_message", config.upstream_prefix);
    amqp.queue_on(&backend_queue, &config.exchange, &key).await;
    node.broker
        .publish(Kind::SingleMessage, Envelope::new(Kind::SingleMessage))
        .await
        .expect("publishing recovered");

    watcher.abort();
    reader.abort();
    node.broker.shutdown().await;
    let _ = amqp.conn.close(200, "done".into()).await;
    rabbitmqctl(&["delete_vhost", &vhost]);
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A packaged gateway node on free ports, with the RabbitMQ broker and a shared route store.
async fn gateway(
    rabbit: &RabbitMqConfig,
    broker_id: &str,
    routes: Arc<dyn RouteStore>,
) -> common::TestServer {
    let mut config = common::config();
    config.netty.config.broker_id = Some(broker_id.into());
    config.rabbitmq = Some(rabbit.clone());
    let (rabbit, id) = (rabbit.clone(), broker_id.to_string());
    let server = im_connect::server::Server::builder()
        .broker(move |delivery| {
            let wire = *delivery.wire();
            let broker = RabbitBroker::spawn(&rabbit, id, wire, delivery).expect("valid config");
            Arc::new(broker) as Arc<dyn Broker>
        })
        .route_store(routes)
        .start(config.clone())
        .await
        .expect("gateway starts");
    wait_for("the gateway's broker to connect", || {
        server.node().broker.health().is_up()
    })
    .await;
    common::TestServer::serve(server, config).await
}

/// Logs `user` in over WebSocket (JSON) as `device`, the REGISTER carrying `request_id`.
async fn login(srv: &common::TestServer, user: &str, device: &str, request_id: &str) -> common::Ws {
    let url = srv.ws_url(&format!("token={}", srv.token(user)));
    let mut ws = common::ws_connect(&url, Some("json"))
        .await
        .expect("handshake");
    let register = json!({"code": 1, "deviceType": device, "requestId": request_id});
    common::ws_send_json(&mut ws, register).await;
    let reply = common::ws_json(&mut ws).await;
    assert_eq!(reply["message"], "ok", "REGISTER reply: {reply}");
    ws
}

#[tokio::test]
async fn two_gateway_nodes_chat_and_kick_through_rabbitmq_and_the_relay() {
    require_rabbitmq();
    two_nodes_and_the_relay("e2e", Arc::new(MemoryRouteStore::new())).await;
}

#[tokio::test]
async fn two_gateway_nodes_share_routes_in_redis() {
    require_rabbitmq();
    let redis = RedisConfig {
        key_prefix: format!("{}-", unique("e2e")),
        ..RedisConfig::default()
    };
    let store = RedisRouteStore::connect(&redis, 35, None).await.unwrap();
    assert!(
        store.health().is_up(),
        "Redis is not reachable on 127.0.0.1:6379; start it with \
         `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\"`"
    );
    two_nodes_and_the_relay("e2e-redis", Arc::new(store)).await;

    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.key_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Node A and node B share RabbitMQ, `routes` and the reference relay: a user on A writes to
/// a user on B, then a second login on B kicks the same device group on A.
async fn two_nodes_and_the_relay(tag: &str, routes: Arc<dyn RouteStore>) {
    let rabbit = rabbit_config(tag);
    let relay_config = RelayConfig {
        queue: format!("{}.relay", rabbit.exchange),
        ..RelayConfig::new(&rabbit)
    };
    let relay = Relay::start(relay_config.clone(), routes.clone())
        .await
        .unwrap();
    let node_a = gateway(&rabbit, "node-a", routes.clone()).await;
    let node_b = gateway(&rabbit, "node-b", routes.clone()).await;

    let mut alice_a = login(&node_a, "alice", "web", "alice-first").await;
    let mut bob_b = login(&node_b, "bob", "android", "bob-phone").await;

    // A user on node A writes to a user on node B: ACK after the confirm, delivery on B.
    let message =
        json!({"code": 3, "requestId": "e2e-1", "ids": ["bob"], "data": {"text": "hi bob"}});
    common::ws_send_json(&mut alice_a, message).await;
    let ack = common::ws_json(&mut alice_a).await;
    assert_eq!(
        (ack["code"].clone(), ack["requestId"].clone()),
        (json!(0), json!("e2e-1"))
    );
    let got = common::ws_json(&mut bob_b).await;
    assert_eq!(got["code"], 3);
    assert_eq!(got["data"], json!({"text": "hi bob"}));
    assert_eq!(got["metadata"]["userId"], "alice");
    assert_eq!(got["metadata"]["brokerId"], "node-a");
    assert!(got.get("ids").is_none());

    // A second login of alice's web device on node B kicks the one on node A.
    let mut alice_b = login(&node_b, "alice", "web", "alice-second").await;
    let kick = common::ws_json(&mut alice_a).await;
    assert_eq!(kick["code"], 6, "{kick}");
    assert_eq!(kick["data"]["reason"], "same_group_login");
    assert_eq!(common::ws_close(&mut alice_a).await.0, 4001);

    // The route now points at node B, and messages follow it there.
    let record = routes.lookup("alice").await.unwrap().unwrap();
    assert_eq!(record.drivers["WEB"].broker_id, "node-b");
    let reply = json!({"code": 3, "requestId": "e2e-2", "ids": ["alice"], "data": "back"});
    common::ws_send_json(&mut bob_b, reply).await;
    assert_eq!(common::ws_json(&mut bob_b).await["code"], 0);
    let got = common::ws_json(&mut alice_b).await;
    assert_eq!(
        (got["requestId"].clone(), got["data"].clone()),
        (json!("e2e-2"), json!("back"))
    );

    node_a.server.shutdown_with(Duration::from_secs(1)).await;
    node_b.server.shutdown_with(Duration::from_secs(1)).await;
    relay.shutdown().await;
    let amqp = Amqp::connect("/").await;
    let queues = [
        node_queue(&rabbit, "node-a"),
        node_queue(&rabbit, "node-b"),
        relay_config.queue,
    ];
    amqp.clean(&rabbit, &queues).await;
}

#[tokio::test]
async fn clients_get_broker_unavailable_while_rabbitmq_is_down() {
    // Nothing listens on port 1: the node serves logins, and business messages get ERRORs.
    let rabbit = RabbitMqConfig {
        port: 1,
        connection_timeout: 500,
        ..rabbit_config("down-e2e")
    };
    let mut config = common::config();
    config.netty.config.broker_id = Some("node-down".into());
    config.rabbitmq = Some(rabbit.clone());
    let server = im_connect::server::Server::builder()
        .broker(move |delivery| {
            let wire = *delivery.wire();
            let broker = RabbitBroker::spawn(&rabbit, "node-down".into(), wire, delivery);
            Arc::new(broker.expect("valid config")) as Arc<dyn Broker>
        })
        .start(config.clone())
        .await
        .expect("a node starts without its broker");
    assert!(!server.node().broker.health().is_up());
    let srv = common::TestServer::serve(server, config).await;

    let mut alice = login(&srv, "alice", "web", "alice-web").await;
    let started = std::time::Instant::now();
    let message = json!({"code": 3, "requestId": "lost?", "ids": ["bob"], "data": "hi"});
    common::ws_send_json(&mut alice, message).await;
    let reply = common::ws_json(&mut alice).await;
    assert_eq!(reply["code"], -1, "{reply}");
    assert_eq!(reply["requestId"], "lost?");
    assert_eq!(reply["metadata"]["reason"], "broker_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    srv.server.shutdown_with(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_server_configured_with_rabbitmq_publishes_and_consumes_through_it() {
    require_rabbitmq();
    let rabbit = rabbit_config("configured");
    let amqp = Amqp::connect("/").await;
    let backend = format!("{}.backend", rabbit.exchange);
    let key = format!("{}single_message", rabbit.upstream_prefix);
    amqp.queue_on(&backend, &rabbit.exchange, &key).await;

    // No builder overrides: the `rabbitmq` section alone selects the RabbitMQ broker.
    let mut config = common::config();
    config.netty.config.broker_id = Some("node-configured".into());
    config.rabbitmq = Some(rabbit.clone());
    let srv = common::TestServer::with(config).await;
    wait_for("the configured broker to connect", || {
        srv.server.node().broker.health().is_up()
    })
    .await;

    let mut alice = login(&srv, "alice", "web", "alice-web").await;
    let message = json!({"code": 3, "requestId": "cfg-1", "ids": ["bob"], "data": "up"});
    common::ws_send_json(&mut alice, message).await;
    let ack = common::ws_json(&mut alice).await;
    assert_eq!(
        (ack["code"].clone(), ack["requestId"].clone()),
        (json!(0), json!("cfg-1"))
    );
    let upstream = json_frame(&amqp.get(&backend).await.delivery.data);
    assert_eq!(upstream["metadata"]["userId"], "alice");
    assert_eq!(upstream["metadata"]["brokerId"], "node-configured");

    // What a backend publishes to this node's queue reaches the user, without `ids`.
    let queue = node_queue(&rabbit, "node-configured");
    let down = chat(&["alice"], "cfg-2", "down");
    amqp.publish(&rabbit.exchange, &queue, down.to_string().as_bytes())
        .await
        .unwrap();
    let got = common::ws_json(&mut alice).await;
    assert_eq!(
        (got["requestId"].clone(), got["data"].clone()),
        (json!("cfg-2"), json!({"text": "down"}))
    );
    assert!(got.get("ids").is_none());

    srv.server.shutdown_with(Duration::from_secs(1)).await;
    assert!(
        !srv.server.node().broker.health().is_up(),
        "shutdown closes the broker"
    );
    amqp.clean(&rabbit, &[queue, backend]).await;
}
