//! Keeping the route records of users with live devices on this node from expiring.
//!
//! Once per period the refresher takes the session registry's users and extends their
//! records' TTL, [`BATCH`] users per script call, so 15,000 users cost 30 round trips per
//! period and nothing happens on a connection's own path. A record that vanished while the
//! user still has devices here (expired during a Redis stall, deleted by hand) is written
//! back with this node's drivers.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Inner, RouteError};
use crate::protocol::DeviceGroup;
use crate::route::{Driver, RouteRecord};
use crate::session::{Connection, SessionRegistry};

/// Users per refresh script call: large enough that a round is a few dozen round trips, small
/// enough that one call holds Redis for well under a millisecond.
pub(super) const BATCH: usize = 500;

/// What one refresh round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Users whose records were refreshed.
    pub users: usize,
    /// Script calls sent (Redis commands, one round trip each).
    pub batches: usize,
    /// Records that had vanished and were written back.
    pub restored: usize,
}

impl Inner {
    /// Refreshes every user of `sessions`, stopping at the first failed batch: with Redis
    /// down, the remaining batches would only wait out the same timeout.
    pub(super) async fn refresh(
        &self,
        sessions: &SessionRegistry,
        broker_id: &str,
    ) -> Result<RefreshStats, RouteError> {
        let users = sessions.users();
        let mut stats = RefreshStats::default();
        if users.is_empty() {
            self.ping().await?;
            return Ok(stats);
        }

        for chunk in users.chunks(BATCH) {
            let mut call = self.scripts.refresh.prepare_invoke();
            call.arg(self.ttl_secs);
            for user in chunk {
                let devices = sessions.connections(user);
                call.key(self.keys.user(user))
                    .arg(restore_record(user, &devices, broker_id).unwrap_or_default());
            }

            let restored: usize = self.invoke(&call).await?;
            stats.users += chunk.len();
            stats.batches += 1;
            stats.restored += restored;
        }
        Ok(stats)
    }
}

/// The record to write back for `user` if theirs vanished: this node's drivers, with the
/// newest connection's token at the top. `None` when no device is bound any more.
fn restore_record(
    user: &str,
    devices: &[(DeviceGroup, Arc<Connection>)],
    broker_id: &str,
) -> Option<String> {
    let mut drivers = BTreeMap::new();
    let mut newest: Option<&Arc<Connection>> = None;
    for (_, conn) in devices {
        let (Some((bound, device)), Some(device_id)) = (conn.bound(), conn.device_id()) else {
            continue;
        };
        if &*bound != user {
            continue;
        }
        let driver = Driver {
            device_id,
            device_type: device.as_str().to_owned(),
            broker_id: broker_id.to_owned(),
        };
        drivers.insert(device.group().as_str().to_owned(), driver);
        if newest.is_none_or(|n| n.id() < conn.id()) {
            newest = Some(conn);
        }
    }

    let token = newest?.identity().map(|i| i.token.to_string());
    let record = RouteRecord {
        user_id: user.to_owned(),
        token: token.unwrap_or_default(),
        broker_id: broker_id.to_owned(),
        drivers,
    };
    serde_json::to_string(&record).ok()
}

/// Runs refresh rounds every `period` until the store is dropped.
pub(super) fn spawn(
    inner: Weak<Inner>,
    sessions: Arc<SessionRegistry>,
    broker_id: Arc<str>,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick fires at once; records written at login need no refresh yet.
        ticks.tick().await;

        loop {
            ticks.tick().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            match inner.refresh(&sessions, &broker_id).await {
                Ok(stats) if stats.restored > 0 => tracing::info!(
                    route.users = stats.users,
                    route.restored = stats.restored,
                    "vanished route records written back"
                ),
                Ok(stats) => tracing::trace!(route.users = stats.users, "route ttl refreshed"),
                // The outage itself is logged where health changes.
                Err(err) => tracing::debug!(error = %err, "route ttl refresh failed"),
            }
        }
    })
}
