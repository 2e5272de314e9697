//! Types shared by the kernel side (`observer-ebpf`) and the agent (`observer`).
//!
//! Every probe and kernel hook sends one [`ProbeEvent`] through the ring buffer: a common
//! header, an id and a scalar, and up to five bounded strings, one per label, packed one
//! after another. The agent dispatches on [`EventHeader::kind`] alone. All types are
//! `#[repr(C)]` without implicit padding.
#![no_std]

pub mod abi;
mod event;
mod layout;
mod maps;

pub use event::*;
pub use layout::*;
pub use maps::*;
