//! Integration tests of liebre-store: one binary, one module per concern.

mod common;
mod crash;
mod faults;
mod group_commit;
mod meta;
mod model;
mod read;
mod suite;
