//! Where users are: the `IM-USER-{userId}` route records that tell backends which node holds
//! each of a user's devices.
//!
//! [`RouteStore`] is the seam; [`MemoryRouteStore`] keeps records in-process (standalone
//! server, tests) and the Redis implementation keeps them where every node and backend sees
//! them.

mod memory;
mod redis;

pub use memory::MemoryRouteStore;
pub use redis::{RedisRouteStore, RefreshStats, RouteError};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{BoxError, BoxFuture, Health};
use crate::protocol::{DeviceGroup, DeviceType};

/// One login, as the route store records it.
#[derive(Clone)]
pub struct RouteEntry {
    /// The user.
    pub user_id: Arc<str>,
    /// The token the login presented (backends read it from the record).
    pub token: Arc<str>,
    /// Device type of the login.
    pub device_type: DeviceType,
    /// The REGISTER's request id.
    pub device_id: String,
    /// The node holding the connection.
    pub broker_id: Arc<str>,
}

impl RouteEntry {
    /// The device group of the login.
    pub fn group(&self) -> DeviceGroup {
        self.device_type.group()
    }

    /// The driver this login writes.
    pub fn driver(&self) -> Driver {
        Driver {
            device_id: self.device_id.clone(),
            device_type: self.device_type.as_str().to_string(),
            broker_id: self.broker_id.to_string(),
        }
    }
}

impl fmt::Debug for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteEntry")
            .field("user_id", &self.user_id)
            .field("device_type", &self.device_type)
            .field("device_id", &self.device_id)
            .field("broker_id", &self.broker_id)
            .finish_non_exhaustive()
    }
}

/// One device group's entry in a route record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Driver {
    /// The REGISTER's request id.
    pub device_id: String,
    /// Normalised device type.
    pub device_type: String,
    /// The node holding this device.
    pub broker_id: String,
}

/// The route record of one user, in the JSON shape backends read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// The user.
    pub user_id: String,
    /// Token of the latest login.
    pub token: String,
    /// Node of the latest login.
    pub broker_id: String,
    /// Devices by upper-case group name.
    pub drivers: BTreeMap<String, Driver>,
}

/// Keeps user → node routes.
pub trait RouteStore: Send + Sync + fmt::Debug + 'static {
    /// Records a login (merging its driver into the user's record) and returns the driver it
    /// replaced in the same group, so the caller can kick a device held by another node.
    fn register(&self, entry: RouteEntry) -> BoxFuture<'static, Result<Option<Driver>, BoxError>>;

    /// Removes the login's driver if it is still the one recorded; deletes the record when no
    /// driver is left and it still names this node.
    fn unregister(&self, entry: RouteEntry) -> BoxFuture<'static, Result<(), BoxError>>;

    /// The user's record, if any.
    fn lookup(&self, user_id: &str) -> BoxFuture<'static, Result<Option<RouteRecord>, BoxError>>;

    /// Whether `token` was revoked. Stores without a blacklist say no.
    fn is_revoked(&self, _token: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Whether the store is reachable.
    fn health(&self) -> Health {
        Health::Up
    }
}
