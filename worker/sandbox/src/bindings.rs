//! The one place that runs `bindgen!` over `wit/`.
//!
//! The bindings are generated for the larger world, `batch-text-plugin`;
//! a plugin that exports only `plugin` is driven through the per-interface
//! `GuestIndices`, so one set of bindings serves both worlds.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "batch-text-plugin",
    exports: { default: async },
});
