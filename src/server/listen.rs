//! Opening listening sockets with an accept queue sized for reconnect storms.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue length the listeners ask for. The kernel caps it at
/// `net.core.somaxconn`, which makes that sysctl the one setting to tune; a plain
/// `TcpListener::bind` would ask for 128, which a node restart's reconnect burst overflows.
const BACKLOG: u32 = 65_535;

/// Binds `host:port` and listens with [`BACKLOG`]. When `host` resolves to several
/// addresses, the first that can be bound is used.
pub(super) async fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match listen_on(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolves to no address")))
}

fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node can bind again while connections of its
    // previous run sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listens_on_a_free_port_and_accepts() {
        let listener = listen("127.0.0.1", 0).await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap(), accepted.unwrap().1);
    }

    #[tokio::test]
    async fn refuses_a_port_that_is_already_listening() {
        let first = listen("127.0.0.1", 0).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let error = listen("127.0.0.1", port).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
