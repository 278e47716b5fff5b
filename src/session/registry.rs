use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Connection;
use crate::protocol::DeviceGroup;

const SHARDS: usize = 64;

type Devices = Vec<(DeviceGroup, Arc<Connection>)>;

/// One shard: users whose id hashes to it.
type Shard = Mutex<HashMap<Arc<str>, Devices>>;

/// The connection was displaced by another login and cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection was replaced by another login")]
pub struct Displaced;

/// Users and their bound connections on this node, at most one per device group.
///
/// Sharded by user so logins and deliveries for different users never wait on one lock.
/// Counts are exact: they change under the same shard lock as the map.
#[derive(Debug)]
pub struct SessionRegistry {
    shards: Box<[Shard]>,
    hasher: RandomState,
    users: AtomicUsize,
    connections: AtomicUsize,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        SessionRegistry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            users: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    fn shard(&self, user: &str) -> &Shard {
        let hash = self.hasher.hash_one(user) as usize;
        &self.shards[hash % self.shards.len()]
    }

    /// Binds `conn` as `group` of `user` and returns the connections it displaces: the same
    /// group's, or every other one when `single_device`. A connection already bound under
    /// another group moves; it is never listed twice.
    ///
    /// Fails, changing nothing, when `conn` was itself displaced: of two logins racing for
    /// one place, the one that bound last wins and the other stays out.
    pub fn bind(
        &self,
        user: &Arc<str>,
        group: DeviceGroup,
        conn: &Arc<Connection>,
        single_device: bool,
    ) -> Result<Vec<Arc<Connection>>, Displaced> {
        let mut shard = self.shard(user).lock();
        // Checked and set under the shard lock, so a displacement and a re-bind of the same
        // connection cannot interleave.
        if conn.is_displaced() {
            return Err(Displaced);
        }
        let devices = shard.entry(user.clone()).or_default();
        if devices.is_empty() {
            self.users.fetch_add(1, Ordering::Relaxed);
        }
        let before = devices.len();
        let mut kicked = Vec::new();
        devices.retain(|(g, c)| {
            if c.id() == conn.id() {
                return false;
            }
            if *g == group || single_device {
                c.displace();
                kicked.push(c.clone());
                return false;
            }
            true
        });
        devices.push((group, conn.clone()));
        let after = devices.len();
        drop(shard);

        if after > before {
            self.connections
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.connections
                .fetch_sub(before - after, Ordering::Relaxed);
        }
        Ok(kicked)
    }

    /// Removes `conn_id` from `user`'s devices. Only that exact connection is removed, so a
    /// late clean-up never unbinds the connection that replaced it.
    pub fn unbind(&self, user: &str, conn_id: u64) -> bool {
        let mut shard = self.shard(user).lock();
        let Some(devices) = shard.get_mut(user) else {
            return false;
        };
        let before = devices.len();
        devices.retain(|(_, c)| c.id() != conn_id);
        let removed = devices.len() < before;
        if devices.is_empty() {
            shard.remove(user);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Calls `f` for each of `user`'s connections, under the shard lock: `f` must not block.
    pub fn for_each(&self, user: &str, mut f: impl FnMut(DeviceGroup, &Arc<Connection>)) {
        let shard = self.shard(user).lock();
        if let Some(devices) = shard.get(user) {
            for (group, conn) in devices {
                f(*group, conn);
            }
        }
    }

    /// `user`'s connections on this node.
    pub fn connections(&self, user: &str) -> Vec<(DeviceGroup, Arc<Connection>)> {
        let mut out = Vec::new();
        self.for_each(user, |g, c| out.push((g, c.clone())));
        out
    }

    /// Removes and returns `user`'s connections, all or only those of `group`.
    pub fn take(&self, user: &str, group: Option<DeviceGroup>) -> Vec<Arc<Connection>> {
        let mut shard = self.shard(user).lock();
        let Some(devices) = shard.get_mut(user) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        devices.retain(|(g, c)| {
            let hit = group.is_none_or(|want| want == *g);
            if hit {
                c.displace();
                taken.push(c.clone());
            }
            !hit
        });
        if devices.is_empty() {
            shard.remove(user);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
        self.connections.fetch_sub(taken.len(), Ordering::Relaxed);
        taken
    }

    /// Removes and returns one connection of `user` by id.
    pub fn take_connection(&self, user: &str, conn_id: u64) -> Option<Arc<Connection>> {
        let conn = self
            .connections(user)
            .into_iter()
            .find(|(_, c)| c.id() == conn_id)?
            .1;
        self.unbind(user, conn_id).then_some(conn)
    }

    /// Users with at least one bound connection.
    pub fn online_users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Bound connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Every user with a bound connection (a snapshot, for periodic work such as route TTL
    /// refresh).
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut out = Vec::with_capacity(self.online_users());
        for shard in self.shards.iter() {
            out.extend(shard.lock().keys().cloned());
        }
        out
    }

    /// Every bound connection (a snapshot, for shutdown and operations).
    pub fn all_connections(&self) -> Vec<Arc<Connection>> {
        let mut out = Vec::with_capacity(self.connection_count());
        for shard in self.shards.iter() {
            for devices in shard.lock().values() {
                out.extend(devices.iter().map(|(_, c)| c.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Codec, Wire};
    use crate::session::{ConnectionInfo, Transport};

    fn conn() -> Arc<Connection> {
        let info = ConnectionInfo {
            transport: Transport::Tcp,
            peer: "127.0.0.1:1".parse().unwrap(),
            local_port: 9000,
            codec: None,
            handshake_device: None,
        };
        Arc::new(Connection::new(info, Codec::Json, Wire::default(), 8))
    }

    #[test]
    fn same_group_login_displaces_and_counts_stay_exact() {
        let reg = SessionRegistry::new();
        let user: Arc<str> = "u1".into();
        let (a, b, c) = (conn(), conn(), conn());
        assert!(reg
            .bind(&user, DeviceGroup::Mobile, &a, false)
            .unwrap()
            .is_empty());
        assert!(reg
            .bind(&user, DeviceGroup::Web, &b, false)
            .unwrap()
            .is_empty());
        let kicked = reg.bind(&user, DeviceGroup::Mobile, &c, false).unwrap();
        assert_eq!(kicked.len(), 1);
        assert_eq!(kicked[0].id(), a.id());
        assert_eq!((reg.online_users(), reg.connection_count()), (1, 2));

        // The kicked connection's late clean-up leaves its replacement alone.
        assert!(!reg.unbind(&user, a.id()));
        assert_eq!(reg.connection_count(), 2);
        assert!(reg.unbind(&user, b.id()));
        assert!(reg.unbind(&user, c.id()));
        assert_eq!((reg.online_users(), reg.connection_count()), (0, 0));
    }

    #[test]
    fn a_displaced_connection_cannot_bind_again_and_unseat_the_winner() {
        let reg = SessionRegistry::new();
        let user: Arc<str> = "u3".into();
        let (a, b) = (conn(), conn());
        reg.bind(&user, DeviceGroup::Mobile, &a, false).unwrap();
        let kicked = reg.bind(&user, DeviceGroup::Mobile, &b, false).unwrap();
        assert_eq!(kicked[0].id(), a.id());
        assert!(a.is_displaced());

        // A REGISTER of `a` that was already in flight arrives late.
        let late = reg.bind(&user, DeviceGroup::Mobile, &a, false);
        assert!(matches!(late, Err(Displaced)));
        let left = reg.connections(&user);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.id(), b.id());
        assert!(!b.is_displaced());
        assert_eq!(reg.connection_count(), 1);
    }

    #[test]
    fn single_device_mode_displaces_every_group_and_rebinding_moves() {
        let reg = SessionRegistry::new();
        let user: Arc<str> = "u2".into();
        let (a, b) = (conn(), conn());
        reg.bind(&user, DeviceGroup::Mobile, &a, false).unwrap();
        assert!(reg
            .bind(&user, DeviceGroup::Desktop, &a, false)
            .unwrap()
            .is_empty());
        assert_eq!(reg.connection_count(), 1);
        let kicked = reg.bind(&user, DeviceGroup::Web, &b, true).unwrap();
        assert_eq!(kicked.len(), 1);
        assert_eq!(reg.connections("u2").len(), 1);
    }
}
