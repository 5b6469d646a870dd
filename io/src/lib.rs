//! gray's I/O, shared by the module nginx loads and grayctl: connections to Redis of its own
//! ([`connection`]: RESP2 read under a byte bound; `connect`: a connect bounded whole; [`tls`];
//! [`sentinel`]), built from the options' plain data ([`endpoint`]); reading a key ([`read`]),
//! the record of its changes ([`changes`]) and one load of what a gateway loads ([`load`]); the one write path of every change
//! ([`change`]) and a rollout plan's moves on it ([`rollout`]); and this machine's [`host`]
//! name. What the bytes mean is gray-core's, which does no I/O.

pub mod change;
pub mod changes;
mod connect;
pub mod connection;
pub mod endpoint;
pub mod host;
pub mod load;
pub mod read;
pub mod rollout;
pub mod sentinel;
pub mod tls;
