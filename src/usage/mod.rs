//! Usage accounting: what a stream cost, read exactly from the provider's own frames, and where
//! the record of it goes.

pub mod array_inspector;
pub mod extract;
pub mod include_usage;
pub mod inspector;
pub mod ledger;
pub mod record;
