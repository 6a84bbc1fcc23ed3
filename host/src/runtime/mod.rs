//! The plugin runtime: engine and linker ([`engine`]), compile cache,
//! loaded plugins and the live plugins folder ([`registry`], read through
//! [`folder`], each plugin's tenants and policy from its [`sidecar`]), and one
//! sandboxed delivery ([`sandbox`], with what a trapped plugin printed from
//! [`last_words`]).

pub mod cache;
pub mod capture;
pub mod convert;
pub mod engine;
pub mod folder;
pub mod last_words;
pub mod plugin;
pub mod registry;
pub mod sandbox;
pub mod sidecar;

pub use plugin::LoadedPlugin;
pub use registry::{PluginStatus, Registry};
pub use sandbox::{deliver, Failure, Report};
pub use sidecar::Policy;
