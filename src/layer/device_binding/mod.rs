//! Device binding: REGISTER and logout.
//!
//! REGISTER binds the connection as one device of its user in the session registry, kicks what
//! that displaces (the same group's connection, or every other one in single-device mode, on
//! this node directly and on other nodes through the broker), records the route and answers.
//! FORCE_LOGOUT from a client unbinds and closes with 1000. Any other frame from a connection
//! that has not registered is refused with `not_logged_in` and a close.
//!
//! ```
//! use std::sync::Arc;
//! use im_connect::broker::{Delivery, EmbeddedBroker};
//! use im_connect::layer::{DeviceBindingLayer, DeviceBindings};
//! use im_connect::request::{Reply, Request};
//! use im_connect::route::MemoryRouteStore;
//! use im_connect::session::SessionRegistry;
//! use tower::ServiceBuilder;
//!
//! let sessions = Arc::new(SessionRegistry::new());
//! let delivery = Arc::new(Delivery::new(
//!     sessions.clone(),
//!     Default::default(),
//!     Default::default(),
//!     std::time::Duration::from_secs(300),
//! ));
//! let bindings = DeviceBindings::new(
//!     sessions,
//!     Arc::new(MemoryRouteStore::new()),
//!     Arc::new(EmbeddedBroker::new(delivery)),
//!     "node-1",
//! );
//! let svc = ServiceBuilder::new()
//!     .layer(DeviceBindingLayer::new(Arc::new(bindings)))
//!     .service_fn(|_req: Request| async move { Ok::<_, im_connect::BoxError>(Reply::none()) });
//! # drop(svc);
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::backend::{BoxError, BoxFuture};
use crate::broker::Broker;
use crate::protocol::{DeviceParser, DeviceType, Envelope, Kind, Reason};
use crate::request::{Reply, Request};
use crate::route::{Driver, RouteEntry, RouteStore};
use crate::session::{Binding, Close, Connection, KickReason, SessionRegistry};

/// What binding needs: the registry, the route store, the broker for cross-node kicks, and
/// this node's id.
#[derive(Debug)]
pub struct DeviceBindings {
    sessions: Arc<SessionRegistry>,
    routes: Arc<dyn RouteStore>,
    broker: Arc<dyn Broker>,
    broker_id: Arc<str>,
    devices: DeviceParser,
    single_device: bool,
    route_timeout: Duration,
}

impl DeviceBindings {
    /// Bindings for node `broker_id`.
    pub fn new(
        sessions: Arc<SessionRegistry>,
        routes: Arc<dyn RouteStore>,
        broker: Arc<dyn Broker>,
        broker_id: &str,
    ) -> Self {
        DeviceBindings {
            sessions,
            routes,
            broker,
            broker_id: broker_id.into(),
            devices: DeviceParser::default(),
            single_device: false,
            route_timeout: Duration::from_secs(3),
        }
    }

    /// Extra device names.
    pub fn devices(mut self, devices: DeviceParser) -> Self {
        self.devices = devices;
        self
    }

    /// One connection per user, whatever the group (`multiDeviceEnabled: false`).
    pub fn single_device(mut self, single: bool) -> Self {
        self.single_device = single;
        self
    }

    /// How long a route write may take before REGISTER fails.
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.route_timeout = timeout;
        self
    }

    async fn register(self: Arc<Self>, mut req: Request) -> Reply {
        let Some(identity) = req.conn.identity() else {
            return req
                .error(Reason::NotLoggedIn, "REGISTER needs a token")
                .then_close(Close::NOT_LOGGED_IN);
        };
        let device = self.device_of(&req);
        let device_id = req.frame.ensure_request_id().to_owned();
        let entry = RouteEntry {
            user_id: identity.user_id.clone(),
            token: identity.token.clone(),
            device_type: device,
            device_id: device_id.clone(),
            broker_id: self.broker_id.clone(),
        };

        let conn = req.conn.clone();
        let reason = if self.single_device {
            KickReason::SingleDevice
        } else {
            KickReason::SameGroupLogin
        };
        let bound =
            self.sessions
                .bind(&identity.user_id, device.group(), &conn, self.single_device);
        let Ok(displaced) = bound else {
            // Another login already took this connection's place; its kick is on the way.
            tracing::debug!("register lost to a newer login");
            return Reply::none();
        };
        for other in displaced {
            tracing::debug!(conn.kicked = other.id(), "kicking displaced connection");
            other.kick(reason);
        }
        let previous = conn.bind(self.binding(&conn, entry.clone()));
        if let Some(previous) = previous {
            self.release_previous(previous, device);
        }
        tracing::Span::current().record("user.id", &*identity.user_id);
        tracing::Span::current().record("device.type", device.as_str());

        match tokio::time::timeout(self.route_timeout, self.routes.register(entry)).await {
            Ok(Ok(replaced)) => self.kick_remote(&identity.user_id, &device_id, replaced),
            Ok(Err(error)) => return self.route_failed(&req, error.to_string()),
            Err(_) => return self.route_failed(&req, "route store timed out".into()),
        }
        tracing::debug!("registered");

        let mut reply = req.frame.reply(Kind::RegisterReply);
        reply.message = Some("ok".into());
        reply.device_type = Some(device.as_str().into());
        reply.data = req.frame.data.take();
        // `data` is echoed, but a token carried in it must never come back.
        if let Some(serde_json::Value::Object(data)) = &mut reply.data {
            data.remove("token");
        }
        let meta = &mut reply.metadata;
        meta.insert("platform".into(), device.group().as_str().into());
        meta.insert("deviceType".into(), device.as_str().into());
        meta.insert("brokerId".into(), self.broker_id.to_string());
        Reply::frame(reply)
    }

    fn device_of(&self, req: &Request) -> DeviceType {
        let from_frame = req.frame.device_type.as_deref().or_else(|| {
            let data = req.frame.data.as_ref()?;
            data.get("deviceType")?.as_str()
        });
        let raw = from_frame.or(req.conn.info().handshake_device.as_deref());
        self.devices.parse(raw)
    }

    /// The binding of a new login: dropping it unbinds exactly this connection and removes
    /// exactly this login's route driver, whichever way the connection ends.
    fn binding(self: &Arc<Self>, conn: &Arc<Connection>, entry: RouteEntry) -> Binding {
        let this = self.clone();
        let conn_id = conn.id();
        Binding::new(
            entry.user_id.clone(),
            entry.device_type,
            entry.device_id.clone(),
            move || {
                this.sessions.unbind(&entry.user_id, conn_id);
                this.spawn_unregister(entry);
            },
        )
    }

    /// A repeated REGISTER replaces the connection's own binding: the registry entry already
    /// points at the new one, so only a route driver left in another group is removed.
    fn release_previous(&self, previous: Binding, now: DeviceType) {
        if previous.device.group() != now.group() {
            let identity = RouteEntry {
                user_id: previous.user_id.clone(),
                token: "".into(),
                device_type: previous.device,
                device_id: previous.device_id.clone(),
                broker_id: self.broker_id.clone(),
            };
            self.spawn_unregister(identity);
        }
        previous.forget();
    }

    fn spawn_unregister(&self, entry: RouteEntry) {
        let routes = self.routes.clone();
        let timeout = self.route_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, routes.unregister(entry)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "route removal failed"),
                Err(_) => tracing::debug!("route removal timed out"),
            }
        });
    }

    /// The route store said another node held this group's device: ask that node to kick it,
    /// naming the device so a late kick never hits a newer login.
    fn kick_remote(&self, user: &str, device_id: &str, replaced: Option<Driver>) {
        let Some(old) = replaced else { return };
        if *old.broker_id == *self.broker_id || old.device_id == device_id {
            return;
        }
        let mut kick = Envelope::new(Kind::ForceLogout);
        kick.ids = vec![user.to_string()];
        kick.device_type = Some(old.device_type.clone());
        kick.message = Some("logged in on another device of the same kind".into());
        kick.metadata
            .insert("connectionId".into(), old.device_id.clone());
        kick.data = Some(serde_json::json!({
            "reason": KickReason::SameGroupLogin.as_str(),
            "message": "logged in on another device of the same kind",
        }));
        let sent = self.broker.send_to_node(&old.broker_id, kick);
        tokio::spawn(async move {
            if let Err(error) = sent.await {
                tracing::warn!(%error, "cross-node kick not delivered");
            }
        });
    }

    fn route_failed(&self, req: &Request, error: String) -> Reply {
        tracing::warn!(%error, "route write failed");
        drop(req.conn.unbind());
        req.error(
            Reason::RouteUnavailable,
            format!("route store unavailable: {error}"),
        )
        .then_close(Close::ROUTE_UNAVAILABLE)
    }

    fn logout(&self, req: &Request) -> Reply {
        // Dropping the binding releases the registry entry and the route driver.
        drop(req.conn.unbind());
        tracing::debug!("logged out");
        Reply::frame(req.frame.reply(Kind::Ack)).then_close(Close::LOGGED_OUT)
    }
}

/// Applies [`DeviceBinding`].
#[derive(Debug, Clone)]
pub struct DeviceBindingLayer {
    bindings: Arc<DeviceBindings>,
}

impl DeviceBindingLayer {
    /// A layer binding through `bindings`.
    pub fn new(bindings: Arc<DeviceBindings>) -> Self {
        DeviceBindingLayer { bindings }
    }
}

impl<S> Layer<S> for DeviceBindingLayer {
    type Service = DeviceBinding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeviceBinding {
            inner,
            bindings: self.bindings.clone(),
        }
    }
}

/// Handles REGISTER and client logout; passes other frames of registered connections on.
#[derive(Debug, Clone)]
pub struct DeviceBinding<S> {
    inner: S,
    bindings: Arc<DeviceBindings>,
}

impl<S> DeviceBinding<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, bindings: Arc<DeviceBindings>) -> Self {
        DeviceBinding { inner, bindings }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request> for DeviceBinding<S>
where
    S: Service<Request, Response = Reply>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match req.kind() {
            Kind::Register => {
                let bindings = self.bindings.clone();
                Box::pin(async move { Ok(bindings.register(req).await) })
            }
            Kind::ForceLogout if req.conn.is_bound() => {
                let reply = self.bindings.logout(&req);
                Box::pin(std::future::ready(Ok(reply)))
            }
            _ if !req.conn.is_bound() => {
                let reply = req
                    .error(Reason::NotLoggedIn, "send REGISTER first")
                    .then_close(Close::NOT_LOGGED_IN);
                Box::pin(std::future::ready(Ok(reply)))
            }
            _ => {
                let fut = self.inner.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}
