//! Live connections and who they belong to.
//!
//! A [`Connection`] is the shared context of one socket: identity, device binding, codec and
//! the bounded [`Outbox`] its writer drains. The [`SessionRegistry`] maps users to their bound
//! connections, one per device group, and decides who gets kicked.

mod connection;
mod outbox;
mod registry;

pub use connection::{Binding, Close, Connection, ConnectionInfo, Identity, KickReason, Transport};
pub use outbox::{Outbox, PushError};
pub use registry::{Displaced, SessionRegistry};
