//! The plugin runtime: engine and linker ([`engine`]), compile cache,
//! loaded plugins and the live plugins folder ([`registry`], read through
//! [`folder`]), and one
//! sandboxed delivery ([`sandbox`]).

pub mod cache;
pub mod convert;
pub mod engine;
pub mod folder;
pub mod plugin;
pub mod registry;
pub mod sandbox;

pub use plugin::LoadedPlugin;
pub use registry::{PluginStatus, Policy, Registry};
pub use sandbox::{deliver, Failure, Report};
