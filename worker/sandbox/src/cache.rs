//! The two-tier component cache.
//!
//! A plugin's `.wasm` is compiled once with [`Engine::precompile_component`]
//! into a `.cwasm`, named by a key that covers the `.wasm`'s sha256 and
//! everything in the engine that changes code
//! ([`Engine::precompile_compatibility_hash`] plus Kiln's own settings).
//!
//! - The **baked** tier is read-only, filled by `kiln precompile` at image
//!   build time, so pods on a read-only root filesystem start warm.
//! - The **writable** tier is where this process stores what it compiles.
//!
//! `Component::deserialize_file` does not verify content, so every `.cwasm`
//! carries a sidecar `<key>.cwasm.sha256` that Kiln wrote, and the file's
//! digest is checked against it before deserializing. A stale, truncated,
//! corrupt or engine-incompatible entry is detected and recompiled, never
//! trusted. Writes go to a temp file that is renamed into place, so workers
//! sharing a directory never see half a file. A full or read-only cache
//! directory is not fatal: the component is compiled in memory and the log
//! says so.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::config::CacheConfig;

/// Bumped when the cache layout or Kiln's engine settings change meaning.
const CACHE_FORMAT: &str = "kiln-cwasm-v1";

/// Where a component came from on this load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheState {
    /// Loaded from the read-only baked tier.
    Baked,
    /// Loaded from the writable tier.
    Hit,
    /// Compiled, and stored in the writable tier.
    Compiled,
    /// Compiled in memory only: no writable tier, or it could not be written.
    CompiledInMemory,
}

impl CacheState {
    /// Its name, as serialized: `baked`, `hit`, `compiled` or
    /// `compiled-in-memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baked => "baked",
            Self::Hit => "hit",
            Self::Compiled => "compiled",
            Self::CompiledInMemory => "compiled-in-memory",
        }
    }

    /// Whether this load avoided a compile.
    pub fn is_hit(self) -> bool {
        matches!(self, Self::Baked | Self::Hit)
    }
}

/// A cache entry written (or found) by [`ComponentCache::precompile_into`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The `.cwasm` file.
    pub path: PathBuf,
    /// Whether a valid entry was already there (nothing was compiled).
    pub already_present: bool,
}

/// Why a cache entry was not used (logged, then recompiled).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("missing")]
    Missing,
    #[error("no digest sidecar")]
    NoSidecar,
    #[error("digest mismatch (corrupt or truncated)")]
    DigestMismatch,
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    #[error("incompatible with this engine: {0}")]
    Incompatible(String),
}

/// The cache, bound to one engine's settings.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    writable: Option<PathBuf>,
    baked: Option<PathBuf>,
    engine_key: [u8; 32],
}

/// Adapts sha256 to [`std::hash::Hasher`] so the engine's compatibility hash
/// can be folded into the cache key stably across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only `write` is used: the full digest is taken with `finalize`.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ComponentCache {
    /// A cache for `engine` over the configured directories.
    pub fn new(engine: &Engine, config: &CacheConfig) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.write(CACHE_FORMAT.as_bytes());
        // Kiln's own code-shaping settings: generated code differs with them.
        hasher.write(b"fuel=1;epoch=1;component-model=1");
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        Self {
            writable: config.dir.clone(),
            baked: config.baked_dir.clone(),
            engine_key: hasher.0.finalize().into(),
        }
    }

    /// The cache key of a `.wasm`: its sha256 combined with the engine's.
    pub fn key(&self, wasm: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.engine_key);
        h.update(Sha256::digest(wasm));
        hex::encode(h.finalize())
    }

    /// Path of the `.cwasm` for `key` in `dir`.
    pub fn entry_path(dir: &Path, key: &str) -> PathBuf {
        dir.join(format!("{key}.cwasm"))
    }

    fn sidecar_path(cwasm: &Path) -> PathBuf {
        let mut name = cwasm.as_os_str().to_owned();
        name.push(".sha256");
        PathBuf::from(name)
    }

    /// Loads `wasm` (read from `origin`) as a component: from the baked tier,
    /// else the writable tier, else by compiling it and storing the result.
    /// The error is wasmtime's, with its causes.
    pub fn load(
        &self,
        engine: &Engine,
        origin: &Path,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheState)> {
        let key = self.key(wasm);
        let tiers = [
            (self.baked.as_deref(), CacheState::Baked),
            (self.writable.as_deref(), CacheState::Hit),
        ];
        for (dir, state) in tiers {
            let Some(dir) = dir else { continue };
            let path = Self::entry_path(dir, &key);
            match load_entry(engine, &path) {
                Ok(component) => {
                    tracing::debug!(plugin = %origin.display(), cache = %path.display(), ?state, "component loaded from cache");
                    return Ok((component, state));
                }
                Err(EntryError::Missing) => {}
                Err(error) => {
                    tracing::warn!(plugin = %origin.display(), cache = %path.display(), %error, "cache entry rejected, recompiling");
                }
            }
        }

        // Compiling a large component takes seconds (a JS or Python one,
        // 12 to 18 MB, about 10 s on 2 cores): say so before, not after.
        let name = origin.file_stem().unwrap_or_default().to_string_lossy();
        tracing::info!(
            target: "kiln::compile",
            plugin = %name,
            wasm_bytes = wasm.len(),
            "compiling {name} ({:.1} MB), once",
            wasm.len() as f64 / 1e6
        );
        let started = std::time::Instant::now();
        let cwasm = engine.precompile_component(wasm)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        match self.store(&key, &cwasm) {
            Ok(Some(path)) => {
                tracing::info!(plugin = %origin.display(), cache = %path.display(), compile_ms, "component compiled and cached");
                // Map the entry just written rather than keep the compiled
                // bytes: its code is then file-backed, shared with other
                // workers and reclaimable, as on every warm start (a JS or
                // Python component is about 40 MB of it).
                // SAFETY: Kiln wrote this file a moment ago from this
                // engine's `precompile_component`, by an atomic rename; a
                // concurrent writer of the same key writes the same kind of
                // artifact the same way.
                #[allow(unsafe_code)]
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => return Ok((component, CacheState::Compiled)),
                    Err(error) => {
                        tracing::warn!(plugin = %origin.display(), cache = %path.display(), error = %format!("{error:#}"), "cannot map the entry just cached, keeping it in memory");
                    }
                }
            }
            Ok(None) => {}
            Err((path, error)) => {
                tracing::warn!(plugin = %origin.display(), cache = %path.display(), %error, compile_ms, "cannot write the component cache, compiled in memory");
            }
        }
        // SAFETY: these bytes were produced just now by this engine's
        // `precompile_component`; they never left this process.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &cwasm) }?;
        Ok((component, CacheState::CompiledInMemory))
    }

    /// Compiles `wasm` into `dir` (the baked tier at image build time, or
    /// the writable one), unless a valid entry is already there.
    pub fn precompile_into(
        &self,
        engine: &Engine,
        dir: &Path,
        wasm: &[u8],
    ) -> Result<CacheEntry, String> {
        let key = self.key(wasm);
        let path = Self::entry_path(dir, &key);
        if load_entry(engine, &path).is_ok() {
            return Ok(CacheEntry {
                path,
                already_present: true,
            });
        }
        let cwasm = engine
            .precompile_component(wasm)
            .map_err(|e| format!("{e:#}"))?;
        write_entry(dir, &key, &cwasm).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(CacheEntry {
            path,
            already_present: false,
        })
    }

    /// Stores a compiled entry in the writable tier, if there is one.
    fn store(&self, key: &str, cwasm: &[u8]) -> Result<Option<PathBuf>, (PathBuf, std::io::Error)> {
        let Some(dir) = self.writable.as_deref() else {
            return Ok(None);
        };
        write_entry(dir, key, cwasm)
            .map(Some)
            .map_err(|e| (dir.to_path_buf(), e))
    }
}

/// Verifies an entry's digest against its sidecar, then deserializes it.
fn load_entry(engine: &Engine, path: &Path) -> Result<Component, EntryError> {
    // Hashed as it streams: reading a 40 MB entry whole would leave a
    // 40 MB allocation behind in the worker's heap for the sake of a digest.
    let digest = match digest_file(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EntryError::Missing),
        Err(e) => return Err(EntryError::Io(e)),
    };
    let expected = match std::fs::read_to_string(ComponentCache::sidecar_path(path)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(EntryError::NoSidecar),
        Err(e) => return Err(EntryError::Io(e)),
    };
    if expected.trim() != digest {
        return Err(EntryError::DigestMismatch);
    }
    // SAFETY: the file's content matches the digest Kiln recorded when it
    // wrote the entry with `precompile_component`, and entries are only ever
    // replaced by an atomic rename, so this is a Kiln-written artifact. An
    // artifact from another engine configuration is still rejected by
    // wasmtime's own header check, which the `Err` arm below handles.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize_file(engine, path) };
    loaded.map_err(|e| EntryError::Incompatible(format!("{e:#}")))
}

/// The sha256 of a file, in hex, read in 64 KiB pieces.
fn digest_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `<key>.cwasm` and its sidecar atomically (temp file + rename).
fn write_entry(dir: &Path, key: &str, cwasm: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = ComponentCache::entry_path(dir, key);
    let digest = hex::encode(Sha256::digest(cwasm));
    atomic_write(dir, &path, cwasm)?;
    atomic_write(dir, &ComponentCache::sidecar_path(&path), digest.as_bytes())?;
    Ok(path)
}

/// Writes `path` by a rename of a synced temporary file. The entry is
/// world-readable (0644), like any file a build writes: a cache baked into
/// an image as root must load for the image's unprivileged user, and every
/// entry is verified by its digest before use anyway.
fn atomic_write(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        crate::engine::build_engine(&crate::SandboxConfig::default()).unwrap()
    }

    const COMPONENT: &str = r#"(component (core module (func (export "f"))))"#;

    fn cache(dir: &Path) -> ComponentCache {
        ComponentCache::new(
            &engine(),
            &CacheConfig {
                dir: Some(dir.to_path_buf()),
                baked_dir: None,
            },
        )
    }

    /// The mapping of `/proc/self/maps` that holds `addr`, if any.
    #[cfg(target_os = "linux")]
    fn mapping_of(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find(|line| {
                let range = line.split_whitespace().next().unwrap_or("");
                let Some((lo, hi)) = range.split_once('-') else {
                    return false;
                };
                let lo = usize::from_str_radix(lo, 16).unwrap_or(usize::MAX);
                let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
                (lo..hi).contains(&addr)
            })
            .map(str::to_owned)
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_component_compiled_now_is_mapped_from_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = cache(dir.path());
        let wasm = wat::parse_str(COMPONENT).unwrap();
        let (component, state) = cache.load(&engine, Path::new("t.wasm"), &wasm).unwrap();
        assert_eq!(state, CacheState::Compiled);
        let entry = ComponentCache::entry_path(dir.path(), &cache.key(&wasm));
        let mapping = mapping_of(component.image_range().start.addr()).unwrap();
        assert!(
            mapping.ends_with(&*entry.to_string_lossy()),
            "the code is not mapped from {}: {mapping}",
            entry.display()
        );

        // Compiled without a cache directory, it can only be in memory.
        let in_memory = ComponentCache::new(
            &engine,
            &CacheConfig {
                dir: None,
                baked_dir: None,
            },
        );
        let (component, state) = in_memory.load(&engine, Path::new("t.wasm"), &wasm).unwrap();
        assert_eq!(state, CacheState::CompiledInMemory);
        let mapping = mapping_of(component.image_range().start.addr()).unwrap();
        assert!(!mapping.contains(".cwasm"), "{mapping}");
    }

    #[test]
    fn second_load_hits_and_corruption_recompiles() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = ComponentCache::new(
            &engine,
            &CacheConfig {
                dir: Some(dir.path().to_path_buf()),
                baked_dir: None,
            },
        );
        let wasm = wat::parse_str(COMPONENT).unwrap();
        let origin = Path::new("t.wasm");
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Compiled
        );
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Hit
        );

        // Flip one byte: the digest no longer matches, so it is recompiled.
        let path = ComponentCache::entry_path(dir.path(), &cache.key(&wasm));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Compiled
        );
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Hit
        );

        // Truncate it: same.
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Compiled
        );

        // No sidecar: recompiled too.
        std::fs::remove_file(ComponentCache::sidecar_path(&path)).unwrap();
        assert_eq!(
            cache.load(&engine, origin, &wasm).unwrap().1,
            CacheState::Compiled
        );
    }

    #[test]
    fn entry_from_another_engine_config_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = cache(dir.path());
        let wasm = wat::parse_str(COMPONENT).unwrap();
        // Compiled by an engine without fuel, under this engine's key, with
        // a valid digest: only wasmtime's own header check can catch it.
        let mut other = wasmtime::Config::new();
        other.consume_fuel(false).epoch_interruption(false);
        let other = Engine::new(&other).unwrap();
        let foreign = other.precompile_component(&wasm).unwrap();
        write_entry(dir.path(), &cache.key(&wasm), &foreign).unwrap();
        let (_, state) = cache.load(&engine, Path::new("t.wasm"), &wasm).unwrap();
        assert_eq!(state, CacheState::Compiled);
        assert_eq!(
            cache.load(&engine, Path::new("t.wasm"), &wasm).unwrap().1,
            CacheState::Hit
        );
    }

    /// Entries are world-readable, so a cache baked as root loads for the
    /// image's unprivileged user.
    #[cfg(unix)]
    #[test]
    fn entries_are_world_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = write_entry(dir.path(), "k", b"bytes").unwrap();
        for file in [path.clone(), ComponentCache::sidecar_path(&path)] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{}", file.display());
        }
    }

    #[test]
    fn key_depends_on_the_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        assert_eq!(cache.key(b"a"), cache.key(b"a"));
        assert_ne!(cache.key(b"a"), cache.key(b"b"));
    }

    #[test]
    fn unwritable_dir_compiles_in_memory() {
        let file = tempfile::NamedTempFile::new().unwrap();
        // A regular file where the directory should be: every write fails.
        let engine = engine();
        let cache = ComponentCache::new(
            &engine,
            &CacheConfig {
                dir: Some(file.path().join("sub")),
                baked_dir: None,
            },
        );
        let wasm = wat::parse_str(COMPONENT).unwrap();
        let (_, state) = cache.load(&engine, Path::new("t.wasm"), &wasm).unwrap();
        assert_eq!(state, CacheState::CompiledInMemory);
    }
}
