//! The tower layers every frame passes through, in stack order:
//!
//! 1. [`auth`]: verifies tokens and attaches the identity; refuses what has none.
//! 2. [`rate_limit`]: token bucket per service instance (per connection in the server).
//! 3. [`heartbeat`]: answers heartbeats, hints at token refresh, enforces expiry.
//! 4. [`device_binding`]: REGISTER and logout: session registry, kicks, routes.
//!
//! Then the [`dispatch`](crate::dispatch) service. `auth` and `rate_limit` also guard plain
//! HTTP services: their request types are small traits implemented for [`Request`] and for
//! `http::Request<B>`.
//!
//! [`Request`]: crate::request::Request

pub mod auth;
pub mod device_binding;
pub mod heartbeat;
pub mod rate_limit;

pub use auth::{AuthLayer, JwtVerifier, TokenVerifier};
pub use device_binding::{DeviceBindingLayer, DeviceBindings};
pub use heartbeat::{HeartbeatLayer, HeartbeatSettings};
pub use rate_limit::RateLimitLayer;
