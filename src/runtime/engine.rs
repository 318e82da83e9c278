//! The wasmtime engine: pooling allocator sized from the config, and one engine-wide epoch
//! ticker that drives every store's deadline.

use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::Config;

/// How often the epoch advances. Deadlines are enforced to this granularity, and a guest
/// that never calls the host yields its thread at least this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Extra instance slots beyond `max_in_flight`, for work that is not a client request
/// (validation at start-up, later the async workers).
const SPARE_INSTANCES: usize = 8;

/// Builds the engine for a config.
///
/// The pool is sized from `limits.max_in_flight` (instances admitted at once) and the largest
/// `memory_mb`, instead of wasmtime's defaults that reserve terabytes of address space.
/// Memory and tables are kept resident and reset in place (with `PAGEMAP_SCAN` where the
/// kernel has it) because returning pages to the kernel on every request dominates the cost
/// of a fresh instance per request (measured in docs/operations.md, "Performance").
pub fn build_engine(config: &Config) -> Result<wasmtime::Engine> {
    let slots = config.limits.max_in_flight.get() + SPARE_INSTANCES;
    let slots = u32::try_from(slots).map_err(|_| anyhow!("max_in_flight is too large"))?;
    let max_memory = config
        .functions
        .iter()
        .map(|f| u64::from(f.memory_mb.get()) << 20)
        .max()
        .unwrap_or(0)
        // Room for deployed versions of functions the config does not list (128 MiB default).
        .max(128 << 20);

    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        // A Rust wasip2 component has a handful of core instances, one memory and a few
        // tables; these factors leave room for components from other toolchains.
        .total_core_instances(slots.saturating_mul(16))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .total_stacks(slots)
        .max_memories_per_component(2)
        .max_memory_size(max_memory as usize)
        .linear_memory_keep_resident((16 << 20).min(max_memory as usize))
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);

    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Slots are reset in place (kept resident); copy-on-write images would re-map them.
        .memory_init_cow(false)
        // Reserve only what a memory may use, plus a modest guard: explicit bounds checks
        // cost little next to instantiation, and the pool stays a few hundred GiB of
        // address space at most.
        .memory_reservation(max_memory)
        .memory_guard_size(32 << 20)
        .memory_reservation_for_growth(0);
    wasmtime::Engine::new(&cfg).map_err(|e| anyhow!("cannot create the wasm engine: {e}"))
}

/// Starts the one epoch ticker for `engine`. The thread ends when the engine is dropped.
pub fn start_epoch_ticker(engine: &wasmtime::Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmgate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| anyhow!("cannot start the epoch ticker: {e}"))?;
    Ok(())
}

/// The wasmtime release this binary embeds (pinned exactly in Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The engine's compatibility key: compiled artifacts are valid only for an engine with the
/// same key (wasmtime version, target, compilation settings), so the compiled cache is keyed
/// on it.
pub fn engine_key(engine: &wasmtime::Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn the_wasmtime_version_matches_the_cargo_pin() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!(
                "wasmtime = {{ version = \"={}\"",
                super::WASMTIME_VERSION
            )),
            "update WASMTIME_VERSION with the wasmtime pin in Cargo.toml"
        );
    }
}
