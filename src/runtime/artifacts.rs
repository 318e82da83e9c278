//! The compiled-artifact cache in `data_dir/functions/`: a component's native code, keyed
//! by the SHA-256 of its `.wasm` and the engine's compatibility hash
//! (`<sha256>-<engine>.cwasm`), shared by the config's functions and deployed versions.
//!
//! Loading from the cache skips Cranelift: start-up and reload take milliseconds instead of
//! seconds per function, and the compiler's code is never paged in (idle memory).
//!
//! A compiled artifact is native code that wasmtime loads without re-checking it, so it is
//! only loaded when it is authentically this node's: owned by this user, not writable by
//! others, and carrying an HMAC-SHA256 (`.cwasm.mac`) under a key kept outside `data_dir`
//! (`artifact_key_file`, by default `<data_dir>.key`, created 0600). The bytes checked are
//! the bytes loaded. Anything else is recompiled from the `.wasm` (and cached again).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// The cache directory and the key that authenticates what is in it.
pub struct Artifacts {
    dir: PathBuf,
    /// `None` (read-only, no key yet): nothing is loaded, everything is compiled.
    mac_key: Option<Vec<u8>>,
    /// False for `wasmgate check`: nothing is created or written.
    writable: bool,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts").field("dir", &self.dir).finish()
    }
}

/// The SHA-256 of `bytes`, as lowercase hex (a component's name in the cache).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Artifacts {
    /// Opens `dir` (creating it and the key when `writable`).
    pub fn open(dir: PathBuf, key_file: &Path, writable: bool) -> Result<Artifacts> {
        if writable {
            // `data_dir` itself and its `functions/`: both must be this user's alone.
            for d in dir.parent().into_iter().chain([dir.as_path()]) {
                crate::config::create_private_dir(d)
                    .with_context(|| format!("cannot use {}", d.display()))?;
            }
        }
        let mac_key = artifact_key(key_file, writable)?;
        Ok(Artifacts {
            dir,
            mac_key,
            writable,
        })
    }

    /// The directory components and artifacts are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cwasm_path(&self, engine: &wasmtime::Engine, sha: &str) -> PathBuf {
        let key = super::engine::engine_key(engine);
        self.dir.join(format!("{sha}-{key}.cwasm"))
    }

    /// The compiled component whose `.wasm` has digest `sha`: from the cache when an
    /// authentic artifact is there, else compiled from `wasm()` and cached. Returns whether
    /// it came from the cache. `wasm` must return the bytes whose digest is `sha`.
    pub fn compiled(
        &self,
        engine: &wasmtime::Engine,
        sha: &str,
        wasm: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(Component, bool)> {
        let cwasm = self.cwasm_path(engine, sha);
        if cwasm.exists() {
            match self.load_verified(engine, &cwasm) {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    "{}: compiled artifact not used ({e:#}); recompiling",
                    cwasm.display()
                ),
            }
        }
        let bytes = wasm()?;
        let component = super::compile_component(engine, &bytes)?;
        self.store(engine, &component, sha);
        Ok((component, false))
    }

    fn mac_path(cwasm: &Path) -> PathBuf {
        let mut p = cwasm.as_os_str().to_owned();
        p.push(".mac");
        PathBuf::from(p)
    }

    /// Loads a compiled artifact only if it is authentically this node's (see the module
    /// documentation); the bytes verified are the bytes deserialized.
    fn load_verified(&self, engine: &wasmtime::Engine, cwasm: &Path) -> Result<Component> {
        use std::os::unix::fs::MetadataExt;
        let key = self
            .mac_key
            .as_ref()
            .ok_or_else(|| anyhow!("no artifact key to check it with"))?;
        let meta = std::fs::symlink_metadata(cwasm)?;
        if !meta.is_file() {
            anyhow::bail!("not a regular file");
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            anyhow::bail!("not owned by this user");
        }
        if meta.mode() & 0o022 != 0 {
            anyhow::bail!("writable by others");
        }
        let bytes = std::fs::read(cwasm)?;
        let mac = std::fs::read_to_string(Self::mac_path(cwasm)).unwrap_or_default();
        let expected = hex::decode(mac.trim()).unwrap_or_default();
        let m = artifact_mac(key, cwasm, &bytes).map_err(|e| anyhow!("{e}"))?;
        hmac::Mac::verify_slice(m, &expected).map_err(|_| anyhow!("fails its integrity check"))?;
        load_precompiled(engine, &bytes)
    }

    /// Caches `component` (compiled from the `.wasm` with digest `sha`) with its HMAC.
    /// A failure is logged: the component still runs, it is compiled again next start.
    pub fn store(&self, engine: &wasmtime::Engine, component: &Component, sha: &str) {
        if !self.writable {
            return;
        }
        let Some(key) = &self.mac_key else { return };
        match component.serialize() {
            Ok(bytes) => {
                let cwasm = self.cwasm_path(engine, sha);
                let mac = artifact_mac(key, &cwasm, &bytes)
                    .map(|m| hex::encode(hmac::Mac::finalize(m).into_bytes()));
                let written = write_atomic(&cwasm, &bytes).and_then(|()| match mac {
                    Ok(mac) => write_atomic(&Self::mac_path(&cwasm), mac.as_bytes()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                });
                if let Err(e) = written {
                    tracing::warn!("cannot cache the compiled component {sha}: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialize the compiled component {sha}: {e}"),
        }
    }
}

/// The HMAC of an artifact: over its file name (the component's digest and the engine's key)
/// and then its bytes, so an authentic pair renamed to another digest or engine does not
/// load as that one.
fn artifact_mac(
    key: &[u8],
    cwasm: &Path,
    bytes: &[u8],
) -> Result<hmac::Hmac<Sha256>, hmac::digest::InvalidLength> {
    let name = cwasm
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut m = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key)?;
    hmac::Mac::update(&mut m, &(name.len() as u64).to_be_bytes());
    hmac::Mac::update(&mut m, name.as_bytes());
    hmac::Mac::update(&mut m, bytes);
    Ok(m)
}

/// Writes a file so that it is either absent or whole, and durable: a temporary name unique
/// to this write, fsync, rename, fsync of the directory (so the rename survives a crash).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let unique: u64 = rand::random();
    let tmp = path.with_extension(format!("tmp-{}-{unique:016x}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The key that authenticates compiled artifacts: read from `path`, or (when `create`)
/// made at first start, 32 random bytes as hex, mode 0600. `None` when it does not exist
/// and may not be created (`check`).
fn artifact_key(path: &Path, create: bool) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .map(Some)
            .map_err(|_| anyhow!("{}: not a hex artifact key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("{}: cannot create the artifact key", path.display()))?;
            file.write_all(hex::encode(key).as_bytes())?;
            file.sync_all()?;
            Ok(Some(key.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(
            "{}: cannot read the artifact key: {e}",
            path.display()
        )),
    }
}

/// Loads a compiled component written by [`Artifacts::store`].
#[allow(unsafe_code)]
fn load_precompiled(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component> {
    // SAFETY: `deserialize` trusts its input to be wasmtime's own output. These bytes were
    // just verified against an HMAC-SHA256 that only `Artifacts::store` produces (from
    // `Component::serialize`, under a key kept outside `data_dir`), read from a file owned
    // by this user and not writable by others; wasmtime also checks the header against
    // this engine's configuration and refuses a mismatch.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| anyhow!("{e}"))
}
