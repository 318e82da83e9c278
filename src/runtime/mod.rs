//! The function runtime: compiled, pre-instantiated components and one fresh instance per
//! invocation.
//!
//! The runtime knows nothing of triggers, authentication, admission or where an invocation
//! came from: [`Function::invoke`] takes a request for one function, already admitted by
//! the dispatcher, and returns the function's response or a [`RuntimeError`].

pub mod artifacts;
pub mod engine;
pub mod instance;
pub mod keyvalue;
pub mod log;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::config::{Config, FunctionConfig};
use crate::kv::Stores;
use artifacts::Artifacts;
pub use instance::{Host, Outcome};

/// How an invocation failed in the runtime. `crate::error` maps these to 502, 504 and 500.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The guest trapped (including running out of its memory cap) or reported an error.
    #[error("{0}")]
    Failed(String),
    /// The guest's response is unusable (none set, headers too large).
    #[error("{0}")]
    BadResponse(String),
    /// The guest passed its `timeout_ms`.
    #[error("{0}")]
    Timeout(String),
    /// A fault of the host, not of the guest: logged, never shown to a client.
    #[error("{0}")]
    Host(String),
}

/// Compiles a component for `engine` (no linking yet).
pub(crate) fn compile_component(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component> {
    Component::new(engine, bytes).map_err(|e| anyhow!("not a valid WebAssembly component: {e}"))
}

/// A compiled function, ready to instantiate.
pub struct Function {
    pub name: Arc<str>,
    /// The deployed version number, `None` for the config's own file (LATEST).
    pub version: Option<u32>,
    pub config: FunctionConfig,
    pre: ProxyPre<Host>,
    env: Arc<[(String, String)]>,
    outbound_hosts: Arc<[String]>,
    /// The buckets it may open with wasi:keyvalue.
    buckets: keyvalue::Buckets,
    /// Its wasi:config/store values.
    variables: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .finish()
    }
}

/// The engine and every function of the config.
pub struct Runtime {
    engine: wasmtime::Engine,
    linker: Linker<Host>,
    functions: HashMap<String, Arc<Function>>,
    /// The buckets functions may open (by name; each function its own list).
    stores: Arc<Stores>,
}

impl Runtime {
    /// Builds the engine, starts the epoch ticker and compiles every function, through the
    /// compiled cache when there is one (a function whose `.wasm` is unchanged is loaded,
    /// not compiled). Fails with a message naming the function and file at fault.
    ///
    /// The host offers wasi:http/proxy, wasi:keyvalue (store, atomics, batch) and
    /// wasi:config/store; a component is linked against only what it imports, and one that
    /// imports anything else is refused.
    pub fn new(
        config: &Config,
        artifacts: Option<&Artifacts>,
        stores: Arc<Stores>,
    ) -> Result<Runtime> {
        let engine = engine::build_engine(config)?;
        engine::start_epoch_ticker(&engine)?;
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("cannot link WASI: {e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("cannot link wasi:http: {e}"))?;
        keyvalue::add_to_linker(&mut linker, Host::keyvalue)
            .map_err(|e| anyhow!("cannot link wasi:keyvalue: {e}"))?;
        wasmtime_wasi_config::add_to_linker(&mut linker, Host::config)
            .map_err(|e| anyhow!("cannot link wasi:config: {e}"))?;
        let mut rt = Runtime {
            engine,
            linker,
            functions: HashMap::new(),
            stores,
        };
        let mut cached = 0;
        for f in &config.functions {
            let bytes = std::fs::read(&f.wasm).with_context(|| {
                format!("function '{}': cannot read {}", f.name, f.wasm.display())
            })?;
            let component = match artifacts {
                Some(a) => a.compiled(&rt.engine, &artifacts::sha256_hex(&bytes), || Ok(bytes)),
                None => rt.compile_component(&bytes).map(|c| (c, false)),
            };
            let function = component
                .and_then(|(c, from_cache)| {
                    cached += usize::from(from_cache);
                    rt.prepare(f, None, &c)
                })
                .with_context(|| format!("function '{}' ({})", f.name, f.wasm.display()))?;
            rt.functions.insert(f.name.clone(), Arc::new(function));
        }
        if !config.functions.is_empty() {
            tracing::info!(
                "{} configured functions ready ({cached} from the compiled cache)",
                config.functions.len()
            );
        }
        Ok(rt)
    }

    /// Compiles a component (no linking yet).
    pub fn compile_component(&self, bytes: &[u8]) -> Result<Component> {
        compile_component(&self.engine, bytes)
    }

    /// Links a compiled component against the wasi:http/proxy host and pre-instantiates it.
    pub fn prepare(
        &self,
        config: &FunctionConfig,
        version: Option<u32>,
        component: &Component,
    ) -> Result<Function> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow!(
                "imports an interface wasmgate does not provide (it offers wasi:http/proxy, wasi:keyvalue@0.2.0-draft and wasi:config@0.2.0-rc.1): {e}"
            )
        })?;
        let buckets = config
            .keyvalue
            .iter()
            .map(|name| {
                self.stores
                    .bucket(name)
                    .cloned()
                    .ok_or_else(|| anyhow!("bucket '{name}' is not declared"))
            })
            .collect::<Result<Vec<_>>>()?;
        let variables = config
            .variables
            .iter()
            .map(|v| (v.key.as_str(), v.value.as_str()))
            .collect();
        let pre = ProxyPre::new(pre)
            .map_err(|e| anyhow!("does not export wasi:http/incoming-handler: {e}"))?;
        Ok(Function {
            name: config.name.as_str().into(),
            version,
            config: config.clone(),
            pre,
            env: config.env.clone().into(),
            outbound_hosts: config.outbound_hosts.clone().into(),
            buckets: keyvalue::Buckets(buckets.into()),
            variables: Arc::new(variables),
        })
    }

    /// The same engine and host, without the config's functions: what a background task
    /// needs to prepare deployed versions.
    pub fn for_deploys(&self) -> Runtime {
        Runtime {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            functions: HashMap::new(),
            stores: self.stores.clone(),
        }
    }

    pub fn function(&self, name: &str) -> Option<&Arc<Function>> {
        self.functions.get(name)
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// The key-value buckets of this generation.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }
}
