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

mod listen;
mod stack;

pub use stack::{default_stack, verifier_from_config, StandardLayers};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Metrics, Readiness};
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
    /// This node's metrics, rendered by the admin endpoint's `/metrics`.
    pub metrics: Arc<Metrics>,
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

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {} port {host}:{port}: {source}", transport.as_str())]
pub struct BindError {
    /// The transport it was for.
    pub transport: Transport,
    /// The host asked for.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// Why it failed (`AddrInUse` when another socket holds it).
    #[source]
    pub source: std::io::Error,
}

/// Builds a broker around the node's delivery (the broker feeds downstream messages to it).
type BrokerFactory = Box<dyn FnOnce(Arc<Delivery>) -> Arc<dyn Broker> + Send>;

/// Builds the per-connection stack factory from the node and the token verifier.
type StackBuilder = Box<dyn FnOnce(&Arc<Node>, Arc<dyn TokenVerifier>) -> StackFactory + Send>;

/// Replaces the parts a configuration would choose, for library users and tests.
#[derive(Default)]
pub struct ServerBuilder {
    broker: Option<BrokerFactory>,
    routes: Option<Arc<dyn RouteStore>>,
    registry: Option<Arc<dyn Registry>>,
    verifier: Option<Arc<dyn TokenVerifier>>,
    sessions: Option<Arc<SessionRegistry>>,
    stack: Option<StackBuilder>,
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

    /// Serves connections with the stack `make` builds instead of [`default_stack`].
    ///
    /// `make` runs once, after the node's parts exist, with the node (sessions, routes, broker
    /// and configuration, which [`DeviceBindings`](crate::layer::DeviceBindings) and
    /// [`Dispatch`](crate::dispatch::Dispatch) need) and the token verifier. The factory it
    /// returns is called once per connection. The WebSocket handshake still checks the token
    /// with the same verifier before any stack sees a frame.
    pub fn stack(
        mut self,
        make: impl FnOnce(&Arc<Node>, Arc<dyn TokenVerifier>) -> StackFactory + Send + 'static,
    ) -> Self {
        self.stack = Some(Box::new(make));
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
        let metrics = Arc::new(Metrics::new());
        let delivery = Delivery::new(
            sessions.clone(),
            wire,
            devices.clone(),
            Duration::from_millis(netty.dedup_window_ms),
        );
        let delivery = Arc::new(delivery.with_metrics(metrics.clone()));
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
            metrics: metrics.clone(),
        });
        let settings = Arc::new(stack::transport_settings(&config, wire, metrics));
        let stack = match self.stack {
            Some(make) => make(&node, verifier.clone()),
            None => default_stack(&node, verifier.clone()),
        };
        let server = Server {
            inner: Arc::new(Inner {
                node,
                settings,
                stack,
                auth: AuthLayer::from_arc(Arc::new(verifier)),
                listeners: Arc::default(),
                admin: Mutex::default(),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                ports_changed: Arc::new(Notify::new()),
                follower: Mutex::default(),
            }),
        };
        let admin = crate::admin::bind(&config.admin).await?;
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
        crate::admin::spawn_upkeep(&server);
        if let Some(listener) = admin {
            let addr = crate::admin::serve(listener, &server)?;
            *server.inner.admin.lock() = Some(addr);
        }
        server.publish_instances().await;
        let follower = tokio::spawn(follow_ports(
            Arc::downgrade(&server.inner.listeners),
            server.inner.node.registry.clone(),
            server.inner.ports_changed.clone(),
            stack::registry_refresh(&config),
            server.inner.shutdown.clone(),
        ));
        *server.inner.follower.lock() = Some(follower);
        Ok(server)
    }
}

/// A running gateway node.
///
/// A cheap handle: clones share the node, its listeners and its shutdown.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<Node>,
    settings: Arc<TransportSettings>,
    stack: StackFactory,
    auth: AuthLayer<Arc<dyn TokenVerifier>>,
    listeners: Arc<Listeners>,
    admin: Mutex<Option<SocketAddr>>,
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
            .field("node", &self.inner.node)
            .field("listeners", &self.inner.listeners)
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
        &self.inner.node
    }

    /// Binds `host:port` (port 0: any free port) for `transport` and starts accepting.
    pub async fn bind(
        &self,
        transport: Transport,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, BoxError> {
        let listener = listen::listen(host, port)
            .await
            .map_err(|source| BindError {
                transport,
                host: host.to_owned(),
                port,
                source,
            })?;
        let addr = listener.local_addr()?;
        let gauge = Arc::new(PortGauge::default());
        let stop = self.inner.shutdown.child_token();
        match transport {
            Transport::Tcp => {
                let task = transport::tcp::serve(
                    listener,
                    self.inner.stack.clone(),
                    self.inner.settings.clone(),
                    gauge.clone(),
                    self.inner.tracker.clone(),
                    stop.clone(),
                );
                self.inner.tracker.spawn(task);
            }
            Transport::WebSocket => {
                let ctx = Arc::new(transport::ws::WsContext {
                    stack: self.inner.stack.clone(),
                    settings: self.inner.settings.clone(),
                    auth: self.inner.auth.clone(),
                    gauge: gauge.clone(),
                    tracker: self.inner.tracker.clone(),
                    shutdown: stop.clone(),
                });
                self.inner
                    .tracker
                    .spawn(transport::ws::serve(listener, ctx));
            }
        }
        tracing::info!(transport = transport.as_str(), %addr, "listening");
        let listener = Listener {
            transport,
            addr,
            gauge,
            stop,
        };
        self.inner.listeners.lock().insert(addr, listener);
        self.inner.ports_changed.notify_one();
        Ok(addr)
    }

    /// Stops accepting on `port` and closes its connections with 1001. False when nothing is
    /// bound there.
    pub fn close_port(&self, port: u16) -> bool {
        let mut listeners = self.inner.listeners.lock();
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
            self.inner.ports_changed.notify_one();
        }
        !addrs.is_empty()
    }

    /// The bound ports.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.inner
            .listeners
            .lock()
            .values()
            .map(|l| PortInfo {
                transport: l.transport,
                addr: l.addr,
                connections: l.gauge.get(),
            })
            .collect()
    }

    /// Whether the node can serve: listeners bound and broker, route store and registry
    /// healthy.
    pub fn readiness(&self) -> Readiness {
        let node = &self.inner.node;
        Readiness::new(
            self.inner.listeners.lock().len(),
            &[
                ("broker", node.broker.health()),
                ("routes", node.routes.health()),
                ("registry", node.registry.health()),
            ],
        )
    }

    /// The admin endpoint's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.inner.admin.lock()
    }

    /// Cancelled when the server shuts down.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Runs `task` until the server shuts down; shutdown waits for it.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tracker.spawn(task);
    }

    /// The first bound address of `transport`.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.ports()
            .into_iter()
            .find(|p| p.transport == transport)
            .map(|p| p.addr)
    }

    async fn publish_instances(&self) {
        let instances = instances(&self.inner.listeners);
        if let Err(error) = self.inner.node.registry.publish(instances).await {
            tracing::warn!(%error, "registration failed");
        }
    }

    /// Graceful shutdown: leave discovery, stop accepting, send Close 1001 to every
    /// connection, and wait (at most `grace`) for them to finish.
    pub async fn shutdown_with(&self, grace: Duration) {
        tracing::info!("shutting down");
        // Nothing may publish once deregistration has begun.
        let follower = self.inner.follower.lock().take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        if let Err(error) = self.inner.node.registry.deregister().await {
            tracing::warn!(%error, "deregistration failed");
        }
        self.inner.listeners.lock().clear();
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        self.inner.node.broker.close().await;
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
