//! The task that owns the Nacos client and brings Nacos in line with the wanted instances.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder};
use nacos_sdk::api::props::ClientProps;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::instance::{self, NodeMetadata};
use crate::backend::Health;
use crate::registry::Instance;

/// Longest wait for one call to Nacos. The client holds calls while it reconnects, so without
/// a bound a lost server would stall the task.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the client to be built (it probes the server once).
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// First and longest pause between failed attempts.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the node wants registered.
#[derive(Debug, Clone, Default)]
pub(super) struct Wanted {
    /// The instances by port.
    pub(super) instances: BTreeMap<u16, Instance>,
    /// Whether a set was ever published (an empty set counts).
    pub(super) published: bool,
    /// Shutting down: remove everything and stop.
    pub(super) leaving: bool,
}

/// Everything the task needs from the configuration. Not `Debug`: the client settings hold
/// the Nacos password.
pub(super) struct Settings {
    pub(super) props: ClientProps,
    pub(super) auth: bool,
    /// Nacos host and HTTP port, to find the address to advertise.
    pub(super) server: (String, u16),
    pub(super) service: String,
    pub(super) group: String,
    /// Configured address to advertise; `None` detects it.
    pub(super) ip: Option<String>,
    pub(super) node: NodeMetadata,
    /// How often Nacos is probed while nothing changes.
    pub(super) probe: Duration,
}

/// The background registration task.
pub(super) struct Worker {
    settings: Settings,
    wanted: watch::Receiver<Wanted>,
    done: watch::Sender<Option<Result<(), String>>>,
    health: Arc<Mutex<Health>>,
    /// The address advertised, once known.
    ip: Option<String>,
    /// What Nacos holds, as far as this task knows.
    registered: BTreeMap<u16, Instance>,
    /// Whether the current failure was already logged as a warning.
    outage: bool,
    /// Nacos was lost since the last registration: register everything again.
    stale: bool,
}

/// Why the task stops waiting.
enum Wake {
    /// The wanted set changed (or the pause ended).
    Go,
    /// The registry was dropped.
    Gone,
}

impl Worker {
    pub(super) fn new(
        settings: Settings,
        wanted: watch::Receiver<Wanted>,
        done: watch::Sender<Option<Result<(), String>>>,
        health: Arc<Mutex<Health>>,
    ) -> Worker {
        Worker {
            ip: settings.ip.clone(),
            settings,
            wanted,
            done,
            health,
            registered: BTreeMap::new(),
            outage: false,
            stale: false,
        }
    }

    pub(super) async fn run(mut self) {
        let Some(naming) = self.connect().await else {
            return;
        };
        let mut retry = RETRY_MIN;

        loop {
            let wanted = self.wanted.borrow_and_update().clone();
            if !wanted.published && !wanted.leaving {
                if let Wake::Gone = self.changed().await {
                    return;
                }
                continue;
            }

            let target = if wanted.leaving {
                BTreeMap::new()
            } else {
                wanted.instances
            };
            let result = self.apply(&naming, target).await;
            if wanted.leaving {
                self.finish(result);
                return;
            }

            let wake = match result {
                Ok(()) => {
                    retry = RETRY_MIN;
                    self.hold(&naming).await
                }
                Err(error) => {
                    self.set_health(Health::Down(error));
                    let wake = self.pause(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    wake
                }
            };
            if let Wake::Gone = wake {
                return;
            }
        }
    }

    /// Builds the client, retrying with backoff. `None` when the node left (or the registry
    /// was dropped) first: nothing was registered, so there is nothing to remove.
    async fn connect(&mut self) -> Option<NamingService> {
        let mut retry = RETRY_MIN;
        loop {
            let mut builder = NamingServiceBuilder::new(self.settings.props.clone());
            if self.settings.auth {
                builder = builder.enable_auth_plugin_http();
            }
            let error = match tokio::time::timeout(BUILD_TIMEOUT, builder.build()).await {
                Ok(Ok(naming)) => return Some(naming),
                Ok(Err(e)) => format!("nacos: cannot create the client: {e}"),
                Err(_) => format!(
                    "nacos: client not created within {}s",
                    BUILD_TIMEOUT.as_secs()
                ),
            };
            self.set_health(Health::Down(error));

            let wake = self.pause(retry).await;
            if matches!(wake, Wake::Gone) || self.wanted.borrow().leaving {
                self.finish(Ok(()));
                return None;
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// Makes Nacos hold `target`: removed ports are deregistered one by one, then the whole
    /// set is registered in one batch when anything in it changed.
    ///
    /// A batch replaces what this client registered for the service on Nacos 2 servers and
    /// adds to it on some compatible ones, so removals are always explicit.
    async fn apply(
        &mut self,
        naming: &NamingService,
        target: BTreeMap<u16, Instance>,
    ) -> Result<(), String> {
        let ip = self.ip().await?;
        let settings = &self.settings;
        let removed: Vec<Instance> = self
            .registered
            .values()
            .filter(|known| !target.contains_key(&known.port))
            .cloned()
            .collect();
        for gone in removed {
            let instance = settings.node.service_instance(&ip, &gone);
            let call = naming.deregister_instance(
                settings.service.clone(),
                Some(settings.group.clone()),
                instance,
            );
            bounded("deregistration", call).await?;
            self.registered.remove(&gone.port);
            tracing::info!(port = gone.port, service = %settings.service, "deregistered from nacos");
        }

        if target.is_empty() || (target == self.registered && !self.stale) {
            self.stale = false;
            return Ok(());
        }
        let instances = target
            .values()
            .map(|i| settings.node.service_instance(&ip, i))
            .collect();
        let call = naming.batch_register_instance(
            settings.service.clone(),
            Some(settings.group.clone()),
            instances,
        );
        bounded("registration", call).await?;
        let newly = target
            .keys()
            .any(|port| !self.registered.contains_key(port));
        if newly {
            let ports: Vec<u16> = target.keys().copied().collect();
            tracing::info!(?ports, %ip, service = %settings.service, "registered with nacos");
        } else {
            tracing::debug!(service = %settings.service, "nacos metadata updated");
        }
        self.registered = target;
        self.stale = false;
        Ok(())
    }

    /// The address to advertise: configured, or the one this host reaches Nacos from.
    async fn ip(&mut self) -> Result<String, String> {
        if let Some(ip) = &self.ip {
            return Ok(ip.clone());
        }

        let (host, port) = &self.settings.server;
        let lookup = tokio::time::timeout(
            CALL_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), *port)),
        );
        let server = match lookup.await {
            Ok(Ok(mut addrs)) => addrs.next(),
            Ok(Err(e)) => return Err(format!("nacos: cannot resolve {host}: {e}")),
            Err(_) => return Err(format!("nacos: resolving {host} timed out")),
        };
        let server = server.ok_or_else(|| format!("nacos: {host} has no address"))?;
        let ip = instance::advertised_ip(server)
            .map_err(|e| format!("nacos: cannot find this host's address: {e}"))?
            .to_string();
        self.ip = Some(ip.clone());
        Ok(ip)
    }

    fn finish(&mut self, result: Result<(), String>) {
        match &result {
            Ok(()) => tracing::info!(service = %self.settings.service, "left nacos"),
            Err(error) => tracing::warn!(%error, "leaving nacos failed"),
        }
        *self.health.lock() = Health::Down("nacos: deregistered".into());
        self.done.send_replace(Some(result));
    }

    /// Records the health, logging an outage once rather than on every retry.
    fn set_health(&mut self, health: Health) {
        match &health {
            Health::Down(error) if !self.outage => {
                tracing::warn!(%error, "nacos registration failing, retrying");
                self.outage = true;
            }
            Health::Down(error) => tracing::debug!(%error, "nacos registration still failing"),
            Health::Up if self.outage => {
                tracing::info!("nacos registration restored");
                self.outage = false;
            }
            Health::Up => {}
        }
        *self.health.lock() = health;
    }

    /// Reports the registration up and waits for the next change. A failed probe meanwhile
    /// reports it down and marks the instances for registering again, since Nacos may come
    /// back without them (a restarted server).
    async fn hold(&mut self, naming: &NamingService) -> Wake {
        self.set_health(Health::Up);
        match self.idle(naming).await {
            Ok(wake) => wake,
            Err(error) => {
                self.stale = true;
                self.set_health(Health::Down(error));
                Wake::Go
            }
        }
    }

    /// Waits for the wanted set to change, probing Nacos every [`Settings::probe`] meanwhile
    /// so that health follows an outage that starts while nothing changes. The error is the
    /// failed probe.
    async fn idle(&mut self, naming: &NamingService) -> Result<Wake, String> {
        let probe = self.settings.probe;
        loop {
            tokio::select! {
                wake = self.changed() => return Ok(wake),
                () = tokio::time::sleep(probe) => {}
            }
            let call = naming.get_service_list(1, 1, Some(self.settings.group.clone()));
            bounded("health check", call).await?;
        }
    }

    async fn changed(&mut self) -> Wake {
        match self.wanted.changed().await {
            Ok(()) => Wake::Go,
            Err(_) => Wake::Gone,
        }
    }

    /// Waits `pause`, or less if the wanted set changes meanwhile.
    async fn pause(&mut self, pause: Duration) -> Wake {
        tokio::select! {
            () = tokio::time::sleep(pause) => Wake::Go,
            wake = self.changed() => wake,
        }
    }
}

/// Runs one client call with [`CALL_TIMEOUT`], turning its failure into a message.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("nacos: {what} failed: {e}")),
        Err(_) => Err(format!(
            "nacos: {what} timed out after {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}
