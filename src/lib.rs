//! im-connect: the connection layer of an instant-messaging system.
//!
//! It holds clients' long-lived WebSocket and TCP connections, logs them in, keeps them alive,
//! forwards what they send to the backend and pushes what the backend sends back. The modules,
//! in the order a frame travels:
//!
//! - [`transport`]: sockets to frames ([`transport::tcp`], [`transport::ws`]) and the
//!   per-connection driver that turns frames into requests;
//! - [`protocol`]: the envelope, its JSON and protobuf codecs and the code tables;
//! - [`request`]: the [`Request`](request::Request) and [`Reply`](request::Reply) that flow
//!   through the stack;
//! - [`layer`]: the tower layers: auth, rate limit, heartbeat, device binding;
//! - [`dispatch`]: the end of the stack, publishing business messages;
//! - [`broker`]: where upstream messages go and downstream deliveries come from;
//! - [`session`]: connections, their outbound queues and the user registry;
//! - [`route`]: user → node routes; [`registry`]: service discovery;
//! - [`config`]: the typed configuration; [`server`]: the packaged server; [`admin`]: its
//!   HTTP endpoint (health, readiness, metrics, operator actions, web console).

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod broker;
pub mod config;
pub mod dispatch;
pub mod layer;
pub mod protocol;
pub mod registry;
pub mod request;
pub mod route;
pub mod server;
pub mod session;
pub mod transport;

pub use backend::BoxError;
