use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Driver, RouteEntry, RouteRecord, RouteStore};
use crate::backend::{BoxError, BoxFuture};
use crate::protocol::DeviceGroup;

/// Route records in this process: the standalone server's store, and a stand-in where one
/// process plays several nodes.
#[derive(Debug, Clone, Default)]
pub struct MemoryRouteStore {
    records: Arc<Mutex<HashMap<String, Stored>>>,
}

/// One user's record as kept here, turned into a [`RouteRecord`] on lookup.
///
/// A user has at most one driver per device group, so the drivers are a short vector: a
/// `BTreeMap` allocates a node with room for eleven entries (about a kilobyte) even for one
/// device, which made the route the largest allocation of an idle connection after its task.
#[derive(Debug, Clone)]
struct Stored {
    token: String,
    broker_id: String,
    drivers: Vec<(DeviceGroup, Driver)>,
}

impl Stored {
    fn to_record(&self, user_id: &str) -> RouteRecord {
        RouteRecord {
            user_id: user_id.to_string(),
            token: self.token.clone(),
            broker_id: self.broker_id.clone(),
            drivers: self
                .drivers
                .iter()
                .map(|(group, driver)| (group.as_str().to_string(), driver.clone()))
                .collect(),
        }
    }
}

impl MemoryRouteStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn apply_register(&self, entry: &RouteEntry) -> Option<Driver> {
        let mut records = self.records.lock();
        let record = records
            .entry(entry.user_id.to_string())
            .or_insert_with(|| Stored {
                token: String::new(),
                broker_id: String::new(),
                drivers: Vec::with_capacity(1),
            });
        record.token = entry.token.to_string();
        record.broker_id = entry.broker_id.to_string();
        let group = entry.group();
        match record.drivers.iter_mut().find(|(g, _)| *g == group) {
            Some((_, driver)) => Some(std::mem::replace(driver, entry.driver())),
            None => {
                record.drivers.push((group, entry.driver()));
                None
            }
        }
    }

    fn apply_unregister(&self, entry: &RouteEntry) {
        let mut records = self.records.lock();
        let Some(record) = records.get_mut(&*entry.user_id) else {
            return;
        };
        let (group, driver) = (entry.group(), entry.driver());
        record.drivers.retain(|(g, d)| *g != group || *d != driver);
        if record.drivers.is_empty() && record.broker_id == *entry.broker_id {
            records.remove(&*entry.user_id);
        }
    }
}

impl RouteStore for MemoryRouteStore {
    fn register(&self, entry: RouteEntry) -> BoxFuture<'static, Result<Option<Driver>, BoxError>> {
        let replaced = self.apply_register(&entry);
        Box::pin(std::future::ready(Ok(replaced)))
    }

    fn unregister(&self, entry: RouteEntry) -> BoxFuture<'static, Result<(), BoxError>> {
        self.apply_unregister(&entry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn lookup(&self, user_id: &str) -> BoxFuture<'static, Result<Option<RouteRecord>, BoxError>> {
        let record = self
            .records
            .lock()
            .get(user_id)
            .map(|stored| stored.to_record(user_id));
        Box::pin(std::future::ready(Ok(record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DeviceType;

    fn entry(device: DeviceType, id: &str, node: &str) -> RouteEntry {
        RouteEntry {
            user_id: "u".into(),
            token: "t".into(),
            device_type: device,
            device_id: id.into(),
            broker_id: node.into(),
        }
    }

    #[tokio::test]
    async fn replaced_driver_is_returned_and_late_removal_keeps_the_new_one() {
        let store = MemoryRouteStore::new();
        let first = entry(DeviceType::Ios, "d1", "A");
        let second = entry(DeviceType::Android, "d2", "B");
        assert!(store.register(first.clone()).await.unwrap().is_none());
        let replaced = store.register(second.clone()).await.unwrap().unwrap();
        assert_eq!(replaced.broker_id, "A");
        store.unregister(first).await.unwrap();
        let record = store.lookup("u").await.unwrap().unwrap();
        assert_eq!(record.drivers["MOBILE"].device_id, "d2");
        store.unregister(second).await.unwrap();
        assert!(store.lookup("u").await.unwrap().is_none());
    }
}
