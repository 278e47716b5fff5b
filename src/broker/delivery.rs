use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::admin::Metrics;
use crate::protocol::{DeviceGroup, DeviceParser, Encoded, Envelope, Kind, Wire};
use crate::session::{KickReason, SessionRegistry};

/// What one downstream message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Frames queued to connections.
    pub delivered: usize,
    /// Connections kicked (FORCE_LOGOUT).
    pub kicked: usize,
    /// Connections closed because their queue was full.
    pub overflowed: usize,
    /// The message was a duplicate and went nowhere.
    pub duplicate: bool,
}

/// Hands downstream messages to the local connections of their target users.
#[derive(Debug)]
pub struct Delivery {
    sessions: Arc<SessionRegistry>,
    wire: Wire,
    devices: DeviceParser,
    dedup: Dedup,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Delivery to the connections of `sessions`, remembering request ids for `dedup_window`.
    pub fn new(
        sessions: Arc<SessionRegistry>,
        wire: Wire,
        devices: DeviceParser,
        dedup_window: Duration,
    ) -> Self {
        Delivery {
            sessions,
            wire,
            devices,
            dedup: Dedup::new(dedup_window, 1 << 20),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            metrics: Metrics::detached(),
        }
    }

    /// Counts delivered frames by kind in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The wire settings used to encode.
    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// Delivers `env` to every local connection of the users in its `ids`, encoded once per
    /// codec and without `ids`. A FORCE_LOGOUT kicks instead. A message whose `requestId` (from
    /// the same sender) was seen within the window goes nowhere.
    pub fn deliver(&self, mut env: Envelope) -> DeliveryReport {
        let arrived = Instant::now();
        if let Some(id) = &env.request_id {
            let sender = env.metadata.get("userId").map(String::as_str).unwrap_or("");
            if !self.dedup.first_sighting(sender, id) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return DeliveryReport {
                    duplicate: true,
                    ..DeliveryReport::default()
                };
            }
        }
        let mut ids = std::mem::take(&mut env.ids);
        // A user named twice still gets the message once.
        if ids.len() > 1 {
            ids.sort_unstable();
            ids.dedup();
        }
        if env.kind() == Some(Kind::ForceLogout) {
            return self.kick(&ids, &env);
        }

        let encoded = Encoded::new(&self.wire, &env);
        let mut report = DeliveryReport::default();
        for user in &ids {
            self.sessions.for_each(user, |_, conn| {
                match conn.send_delivery(encoded.get(conn.codec()), arrived) {
                    Ok(()) => report.delivered += 1,
                    Err(crate::session::PushError::Full) => report.overflowed += 1,
                    Err(crate::session::PushError::Closed) => {}
                }
            });
        }
        self.delivered
            .fetch_add(report.delivered as u64, Ordering::Relaxed);
        self.metrics.frames_out(env.kind(), report.delivered as u64);
        report
    }

    /// FORCE_LOGOUT from the backend or another node: kicks one named connection
    /// (`metadata.connectionId`, matched against connection ids and device ids), else the
    /// users' connections of the group of `deviceType`, else all of them.
    fn kick(&self, ids: &[String], env: &Envelope) -> DeliveryReport {
        let reason = env
            .data
            .as_ref()
            .and_then(|d| d.get("reason"))
            .and_then(|r| r.as_str())
            .map(|r| match r {
                "same_group_login" => KickReason::SameGroupLogin,
                "single_device" => KickReason::SingleDevice,
                "admin" => KickReason::Admin,
                _ => KickReason::Backend,
            })
            .unwrap_or(KickReason::Backend);
        let group: Option<DeviceGroup> = env
            .device_type
            .as_deref()
            .map(|t| self.devices.parse(Some(t)).group());
        let target = env.metadata.get("connectionId");

        let mut report = DeliveryReport::default();
        for user in ids {
            let victims = match target {
                Some(target) => self.take_named(user, target),
                None => self.sessions.take(user, group),
            };
            for conn in victims {
                conn.kick(reason);
                report.kicked += 1;
            }
        }
        report
    }

    fn take_named(&self, user: &str, target: &str) -> Vec<Arc<crate::session::Connection>> {
        let mut hit = None;
        self.sessions.for_each(user, |_, conn| {
            let by_id = conn.id().to_string() == target;
            if by_id || conn.device_id().as_deref() == Some(target) {
                hit = Some(conn.id());
            }
        });
        hit.and_then(|id| self.sessions.take_connection(user, id))
            .into_iter()
            .collect()
    }

    /// Frames delivered since start.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Duplicates dropped since start.
    pub fn duplicates_total(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

/// Remembers `(sender, requestId)` pairs for a time window, bounded in size so a flood of
/// unique ids cannot grow memory without limit (the oldest are forgotten first).
///
/// Pairs are kept as 128-bit keyed hashes, not as text: an entry costs the same few dozen
/// bytes whatever the length of the id a client chose, and two distinct pairs share a key
/// with a probability far below that of any hardware fault.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    max: usize,
    keys: (RandomState, RandomState),
    inner: Mutex<DedupState>,
}

/// A de-duplication key: two independent hashes of the sender and the `requestId`.
type DedupKey = (u64, u64);

#[derive(Debug, Default)]
struct DedupState {
    seen: HashMap<DedupKey, Instant>,
    order: VecDeque<(Instant, DedupKey)>,
}

impl Dedup {
    /// Remembers ids for `window`, at most `max` of them.
    pub fn new(window: Duration, max: usize) -> Self {
        Dedup {
            window,
            max,
            keys: (RandomState::new(), RandomState::new()),
            inner: Mutex::default(),
        }
    }

    /// True the first time `(sender, id)` is seen within the window.
    pub fn first_sighting(&self, sender: &str, id: &str) -> bool {
        if self.window.is_zero() {
            return true;
        }
        let key: DedupKey = (
            self.keys.0.hash_one((sender, id)),
            self.keys.1.hash_one((sender, id)),
        );
        let now = Instant::now();
        let mut state = self.inner.lock();
        while let Some((at, _)) = state.order.front() {
            if now.duration_since(*at) < self.window && state.order.len() < self.max {
                break;
            }
            let (at, key) = state.order.pop_front().expect("front exists");
            if state.seen.get(&key) == Some(&at) {
                state.seen.remove(&key);
            }
        }
        if state.seen.contains_key(&key) {
            return false;
        }
        state.seen.insert(key, now);
        state.order.push_back((now, key));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_remembers_within_window_and_per_sender() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        assert!(d.first_sighting("a", "1"));
        assert!(!d.first_sighting("a", "1"));
        assert!(d.first_sighting("b", "1"));
    }

    #[test]
    fn dedup_is_bounded() {
        let d = Dedup::new(Duration::from_secs(60), 2);
        assert!(d.first_sighting("a", "1"));
        assert!(d.first_sighting("a", "2"));
        assert!(d.first_sighting("a", "3"));
        // "1" was pushed out by the size bound.
        assert!(d.first_sighting("a", "1"));
    }

    #[test]
    fn sender_and_id_are_not_confused_by_where_they_split() {
        let d = Dedup::new(Duration::from_secs(60), 100);
        assert!(d.first_sighting("ab", "c"));
        assert!(d.first_sighting("a", "bc"));
        assert!(!d.first_sighting("ab", "c"));
    }

    #[test]
    fn a_user_named_twice_gets_the_message_once() {
        use crate::config::Codec;
        use crate::session::{Connection, ConnectionInfo, Transport};

        let sessions = Arc::new(SessionRegistry::new());
        let info = ConnectionInfo {
            transport: Transport::Tcp,
            peer: "127.0.0.1:1".parse().unwrap(),
            local_port: 9000,
            codec: Some(Codec::Json),
            handshake_device: None,
        };
        let conn = Arc::new(Connection::new(info, Codec::Json, Wire::default(), 64));
        let user: Arc<str> = "u".into();
        sessions
            .bind(&user, DeviceGroup::Web, &conn, false)
            .unwrap();
        let delivery = Delivery::new(
            sessions,
            Wire::default(),
            DeviceParser::default(),
            Duration::ZERO,
        );

        let mut env = Envelope::new(Kind::SingleMessage);
        env.ids = vec!["u".into(), "x".into(), "u".into(), "u".into()];
        assert_eq!(delivery.deliver(env).delivered, 1);
        assert_eq!(conn.outbox().len(), 1);
    }
}
