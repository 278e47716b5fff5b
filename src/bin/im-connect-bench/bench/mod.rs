//! The scenarios of `im-connect-bench`, callable from the binary and from the test suite.
//!
//! - [`client`]: connections from many loopback addresses, logins;
//! - [`wire`]: prebuilt client frames and a cheap scan of server frames;
//! - [`traffic`]: one reader task per connection, one pacer task for all sending;
//! - [`stats`]: counters, HDR histograms, the server's memory;
//! - [`idle`], [`relay`], [`fanout`]: the scenarios.

pub(crate) mod client;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod relay;
pub(crate) mod stats;
pub(crate) mod traffic;
pub(crate) mod wire;
