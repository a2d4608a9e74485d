//! Host-side bindings for the WIT contracts in `wit/`.
//!
//! `host` carries the traits for the `cordum:host` imports (implemented once by
//! the gateway); `policy`, `schema` and `pack` are the three plugin worlds and
//! reuse those import traits through `with`.

/// `cordum:host` imports: log, kv, config, velocity.
pub mod host {
    wasmtime::component::bindgen!({
        path: "../../wit/host",
        world: "cordum:host/plugin-host",
    });
}

/// `cordum:policy/policy-plugin`.
pub mod policy {
    wasmtime::component::bindgen!({
        path: ["../../wit/host", "../../wit/policy"],
        world: "cordum:policy/policy-plugin",
        with: {
            "cordum:host/log": crate::host::cordum::host::log,
            "cordum:host/config": crate::host::cordum::host::config,
            "cordum:host/velocity": crate::host::cordum::host::velocity,
        },
    });
}

/// `cordum:schema/schema-plugin`.
pub mod schema {
    wasmtime::component::bindgen!({
        path: ["../../wit/host", "../../wit/schema"],
        world: "cordum:schema/schema-plugin",
        with: {
            "cordum:host/log": crate::host::cordum::host::log,
        },
    });
}

/// `cordum:pack/pack-worker`.
pub mod pack {
    wasmtime::component::bindgen!({
        path: ["../../wit/host", "../../wit/pack"],
        world: "cordum:pack/pack-worker",
        with: {
            "cordum:host/log": crate::host::cordum::host::log,
            "cordum:host/kv": crate::host::cordum::host::kv,
            "cordum:host/config": crate::host::cordum::host::config,
        },
    });
}
