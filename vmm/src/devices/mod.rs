//! Emulated devices and the buses that reach them.

pub mod bus;
pub mod legacy;
pub mod slots;
pub mod virtio;
