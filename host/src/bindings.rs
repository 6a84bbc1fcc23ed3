//! The one place that generates host bindings for the WIT world. It depends
//! on nothing of ours; the capabilities and the runtime both import it.

wasmtime::component::bindgen!({
    path: "../wit/since_v0.1.0",
    world: "plugin",
    imports: { default: trappable },
});

pub use self::exports::hookhost::plugin::handler;
pub use self::hookhost::plugin::{config, kv, log, messaging, sql, types};
