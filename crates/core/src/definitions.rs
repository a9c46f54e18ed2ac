//! The seam through which durable definitions leave the core.
//!
//! The core calls a [`Definitions`] implementation after each change to a
//! durable exchange, durable queue or binding between durable ends, with no
//! core lock held. The server implements it over the store; tests may
//! record the calls. Exclusive queues are never reported: they die with
//! their connection, durable or not.

use crate::exchange::{Binding, Exchange};
use crate::queue::Queue;

/// Receives changes to durable definitions.
pub trait Definitions: Send + Sync + std::fmt::Debug {
    /// A durable exchange was created.
    fn exchange_declared(&self, vhost: &str, exchange: &Exchange);
    /// A durable exchange was deleted (its bindings go with it).
    fn exchange_deleted(&self, vhost: &str, name: &str);
    /// A durable, non-exclusive queue was created.
    fn queue_declared(&self, vhost: &str, queue: &Queue);
    /// A durable, non-exclusive queue was deleted (its bindings go with it).
    fn queue_deleted(&self, vhost: &str, name: &str);
    /// A binding between durable ends was added to exchange `source`.
    fn binding_added(&self, vhost: &str, source: &str, binding: &Binding);
    /// A binding between durable ends was removed from exchange `source`.
    fn binding_removed(&self, vhost: &str, source: &str, binding: &Binding);
    /// A vhost was created.
    fn vhost_added(&self, _name: &str) {}
    /// A vhost was deleted (with everything in it).
    fn vhost_deleted(&self, _name: &str) {}
}
