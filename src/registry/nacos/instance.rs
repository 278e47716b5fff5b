//! What one listening port looks like in Nacos: its address and its metadata.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use nacos_sdk::api::naming::ServiceInstance;

use crate::registry::Instance;

/// The codecs every listener serves, as the `protocols` metadata announces them.
const PROTOCOLS: &str = r#"["json","proto"]"#;

/// Nacos's default cluster, which consumers query when they name none.
const CLUSTER: &str = "DEFAULT";

/// The parts of every instance's metadata that do not change while the node runs.
#[derive(Debug, Clone)]
pub(super) struct NodeMetadata {
    pub(super) broker_id: String,
    pub(super) version: String,
    pub(super) ws_path: String,
    pub(super) region: String,
    pub(super) priority: i32,
}

impl NodeMetadata {
    /// The Nacos instance for `instance`, advertised at `ip`.
    pub(super) fn service_instance(&self, ip: &str, instance: &Instance) -> ServiceInstance {
        let connections = instance.connections.to_string();
        let metadata = HashMap::from([
            ("brokerId".to_owned(), self.broker_id.clone()),
            ("version".to_owned(), self.version.clone()),
            ("wsPath".to_owned(), self.ws_path.clone()),
            (
                "transport".to_owned(),
                instance.transport.as_str().to_owned(),
            ),
            ("protocols".to_owned(), PROTOCOLS.to_owned()),
            ("connection".to_owned(), connections.clone()),
            ("connection_count".to_owned(), connections),
            ("region".to_owned(), self.region.clone()),
            ("priority".to_owned(), self.priority.to_string()),
        ]);

        ServiceInstance {
            ip: ip.to_owned(),
            port: i32::from(instance.port),
            cluster_name: Some(CLUSTER.to_owned()),
            metadata,
            ..ServiceInstance::default()
        }
    }
}

/// Instances keyed by port. Nacos identifies an instance by address and port, so listeners
/// sharing a port (one per local address) are announced once, with their connections added up.
pub(super) fn by_port(instances: Vec<Instance>) -> BTreeMap<u16, Instance> {
    let mut ports = BTreeMap::<u16, Instance>::new();
    for instance in instances {
        ports
            .entry(instance.port)
            .and_modify(|known| known.connections += instance.connections)
            .or_insert(instance);
    }
    ports
}

/// The address this host reaches `nacos` from, which is the one Nacos's other clients can
/// reach it at. When that is a loopback address (Nacos runs on this host) the address of the
/// default route is preferred, if there is one, so that other hosts can connect.
pub(super) fn advertised_ip(nacos: SocketAddr) -> io::Result<IpAddr> {
    let ip = route_source(nacos)?;
    if !ip.is_loopback() {
        return Ok(ip);
    }

    // Documentation addresses (RFC 5737, RFC 3849): only routed, never contacted.
    let outside: SocketAddr = match nacos {
        SocketAddr::V4(_) => (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        SocketAddr::V6(_) => (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
    };
    match route_source(outside) {
        Ok(public) if !public.is_loopback() && !public.is_unspecified() => Ok(public),
        _ => Ok(ip),
    }
}

/// The local address the routing table picks for `target`. Connecting a UDP socket sends
/// nothing; it only settles the route.
fn route_source(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(target)?;

    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Transport;

    fn node() -> NodeMetadata {
        NodeMetadata {
            broker_id: "node-1".into(),
            version: "2.0.0".into(),
            ws_path: "/im".into(),
            region: "eu".into(),
            priority: 7,
        }
    }

    fn instance(transport: Transport, port: u16, connections: usize) -> Instance {
        Instance {
            transport,
            port,
            connections,
        }
    }

    #[test]
    fn metadata_follows_the_contract() {
        let si = node().service_instance("10.0.0.5", &instance(Transport::Tcp, 9001, 3));

        assert_eq!((si.ip.as_str(), si.port), ("10.0.0.5", 9001));
        assert!(si.ephemeral && si.enabled && si.healthy);
        let expected: HashMap<String, String> = [
            ("brokerId", "node-1"),
            ("version", "2.0.0"),
            ("wsPath", "/im"),
            ("transport", "tcp"),
            ("protocols", r#"["json","proto"]"#),
            ("connection", "3"),
            ("connection_count", "3"),
            ("region", "eu"),
            ("priority", "7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(si.metadata, expected);
        let protocols: Vec<String> = serde_json::from_str(&si.metadata["protocols"]).unwrap();
        assert_eq!(protocols, ["json", "proto"]);
    }

    #[test]
    fn websocket_instances_say_ws() {
        let si = node().service_instance("10.0.0.5", &instance(Transport::WebSocket, 9000, 0));

        assert_eq!(si.metadata["transport"], "ws");
        assert_eq!(si.metadata["connection"], "0");
    }

    #[test]
    fn listeners_on_one_port_are_announced_once() {
        let ports = by_port(vec![
            instance(Transport::WebSocket, 9000, 2),
            instance(Transport::Tcp, 9001, 1),
            instance(Transport::WebSocket, 9000, 5),
        ]);

        assert_eq!(ports.len(), 2);
        assert_eq!(ports[&9000].connections, 7);
        assert_eq!(ports[&9001].connections, 1);
    }

    #[test]
    fn advertised_address_belongs_to_this_host() {
        let ip = advertised_ip((Ipv4Addr::LOCALHOST, 8848).into()).unwrap();

        assert!(!ip.is_unspecified());
        // Binding succeeds only for an address one of this host's interfaces holds.
        std::net::TcpListener::bind((ip, 0)).expect("the advertised address is local");
    }
}
