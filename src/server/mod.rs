//! The packaged server: builds the node's parts from configuration, binds the listeners and
//! shuts down gracefully.
//!
//! ```no_run
//! # async fn run() -> Result<(), im_connect::BoxError> {
//! let config = im_connect::config::Config::load(None)?.config;
//! let server = im_connect::server::Server::start(config).await?;
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod stack;

pub use stack::{default_stack, verifier_from_config};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::BoxError;
use crate::broker::{broker_id_from, Broker, Delivery};
use crate::config::Config;
use crate::layer::{AuthLayer, TokenVerifier};
use crate::protocol::{CodeTable, DeviceParser, Wire};
use crate::registry::{Instance, Registry};
use crate::route::RouteStore;
use crate::session::{SessionRegistry, Transport};
use crate::transport::{self, PortGauge, StackFactory, TransportSettings};

/// The parts of a running node that layers, backends and operators share.
#[derive(Debug)]
pub struct Node {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// This node's id in routes and broker queues.
    pub broker_id: Arc<str>,
    /// Bound connections by user.
    pub sessions: Arc<SessionRegistry>,
    /// Downstream delivery to local connections.
    pub delivery: Arc<Delivery>,
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// The route store.
    pub routes: Arc<dyn RouteStore>,
    /// Service discovery.
    pub registry: Arc<dyn Registry>,
}

/// One bound port.
#[derive(Debug)]
struct Listener {
    transport: Transport,
    addr: SocketAddr,
    gauge: Arc<PortGauge>,
    stop: CancellationToken,
}

/// A bound port as reported to operators and discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// WebSocket or TCP.
    pub transport: Transport,
    /// The bound address.
    pub addr: SocketAddr,
    /// Live connections on it.
    pub connections: usize,
}

/// Builds a broker around the node's delivery (the broker feeds downstream messages to it).
type BrokerFactory = Box<dyn FnOnce(Arc<Delivery>) -> Arc<dyn Broker> + Send>;

/// Replaces the parts a configuration would choose, for library users and tests.
#[derive(Default)]
pub struct ServerBuilder {
    broker: Option<BrokerFactory>,
    routes: Option<Arc<dyn RouteStore>>,
    registry: Option<Arc<dyn Registry>>,
    verifier: Option<Arc<dyn TokenVerifier>>,
    sessions: Option<Arc<SessionRegistry>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder").finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Uses the broker `make` builds from the node's delivery.
    pub fn broker(
        mut self,
        make: impl FnOnce(Arc<Delivery>) -> Arc<dyn Broker> + Send + 'static,
    ) -> Self {
        self.broker = Some(Box::new(make));
        self
    }

    /// Uses this route store.
    pub fn route_store(mut self, routes: Arc<dyn RouteStore>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Uses this registry.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Verifies tokens with this verifier instead of the configured JWT key.
    pub fn verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Shares an existing session registry (for a route store that refreshes from it).
    pub fn sessions(mut self, sessions: Arc<SessionRegistry>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Builds the node and binds every configured port.
    pub async fn start(self, config: Config) -> Result<Server, BoxError> {
        let config = Arc::new(config);
        let netty = &config.netty.config;
        let wire = Wire {
            table: CodeTable::new(netty.code_table),
            proto_data: netty.proto_data,
        };
        let devices = DeviceParser::new(&netty.device_aliases);
        let first_ws = netty.websocket.port.first().copied().unwrap_or(0);
        let broker_id: Arc<str> = broker_id_from(netty.broker_id.as_deref(), first_ws).into();
        let sessions = self.sessions.unwrap_or_default();
        let delivery = Arc::new(Delivery::new(
            sessions.clone(),
            wire,
            devices.clone(),
            Duration::from_millis(netty.dedup_window_ms),
        ));
        let broker = match self.broker {
            Some(make) => make(delivery.clone()),
            None => stack::broker_from_config(&config, &broker_id, wire, &delivery).await?,
        };
        let routes = match self.routes {
            Some(routes) => routes,
            None => stack::routes_from_config(&config, &sessions, &broker_id).await?,
        };
        let registry = self
            .registry
            .unwrap_or_else(|| stack::registry_from_config(&config, &broker_id));
        let verifier = match self.verifier {
            Some(v) => v,
            None => verifier_from_config(&config, &routes)?,
        };
        let node = Arc::new(Node {
            config: config.clone(),
            broker_id,
            sessions,
            delivery,
            broker,
            routes,
            registry,
        });
        let settings = Arc::new(stack::transport_settings(&config, wire));
        let stack = default_stack(&node, verifier.clone());
        let server = Server {
            node,
            settings,
            stack,
            auth: AuthLayer::from_arc(Arc::new(verifier)),
            listeners: Arc::default(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            ports_changed: Arc::new(Notify::new()),
            follower: Mutex::default(),
        };
        let host = netty.host.clone();
        if netty.websocket.enable {
            for port in &netty.websocket.port {
                server.bind(Transport::WebSocket, &host, *port).await?;
            }
        }
        if netty.tcp.enable {
            for port in &netty.tcp.port {
                server.bind(Transport::Tcp, &host, *port).await?;
            }
        }
        server.publish_instances().await;
        let follower = tokio::spawn(follow_ports(
            Arc::downgrade(&server.listeners),
            server.node.registry.clone(),
            server.ports_changed.clone(),
            stack::registry_refresh(&config),
            server.shutdown.clone(),
        ));
        *server.follower.lock() = Some(follower);
        Ok(server)
    }
}

/// A running gateway node.
pub struct Server {
    node: Arc<Node>,
    settings: Arc<TransportSettings>,
    stack: StackFactory,
    auth: AuthLayer<Arc<dyn TokenVerifier>>,
    listeners: Arc<Listeners>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Wakes the task that keeps discovery in step with the bound ports.
    ports_changed: Arc<Notify>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

type Listeners = Mutex<BTreeMap<SocketAddr, Listener>>;

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node", &self.node)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds everything from `config` and binds its ports.
    pub async fn start(config: Config) -> Result<Server, BoxError> {
        ServerBuilder::default().start(config).await
    }

    /// A builder to replace configured parts.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The node's shared parts.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Binds `host:port` (port 0: any free port) for `transport` and starts accepting.
    pub async fn bind(
        &self,
        transport: Transport,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, BoxError> {
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|e| format!("cannot bind {} port {host}:{port}: {e}", transport.as_str()))?;
        let addr = listener.local_addr()?;
        let gauge = Arc::new(PortGauge::default());
        let stop = self.shutdown.child_token();
        match transport {
            Transport::Tcp => {
                let task = transport::tcp::serve(
                    listener,
                    self.stack.clone(),
                    self.settings.clone(),
                    gauge.clone(),
                    self.tracker.clone(),
                    stop.clone(),
                );
                self.tracker.spawn(task);
            }
            Transport::WebSocket => {
                let ctx = Arc::new(transport::ws::WsContext {
                    stack: self.stack.clone(),
                    settings: self.settings.clone(),
                    auth: self.auth.clone(),
                    gauge: gauge.clone(),
                    tracker: self.tracker.clone(),
                    shutdown: stop.clone(),
                });
                self.tracker.spawn(transport::ws::serve(listener, ctx));
            }
        }
        tracing::info!(transport = transport.as_str(), %addr, "listening");
        let listener = Listener {
            transport,
            addr,
            gauge,
            stop,
        };
        self.listeners.lock().insert(addr, listener);
        self.ports_changed.notify_one();
        Ok(addr)
    }

    /// Stops accepting on `port` and closes its connections with 1001. False when nothing is
    /// bound there.
    pub fn close_port(&self, port: u16) -> bool {
        let mut listeners = self.listeners.lock();
        let addrs: Vec<_> = listeners
            .keys()
            .filter(|a| a.port() == port)
            .copied()
            .collect();
        for addr in &addrs {
            if let Some(listener) = listeners.remove(addr) {
                listener.stop.cancel();
                tracing::info!(%addr, "port closed");
            }
        }
        if !addrs.is_empty() {
            self.ports_changed.notify_one();
        }
        !addrs.is_empty()
    }

    /// The bound ports.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.listeners
            .lock()
            .values()
            .map(|l| PortInfo {
                transport: l.transport,
                addr: l.addr,
                connections: l.gauge.get(),
            })
            .collect()
    }

    /// The first bound address of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.ports()
            .into_iter()
            .find(|p| p.transport == transport)
            .map(|p| p.addr)
    }

    async fn publish_instances(&self) {
        let instances = instances(&self.listeners);
        if let Err(error) = self.node.registry.publish(instances).await {
            tracing::warn!(%error, "registration failed");
        }
    }

    /// Graceful shutdown: leave discovery, stop accepting, send Close 1001 to every
    /// connection, and wait (at most `grace`) for them to finish.
    pub async fn shutdown_with(&self, grace: Duration) {
        tracing::info!("shutting down");
        // Nothing may publish once deregistration has begun.
        let follower = self.follower.lock().take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        if let Err(error) = self.node.registry.deregister().await {
            tracing::warn!(%error, "deregistration failed");
        }
        self.listeners.lock().clear();
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        self.node.broker.close().await;
    }

    /// [`Server::shutdown_with`] a 10 second grace period.
    pub async fn shutdown(&self) {
        self.shutdown_with(Duration::from_secs(10)).await;
    }
}

/// The bound ports as discovery announces them.
fn instances(listeners: &Listeners) -> Vec<Instance> {
    listeners
        .lock()
        .values()
        .map(|l| Instance {
            transport: l.transport,
            port: l.addr.port(),
            connections: l.gauge.get(),
        })
        .collect()
}

/// Keeps discovery in step with the listeners: publishes at once when a port is bound or
/// closed, and every `period` when the connection counts changed. Ends at shutdown, or when
/// the server is dropped.
async fn follow_ports(
    listeners: Weak<Listeners>,
    registry: Arc<dyn Registry>,
    ports_changed: Arc<Notify>,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            () = ports_changed.notified() => true,
            _ = tick.tick() => false,
        };
        let Some(listeners) = listeners.upgrade() else {
            return;
        };
        let current = instances(&listeners);
        drop(listeners);
        if !forced && last.as_ref() == Some(&current) {
            continue;
        }
        if let Err(error) = registry.publish(current.clone()).await {
            tracing::warn!(%error, "registration update failed");
        }
        last = Some(current);
    }
}
