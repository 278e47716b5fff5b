//! Registration with Nacos through `nacos-sdk`.
//!
//! Every listening port is one ephemeral instance of the service `nacos.config.name` in the
//! configured group and namespace, carrying the node's metadata (`brokerId`, `version`,
//! `wsPath`, `transport`, `protocols`, `connection`, `connection_count`, `region`,
//! `priority`).
//!
//! A background task owns the Nacos client. [`Registry::publish`] only hands it the wanted set
//! of instances and returns, so a node starts and serves while Nacos is down; the task keeps
//! retrying with backoff, and [`Registry::health`] says `Down` until the wanted set is
//! registered. While registered it probes Nacos every refresh interval, so health follows an
//! outage, and registers the instances again when Nacos returns without them.
//! [`Registry::deregister`] waits (a few seconds at most) for the task to remove the
//! instances.

mod instance;
mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::props::ClientProps;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::backend::{BoxError, BoxFuture, Health};
use crate::config::NacosConfig;
use crate::registry::{Instance, Registry};

use instance::NodeMetadata;
use worker::{Settings, Wanted, Worker};

/// How long [`Registry::deregister`] waits for the instances to be removed.
const DEREGISTER_WAIT: Duration = Duration::from_secs(5);

/// Registers this node's listeners with Nacos.
///
/// The instances are ephemeral: Nacos also drops them by itself when the client's connection
/// ends, so a node that dies without deregistering disappears from discovery.
pub struct NacosRegistry {
    service: String,
    group: String,
    wanted: watch::Sender<Wanted>,
    done: watch::Receiver<Option<Result<(), String>>>,
    health: Arc<Mutex<Health>>,
}

impl NacosRegistry {
    /// Starts registering for the node `broker_id`, whose WebSocket path is `ws_path`.
    ///
    /// Nothing is contacted before this returns: the client is built, and the instances are
    /// registered, by a task spawned on the current Tokio runtime (so this must be called
    /// inside one).
    pub fn start(config: &NacosConfig, broker_id: &str, ws_path: &str) -> NacosRegistry {
        let (wanted, wanted_rx) = watch::channel(Wanted::default());
        let (done_tx, done) = watch::channel(None);
        let health = Arc::new(Mutex::new(Health::Down("nacos: not registered yet".into())));
        let settings = Settings {
            props: client_props(config),
            auth: config.username.is_some(),
            server: (config.address.clone(), config.port),
            service: config.name.clone(),
            group: config.group.clone(),
            ip: config.ip.clone(),
            probe: Duration::from_millis(config.refresh_interval_ms),
            node: NodeMetadata {
                broker_id: broker_id.to_owned(),
                version: config.version.clone(),
                ws_path: ws_path.to_owned(),
                region: config.region.clone(),
                priority: config.priority,
            },
        };
        let worker = Worker::new(settings, wanted_rx, done_tx, health.clone());
        tokio::spawn(worker.run());

        NacosRegistry {
            service: config.name.clone(),
            group: config.group.clone(),
            wanted,
            done,
            health,
        }
    }
}

/// The client settings for `config`. Environment overrides of the SDK (`NACOS_CLIENT_*`) are
/// off so that the typed configuration alone decides where the node registers.
fn client_props(config: &NacosConfig) -> ClientProps {
    let mut props = ClientProps::new()
        .server_addr(format!("{}:{}", config.address, config.port))
        .namespace(config.namespace.clone())
        .app_name(config.name.clone())
        .env_first(false)
        // The SDK's service cache only serves subscriptions, which a registering node does
        // not make; keep its files out of the home directory.
        .cache_dir(std::env::temp_dir().join("im-connect-nacos"))
        // Without this the client refuses to be built while the server is unreachable; with
        // it the client is built at once and connects on first use.
        .naming_load_cache_at_start(true);
    if let Some(username) = &config.username {
        props = props.auth_username(username.clone());
        if let Some(password) = &config.password {
            props = props.auth_password(password.expose().to_owned());
        }
    }
    props
}

impl fmt::Debug for NacosRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NacosRegistry")
            .field("service", &self.service)
            .field("group", &self.group)
            .field("health", &*self.health.lock())
            .finish_non_exhaustive()
    }
}

impl Registry for NacosRegistry {
    /// Hands the set to the background task and returns at once; whether it is registered
    /// shows in [`Registry::health`]. Ignored after [`Registry::deregister`].
    fn publish(&self, instances: Vec<Instance>) -> BoxFuture<'static, Result<(), BoxError>> {
        let instances: BTreeMap<u16, Instance> = instance::by_port(instances);
        self.wanted.send_if_modified(|wanted| {
            if wanted.leaving || (wanted.published && wanted.instances == instances) {
                return false;
            }
            wanted.instances = instances;
            wanted.published = true;
            true
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn deregister(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        self.wanted
            .send_if_modified(|wanted| !std::mem::replace(&mut wanted.leaving, true));
        let mut done = self.done.clone();

        Box::pin(async move {
            let outcome = tokio::time::timeout(DEREGISTER_WAIT, done.wait_for(Option::is_some));
            match outcome.await {
                Ok(Ok(result)) => result.clone().unwrap_or(Ok(())).map_err(BoxError::from),
                Ok(Err(_)) => Err("nacos: the registration task has ended".into()),
                Err(_) => Err(format!(
                    "nacos: instances not removed within {}s",
                    DEREGISTER_WAIT.as_secs()
                )
                .into()),
            }
        })
    }

    fn health(&self) -> Health {
        self.health.lock().clone()
    }
}
