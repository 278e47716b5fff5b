//! Downstream delivery throughput through RabbitMQ: how fast a node drains its queue into
//! its connections' outboxes.
//!
//! For each scenario the node queue is filled first (the broker is started once to declare
//! it, stopped, and the messages are published with confirms), then the broker is started
//! again and the clock runs from the first delivery until every copy has been drained by the
//! connections' writer tasks. So the figures are the consumer side alone: AMQP receive, JSON
//! decode, de-duplication, encoding once per codec, queueing, acks, and one drain per
//! connection (no sockets). Half of the connections speak JSON, half protobuf.
//!
//! ```sh
//! cargo run --release --example broker_bench -- --messages 100000 --group-messages 20000
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use im_connect::broker::{Delivery, RabbitBroker};
use im_connect::config::{Codec, RabbitMqConfig};
use im_connect::protocol::{DeviceParser, DeviceType, Wire};
use im_connect::session::{Binding, Connection, ConnectionInfo, SessionRegistry, Transport};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::BasicProperties;
use serde_json::json;

/// Command line of the benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Messages of the 1:1 scenario.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Users (one connection each) of the 1:1 scenario.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Messages of the group scenario, each to `group_size` users.
    #[arg(long, default_value_t = 20_000)]
    group_messages: usize,
    /// Members of each group.
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Users (one connection each) of the group scenario, split into groups.
    #[arg(long, default_value_t = 1_000)]
    group_users: usize,
    /// `rabbitmq.prefetch` of the consumer.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
}

/// One scenario: `messages` messages, message `i` addressed to `targets(i)`.
struct Scenario<'a> {
    name: &'a str,
    users: usize,
    messages: usize,
    targets: &'a dyn Fn(usize) -> Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), im_connect::BoxError> {
    let args = Args::parse();
    let user = |i: usize| format!("user-{i}");

    let single = |i: usize| vec![user(i % args.users)];
    run(
        &args,
        Scenario {
            name: "1:1",
            users: args.users,
            messages: args.messages,
            targets: &single,
        },
    )
    .await?;

    let groups = (args.group_users / args.group_size).max(1);
    let group = |i: usize| {
        let first = (i % groups) * args.group_size;
        (first..first + args.group_size)
            .map(|u| user(u % args.group_users))
            .collect()
    };
    run(
        &args,
        Scenario {
            name: "groups",
            users: args.group_users,
            messages: args.group_messages,
            targets: &group,
        },
    )
    .await?;
    Ok(())
}

async fn run(args: &Args, scenario: Scenario<'_>) -> Result<(), im_connect::BoxError> {
    let name = format!("bench-{:08x}", rand::random::<u32>());
    let config = RabbitMqConfig {
        exchange: name.clone(),
        routing_key_prefix: format!("{name}."),
        error_queue: format!("{name}.error"),
        prefetch: args.prefetch,
        ..RabbitMqConfig::default()
    };
    let sessions = Arc::new(SessionRegistry::new());
    let delivery = Arc::new(Delivery::new(
        sessions.clone(),
        Wire::default(),
        DeviceParser::default(),
        Duration::from_secs(300),
    ));
    let written = Arc::new(AtomicU64::new(0));
    for i in 0..scenario.users {
        connect(&sessions, &format!("user-{i}"), i, written.clone());
    }

    // Declare the queue with the broker's own arguments, then fill it while nobody consumes.
    let broker = start(&config, &delivery).await?;
    let queue = broker.queue().to_string();
    broker.shutdown().await;
    let expected = fill(&config, &queue, &scenario).await?;

    let broker = start(&config, &delivery).await?;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while written.load(Ordering::Relaxed) < expected as u64 && Instant::now() < deadline {
        if first.is_none() && delivery.delivered_total() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed()).as_secs_f64();
    let delivered = written.load(Ordering::Relaxed);

    println!(
        "{:>6}: {} messages to {} users, {} deliveries in {:.2} s: \
         {:.0} messages/s consumed, {:.0} deliveries/s written (prefetch {})",
        scenario.name,
        scenario.messages,
        scenario.users,
        delivered,
        elapsed,
        scenario.messages as f64 / elapsed,
        delivered as f64 / elapsed,
        args.prefetch,
    );
    if delivered < expected as u64 {
        println!("        incomplete: {delivered} of {expected} deliveries");
    }

    broker.shutdown().await;
    cleanup(&config, &queue).await;
    Ok(())
}

async fn start(
    config: &RabbitMqConfig,
    delivery: &Arc<Delivery>,
) -> Result<RabbitBroker, im_connect::BoxError> {
    let broker =
        RabbitBroker::start(config, "node".into(), Wire::default(), delivery.clone()).await?;
    if !broker.ready(Duration::from_secs(5)).await {
        return Err(
            "RabbitMQ is not reachable on 127.0.0.1:5672 (rabbitmq-server -detached)".into(),
        );
    }
    Ok(broker)
}

/// A connection of `user`, alternately JSON and protobuf, whose writer task counts frames.
fn connect(sessions: &SessionRegistry, user: &str, i: usize, written: Arc<AtomicU64>) {
    let codec = if i % 2 == 0 {
        Codec::Json
    } else {
        Codec::Proto
    };
    let info = ConnectionInfo {
        transport: Transport::WebSocket,
        peer: "127.0.0.1:1".parse().expect("an address"),
        local_port: 19000,
        codec: Some(codec),
        handshake_device: None,
    };
    let conn = Arc::new(Connection::new(info, codec, Wire::default(), 1 << 16));
    let user: Arc<str> = user.into();
    drop(conn.bind(Binding::new(
        user.clone(),
        DeviceType::Android,
        format!("dev-{i}"),
        || {},
    )));
    sessions
        .bind(&user, DeviceType::Android.group(), &conn, false)
        .expect("a fresh connection is never displaced");

    tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            let close = conn.outbox().next_batch(&mut batch).await;
            written.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            if close.is_some() {
                return;
            }
        }
    });
}

/// Publishes the scenario's messages to `queue` with confirms; returns the deliveries due.
async fn fill(
    config: &RabbitMqConfig,
    queue: &str,
    scenario: &Scenario<'_>,
) -> Result<usize, im_connect::BoxError> {
    let conn = lapin::Connection::connect(&config.uri(), Default::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut deliveries = 0;
    for i in 0..scenario.messages {
        let ids = (scenario.targets)(i);
        deliveries += ids.len();
        let body = json!({
            "code": 3,
            "requestId": format!("bench-{i}"),
            "ids": ids,
            "timestamp": 1_700_000_000_000i64,
            "data": {"text": "hello, this is a benchmark message of ordinary length", "seq": i},
            "metadata": {"userId": "sender", "deviceType": "web", "platform": "WEB"},
        });
        let props = BasicProperties::default().with_delivery_mode(2);
        let options = BasicPublishOptions::default();
        let body = body.to_string();
        // Confirms are collected at the end: dropping the future registers it for that.
        drop(
            channel
                .basic_publish(
                    config.exchange.as_str().into(),
                    queue.into(),
                    options,
                    body.as_bytes(),
                    props,
                )
                .await?,
        );
    }
    channel.wait_for_confirms().await?;
    println!(
        "{:>6}: queued {} messages in {:.2} s",
        scenario.name,
        scenario.messages,
        started.elapsed().as_secs_f64()
    );
    let _ = conn.close(200, "filled".into()).await;
    Ok(deliveries)
}

async fn cleanup(config: &RabbitMqConfig, queue: &str) {
    let Ok(conn) = lapin::Connection::connect(&config.uri(), Default::default()).await else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for q in [queue, config.error_queue.as_str()] {
            let _ = channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let exchange = config.exchange.as_str().into();
        let _ = channel
            .exchange_delete(exchange, ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}
