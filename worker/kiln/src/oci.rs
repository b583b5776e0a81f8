//! Plugin delivery from OCI registries (docs/PLUGINS.md, "From an OCI
//! registry"): `kiln plugins push` publishes a component in the CNCF Wasm
//! OCI layout, and the `[registry]` config pulls components by reference
//! into a content-addressed store under the writable cache, from which they
//! load next to `plugins_dir` through the hot-reload path.
//!
//! - **Verified, always:** the manifest's digest (against the reference's
//!   pin), every layer's digest and size (against the manifest), the media
//!   types, and `registry.max_bytes`, before anything reaches the store.
//! - **Pinned by digest:** a reference without a digest is refused unless
//!   `registry.require_digest = false`; a tag is then re-resolved on every
//!   refresh and a moved tag is a new version like any changed file.
//! - **Failures never take down what is serving:** a refused or unreachable
//!   artifact leaves the previous version (or the store's copy) in place; the
//!   refusal names the reference and shows in the log, the reload-failure
//!   counter and `kiln plugins` (as a load error).
//!
//! The store (`<cache>/oci/`): `blobs/sha256/<hex>` (manifests and layers,
//! written only after they verify), `refs/<slug>.json` (the last manifest
//! digest a configured reference resolved to), and `plugins/` (the
//! directory the reloader scans): `<slug>.wasm`, a symlink into `blobs/`,
//! with the plugin manifest `<slug>.toml` and the source `<slug>.oci.json`
//! beside it.
//!
//! It knows the sandbox's file conventions and the config, never the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kiln_sandbox::LoadError;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};

use crate::config::RegistryConfig;
use crate::metrics::JobMetrics;

/// The config media type of the CNCF Wasm OCI layout (what `wkg oci push`
/// writes).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component layer's media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The component layer's media type in the older `wasm-to-oci` layout, also
/// accepted on pull.
pub const LEGACY_WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The media type of the plugin manifest layer `kiln plugins push
/// --manifest` adds (the `<stem>.toml` of docs/PLUGINS.md).
pub const PLUGIN_MANIFEST_MEDIA_TYPE: &str = "application/vnd.kiln.plugin.manifest.v1+toml";
/// The OCI image manifest media type, the only manifest kind pulled.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why a reference could not be pushed, pulled or stored. Every variant
/// names the reference as configured.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Not an `oci://HOST[:PORT]/REPO[:TAG][@sha256:…]` reference.
    #[error("{reference}: not a valid OCI reference")]
    Parse {
        /// The reference as given.
        reference: String,
        /// What the parser said.
        #[source]
        source: oci_client::ParseError,
    },
    /// A tag without a digest while `registry.require_digest` is true.
    #[error(
        "{reference}: refused: the reference has no digest (pin it with @sha256:…, or set registry.require_digest = false)"
    )]
    Unpinned {
        /// The reference.
        reference: String,
    },
    /// The registry could not be reached or refused the request.
    #[error("{reference}: registry request failed ({what})")]
    Registry {
        /// The reference.
        reference: String,
        /// What was being fetched or sent.
        what: String,
        /// The client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// Content does not match its digest.
    #[error("{reference}: refused: {what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The manifest, or which layer.
        what: String,
        /// The digest the reference or the manifest names.
        expected: String,
        /// The digest of what the registry served.
        actual: String,
    },
    /// The registry served content that does not match its digest (found
    /// by the client while it read it).
    #[error("{reference}: refused: {what} does not match its digest")]
    Corrupt {
        /// The reference.
        reference: String,
        /// The manifest, or which layer.
        what: String,
        /// The client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// A manifest or layer of a kind Kiln does not load.
    #[error("{reference}: refused: {message}")]
    Layout {
        /// The reference.
        reference: String,
        /// What is wrong with the artifact.
        message: String,
    },
    /// Larger than `registry.max_bytes`.
    #[error("{reference}: refused: {what} is {size} bytes, over registry.max_bytes ({max})")]
    TooLarge {
        /// The reference.
        reference: String,
        /// The manifest, or which layer.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store could not be read or written.
    #[error("{reference}: cannot use the store at {}", path.display())]
    Store {
        /// The reference.
        reference: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A local file (the component, its manifest, the auth file) could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The auth file is not a docker `config.json`.
    #[error("{}: not a docker config.json: {message}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A parsed `oci://` reference, with the text it was given as.
#[derive(Debug, Clone)]
pub struct OciRef {
    given: String,
    reference: Reference,
}

impl OciRef {
    /// Parses `oci://HOST[:PORT]/REPO[:TAG][@sha256:…]` (the `oci://` is
    /// optional).
    pub fn parse(text: &str) -> Result<Self, OciError> {
        let bare = text.strip_prefix("oci://").unwrap_or(text);
        let reference = bare
            .parse::<Reference>()
            .map_err(|source| OciError::Parse {
                reference: text.to_owned(),
                source,
            })?;
        Ok(Self {
            given: text.to_owned(),
            reference,
        })
    }

    /// The reference as given.
    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The same repository at `digest`.
    fn at(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            digest.to_owned(),
        )
    }

    /// `HOST[:PORT]/REPO`, without tag or digest.
    fn repository(&self) -> String {
        format!("{}/{}", self.registry(), self.reference.repository())
    }

    /// A file name for this reference's plugin in the store: its
    /// repository's last segment and a hash of the repository, so a new
    /// tag or digest of the same repository replaces the file in place
    /// (the hot-reload path swaps versions without a gap).
    fn repository_slug(&self) -> String {
        let last = self
            .reference
            .repository()
            .rsplit('/')
            .next()
            .unwrap_or("plugin");
        let clean: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = hex::encode(Sha256::digest(self.repository().as_bytes()));
        format!("{clean}-{}", &hash[..12])
    }

    /// A key for this exact reference (tag and digest included).
    fn key(&self) -> String {
        hex::encode(Sha256::digest(self.given.as_bytes()))
    }
}

/// The plugin file names of `refs`, in order: by repository, except that a
/// second reference to the same repository (a canary beside its stable
/// version) gets a name of its own.
pub fn slugs(refs: &[OciRef]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    refs.iter()
        .map(|r| {
            let slug = r.repository_slug();
            if seen.insert(r.repository()) {
                slug
            } else {
                format!("{slug}-{}", &r.key()[..8])
            }
        })
        .collect()
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `registry` (`HOST[:PORT]`) is on loopback, where plain HTTP is
/// always allowed.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A registry client for `refs`: HTTPS, except the `insecure` registries
/// and those on loopback.
fn client(config: &RegistryConfig, refs: &[&OciRef]) -> Client {
    // reqwest is built without a default crypto provider: use ring, as lapin
    // and the OTLP exporter do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut plain: BTreeSet<String> = config.insecure.iter().cloned().collect();
    plain.extend(
        refs.iter()
            .map(|r| r.registry().to_owned())
            .filter(|r| is_loopback(r)),
    );
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain.into_iter().collect()),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

/// A docker `config.json`: `{"auths": {"HOST[:PORT]": {"auth": base64(user:pass)}}}`
/// (or `username` and `password`).
#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The credentials of `auth_file` for `registry` (anonymous if the file has
/// none for it).
fn auth_for(auth_file: Option<&Path>, registry: &str) -> Result<RegistryAuth, OciError> {
    use base64::Engine as _;
    let Some(path) = auth_file else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = std::fs::read_to_string(path).map_err(|source| OciError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: String| OciError::AuthFile {
        path: path.to_owned(),
        message,
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let entry = config.auths.iter().find(|(key, _)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/').next() == Some(registry)
    });
    let Some((_, entry)) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = &entry.identitytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    let Some(encoded) = &entry.auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| bad(format!("auths.{registry}.auth: {e}")))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| bad(format!("auths.{registry}.auth: not UTF-8")))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad(format!("auths.{registry}.auth: not user:password")))?;
    Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
}

/// The `component` part of the Wasm OCI config: the component's top-level
/// imports and exports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// Imported interface names (`wasi:io/streams@0.2.6`, …).
    pub imports: Vec<String>,
    /// Exported interface names (`kiln:plugin/plugin@0.1.0`, …).
    pub exports: Vec<String>,
    /// The world it targets, when known (`null` here, as `wkg` writes it
    /// for a component without one).
    pub target: Option<String>,
}

/// The config blob of the CNCF Wasm OCI layout
/// (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When it was pushed (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The digests of the layers, in order.
    pub layer_digests: Vec<String>,
    /// The component's imports and exports.
    pub component: ComponentInfo,
}

/// The top-level imports and exports of a component binary.
pub fn component_info(wasm: &[u8]) -> Result<ComponentInfo, String> {
    use wasmparser::{Parser, Payload};
    let mut info = ComponentInfo::default();
    let mut depth = 0usize;
    let mut component = false;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 {
                    component = encoding == wasmparser::Encoding::Component;
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    info.imports
                        .push(import.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    info.exports
                        .push(export.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if !component {
        return Err("not a WebAssembly component".to_owned());
    }
    Ok(info)
}

/// What `kiln plugins push` sends.
#[derive(Debug)]
pub struct PushRequest<'a> {
    /// The component.
    pub wasm: &'a Path,
    /// Its manifest, pushed as a second layer.
    pub manifest: Option<&'a Path>,
    /// Where to.
    pub target: &'a OciRef,
}

/// Pushes a component (and its manifest) in the CNCF Wasm OCI layout;
/// returns the manifest digest the registry stored it under.
pub async fn push(config: &RegistryConfig, request: &PushRequest<'_>) -> Result<String, OciError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| OciError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let target = request.target;
    let wasm = read(request.wasm)?;
    let info = component_info(&wasm).map_err(|message| OciError::Layout {
        reference: target.to_string(),
        message: format!("{}: {message}", request.wasm.display()),
    })?;
    let mut layers = vec![ImageLayer::new(
        wasm,
        WASM_LAYER_MEDIA_TYPE.to_owned(),
        None,
    )];
    if let Some(manifest) = request.manifest {
        layers.push(ImageLayer::new(
            read(manifest)?,
            PLUGIN_MANIFEST_MEDIA_TYPE.to_owned(),
            None,
        ));
    }
    let wasm_config = WasmConfig {
        created: None,
        architecture: "wasm".to_owned(),
        os: "wasip2".to_owned(),
        layer_digests: layers.iter().map(ImageLayer::sha256_digest).collect(),
        component: info,
    };
    let data = serde_json::to_vec(&wasm_config).map_err(|e| OciError::Layout {
        reference: target.to_string(),
        message: format!("cannot write the config: {e}"),
    })?;
    let oci_config = Config::new(data, WASM_CONFIG_MEDIA_TYPE.to_owned(), None);
    let mut manifest = OciImageManifest::build(&layers, &oci_config, None);
    manifest.artifact_type = Some("application/vnd.wasm.component.v1+wasm".to_owned());
    let auth = auth_for(config.auth_file.as_deref(), target.registry())?;
    let client = client(config, &[target]);
    let registry_error = |what: &str| {
        let reference = target.to_string();
        let what = what.to_owned();
        move |source| OciError::Registry {
            reference,
            what,
            source,
        }
    };
    client
        .push(
            &target.reference,
            &layers,
            oci_config,
            &auth,
            Some(manifest),
        )
        .await
        .map_err(registry_error("push"))?;
    client
        .fetch_manifest_digest(&target.reference, &auth)
        .await
        .map_err(registry_error("manifest digest"))
}

/// A verified artifact.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest digest.
    pub digest: String,
    /// The raw manifest.
    pub manifest: Vec<u8>,
    /// The component.
    pub wasm: Vec<u8>,
    /// The plugin manifest layer, if any.
    pub plugin_manifest: Option<Vec<u8>>,
}

/// Pulls `reference` and verifies all of it: the manifest's digest against
/// the pin (if any), its media types and sizes, and every layer's digest
/// and size against the manifest.
pub async fn pull(
    config: &RegistryConfig,
    client: &Client,
    reference: &OciRef,
) -> Result<Pulled, OciError> {
    let name = || reference.to_string();
    if reference.digest().is_none() && config.require_digest {
        return Err(OciError::Unpinned { reference: name() });
    }
    let auth = auth_for(config.auth_file.as_deref(), reference.registry())?;
    let registry_error = |what: String| move |source| fetch_error(name(), what, source);
    let (raw, _) = client
        .pull_manifest_raw(&reference.reference, &auth, &[OCI_MANIFEST_MEDIA_TYPE])
        .await
        .map_err(registry_error("manifest".to_owned()))?;
    let max = config.max_bytes;
    if raw.len() as u64 > max {
        return Err(OciError::TooLarge {
            reference: name(),
            what: "the manifest".to_owned(),
            size: raw.len() as u64,
            max,
        });
    }
    let digest = sha256_digest(&raw);
    if let Some(pinned) = reference.digest()
        && pinned != digest
    {
        return Err(OciError::DigestMismatch {
            reference: name(),
            what: "manifest".to_owned(),
            expected: pinned.to_owned(),
            actual: digest,
        });
    }
    let layout = |message: String| OciError::Layout {
        reference: name(),
        message,
    };
    let manifest: OciImageManifest = serde_json::from_slice(&raw)
        .map_err(|e| layout(format!("not an OCI image manifest: {e}")))?;
    if let Some(kind) = manifest
        .media_type
        .as_deref()
        .filter(|m| *m != OCI_MANIFEST_MEDIA_TYPE)
    {
        return Err(layout(format!(
            "manifest media type {kind}, expected {OCI_MANIFEST_MEDIA_TYPE}"
        )));
    }
    let mut wasm_layer = None;
    let mut manifest_layer = None;
    for layer in &manifest.layers {
        match layer.media_type.as_str() {
            WASM_LAYER_MEDIA_TYPE | LEGACY_WASM_LAYER_MEDIA_TYPE if wasm_layer.is_none() => {
                wasm_layer = Some(layer);
            }
            PLUGIN_MANIFEST_MEDIA_TYPE if manifest_layer.is_none() => manifest_layer = Some(layer),
            other => {
                return Err(layout(format!(
                    "unexpected layer {} of media type {other} (a plugin artifact has one {WASM_LAYER_MEDIA_TYPE} layer and at most one {PLUGIN_MANIFEST_MEDIA_TYPE} layer)",
                    layer.digest
                )));
            }
        }
    }
    let Some(wasm_layer) = wasm_layer else {
        return Err(layout(format!("no {WASM_LAYER_MEDIA_TYPE} layer")));
    };
    // The registry sees the repository at the verified digest from here on:
    // a tag moved meanwhile cannot mix two versions.
    let pinned = reference.at(&digest);
    let wasm = pull_layer(client, &pinned, reference, wasm_layer, max).await?;
    let plugin_manifest = match manifest_layer {
        Some(layer) => Some(pull_layer(client, &pinned, reference, layer, max).await?),
        None => None,
    };
    Ok(Pulled {
        digest,
        manifest: raw.to_vec(),
        wasm,
        plugin_manifest,
    })
}

/// A failed fetch: content that did not match its digest is a refusal, the
/// rest a registry error (an outage, for the store's fallback).
fn fetch_error(
    reference: String,
    what: String,
    source: oci_client::errors::OciDistributionError,
) -> OciError {
    use oci_client::errors::OciDistributionError as E;
    match source {
        E::DigestError(_) => OciError::Corrupt {
            reference,
            what,
            source,
        },
        source => OciError::Registry {
            reference,
            what,
            source,
        },
    }
}

/// One layer, checked against its descriptor's size and digest.
async fn pull_layer(
    client: &Client,
    pinned: &Reference,
    reference: &OciRef,
    layer: &OciDescriptor,
    max: u64,
) -> Result<Vec<u8>, OciError> {
    let what = format!("layer {}", layer.digest);
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > max {
        return Err(OciError::TooLarge {
            reference: reference.to_string(),
            what,
            size,
            max,
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    client
        .pull_blob(pinned, layer, &mut data)
        .await
        .map_err(|source| fetch_error(reference.to_string(), what.clone(), source))?;
    let actual = sha256_digest(&data);
    if actual != layer.digest {
        return Err(OciError::DigestMismatch {
            reference: reference.to_string(),
            what,
            expected: layer.digest.clone(),
            actual,
        });
    }
    if data.len() as u64 != size {
        return Err(OciError::Layout {
            reference: reference.to_string(),
            message: format!("{what} is {} bytes, the manifest says {size}", data.len()),
        });
    }
    Ok(data)
}

/// Where a plugin in the store came from (`<slug>.oci.json`); `kiln
/// plugins` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The reference as configured.
    pub reference: String,
    /// The manifest digest it serves.
    pub digest: String,
}

impl Source {
    /// The source of a plugin file, if it came from a registry.
    pub fn of(wasm: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(wasm.with_extension("oci.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The content-addressed store under `<cache>/oci/`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store of `config`: `<sandbox.cache.dir>/oci`, or
    /// `<tmp>/kiln-oci` when the cache is memory only.
    pub fn for_config(cache_dir: Option<&Path>) -> Self {
        let root = match cache_dir {
            Some(dir) => dir.join("oci"),
            None => std::env::temp_dir().join("kiln-oci"),
        };
        Self { root }
    }

    /// The store at `root`.
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The directory the reloader scans, next to `plugins_dir`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// The plugin file of slug `slug` (see [`slugs`]).
    pub fn plugin_path(&self, slug: &str) -> PathBuf {
        self.plugins_dir().join(format!("{slug}.wasm"))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs").join("sha256").join(hex)
    }

    fn ref_path(&self, reference: &OciRef) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", reference.key()))
    }

    /// The digest the store last resolved `reference` to, if its blobs are
    /// all present (a warm store).
    pub fn resolved(&self, reference: &OciRef) -> Option<String> {
        let text = std::fs::read_to_string(self.ref_path(reference)).ok()?;
        let source: Source = serde_json::from_str(&text).ok()?;
        (source.reference == reference.as_str() && self.blob_path(&source.digest).exists())
            .then_some(source.digest)
    }

    /// Writes `bytes` as the blob `digest` (checked again), atomically.
    fn put_blob(
        &self,
        reference: &OciRef,
        digest: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, OciError> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(path);
        }
        write_atomic(&path, bytes).map_err(|source| OciError::Store {
            reference: reference.to_string(),
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Stores a verified artifact and records what `reference` resolved to.
    pub fn put(&self, reference: &OciRef, pulled: &Pulled) -> Result<(), OciError> {
        self.put_blob(reference, &pulled.digest, &pulled.manifest)?;
        self.put_blob(reference, &sha256_digest(&pulled.wasm), &pulled.wasm)?;
        if let Some(toml) = &pulled.plugin_manifest {
            self.put_blob(reference, &sha256_digest(toml), toml)?;
        }
        let source = Source {
            reference: reference.to_string(),
            digest: pulled.digest.clone(),
        };
        let path = self.ref_path(reference);
        write_atomic(&path, &serde_json::to_vec(&source).unwrap_or_default()).map_err(|source| {
            OciError::Store {
                reference: reference.to_string(),
                path,
                source,
            }
        })
    }

    /// The stored artifact `digest` (its manifest re-read and its blobs
    /// re-hashed).
    pub fn get(&self, reference: &OciRef, digest: &str) -> Result<Pulled, OciError> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| OciError::Store {
                reference: reference.to_string(),
                path,
                source,
            })
        };
        let mismatch = |what: String, expected: &str, actual: String| OciError::DigestMismatch {
            reference: reference.to_string(),
            what: format!("stored {what}"),
            expected: expected.to_owned(),
            actual,
        };
        let raw = read(self.blob_path(digest))?;
        let actual = sha256_digest(&raw);
        if actual != digest {
            return Err(mismatch("manifest".into(), digest, actual));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).map_err(|e| OciError::Layout {
                reference: reference.to_string(),
                message: format!("stored manifest: {e}"),
            })?;
        let mut wasm = None;
        let mut plugin_manifest = None;
        for layer in &manifest.layers {
            let bytes = read(self.blob_path(&layer.digest))?;
            let actual = sha256_digest(&bytes);
            if actual != layer.digest {
                return Err(mismatch(
                    format!("layer {}", layer.digest),
                    &layer.digest,
                    actual,
                ));
            }
            match layer.media_type.as_str() {
                PLUGIN_MANIFEST_MEDIA_TYPE => plugin_manifest = Some(bytes),
                _ => wasm = Some(bytes),
            }
        }
        Ok(Pulled {
            digest: digest.to_owned(),
            manifest: raw,
            wasm: wasm.unwrap_or_default(),
            plugin_manifest,
        })
    }

    /// Points `reference`'s plugin file at the stored artifact: the
    /// manifest (or its absence) first, then the source, then the component
    /// link swapped in by one rename. Returns whether anything changed.
    pub fn activate(
        &self,
        reference: &OciRef,
        slug: &str,
        pulled: &Pulled,
    ) -> Result<bool, OciError> {
        let store_error = |path: &Path| {
            let reference = reference.to_string();
            let path = path.to_path_buf();
            move |source| OciError::Store {
                reference,
                path,
                source,
            }
        };
        let wasm_path = self.plugin_path(slug);
        let blob = self.blob_path(&sha256_digest(&pulled.wasm));
        let source = Source {
            reference: reference.to_string(),
            digest: pulled.digest.clone(),
        };
        if std::fs::read_link(&wasm_path).ok().as_deref() == Some(blob.as_path())
            && Source::of(&wasm_path).as_ref() == Some(&source)
        {
            return Ok(false);
        }
        let toml_path = kiln_sandbox::manifest::path_for(&wasm_path);
        match &pulled.plugin_manifest {
            Some(toml) => write_atomic(&toml_path, toml).map_err(store_error(&toml_path))?,
            None => match std::fs::remove_file(&toml_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(store_error(&toml_path)(e));
                }
                _ => {}
            },
        }
        let source_path = wasm_path.with_extension("oci.json");
        write_atomic(
            &source_path,
            &serde_json::to_vec(&source).unwrap_or_default(),
        )
        .map_err(store_error(&source_path))?;
        let tmp = wasm_path.with_extension("wasm.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&blob, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &wasm_path))
            .map_err(store_error(&wasm_path))?;
        Ok(true)
    }

    /// Removes the plugin files of references no longer configured (their
    /// plugins drain); the blobs stay for a roll back.
    pub fn deactivate_others(&self, keep: &BTreeSet<PathBuf>) {
        let Ok(files) = kiln_sandbox::wasm_files(&self.plugins_dir()) else {
            return;
        };
        for wasm in files.into_iter().filter(|f| !keep.contains(f)) {
            tracing::info!(path = %wasm.display(), "registry plugin no longer configured; removing it");
            let _ = std::fs::remove_file(&wasm);
            let _ = std::fs::remove_file(kiln_sandbox::manifest::path_for(&wasm));
            let _ = std::fs::remove_file(wasm.with_extension("oci.json"));
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The registry errors the reloader publishes with its own, and a wake-up
/// for it when they or the store's plugin files change.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    errors: Arc<Mutex<(u64, Vec<LoadError>)>>,
    wake: Arc<Notify>,
}

impl Shared {
    /// The current refusals and their generation (bumped on every change).
    pub fn errors(&self) -> (u64, Vec<LoadError>) {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_errors(&self, errors: Vec<LoadError>) {
        let mut guard = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let same = guard.1.len() == errors.len()
            && guard
                .1
                .iter()
                .zip(&errors)
                .all(|(a, b)| a.report() == b.report());
        if !same {
            guard.0 += 1;
            guard.1 = errors;
        }
    }

    /// Resolves when the syncer changed something.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A refusal as the load error `kiln plugins` and `/plugins` show: the
/// "path" is the reference.
fn as_load_error(error: &OciError, reference: &str) -> LoadError {
    LoadError::Read {
        path: PathBuf::from(reference),
        source: Arc::new(std::io::Error::other(report(error))),
    }
}

/// The error and its causes, `: `-joined.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// Keeps the store's plugin files in step with `[registry] plugins`.
#[derive(Debug)]
pub struct Syncer {
    config: RegistryConfig,
    store: Store,
    shared: Shared,
    metrics: Option<JobMetrics>,
}

/// What one sync found.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// The plugin files of the configured references that are in place.
    pub active: Vec<PathBuf>,
    /// The refusals and outages (already logged).
    pub errors: Vec<OciError>,
}

impl Syncer {
    /// A syncer for `config`, storing into `store`.
    pub fn new(config: RegistryConfig, store: Store) -> Self {
        Self {
            config,
            store,
            shared: Shared::default(),
            metrics: None,
        }
    }

    /// Counts refusals in the reload-failure counter.
    #[must_use]
    pub fn with_metrics(mut self, metrics: JobMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// What the reloader reads.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The plugin files the worker must serve before it is ready: those of
    /// the configured references not in `ready_without`.
    pub fn required(&self) -> Vec<PathBuf> {
        required(&self.config, &self.store)
    }

    /// Pulls what the configured references resolve to (a pinned digest
    /// already in the store is not fetched again), verifies it, and points
    /// the store's plugin files at it. A reference that cannot be pulled
    /// keeps what the store has (said in the log); a refused one is
    /// reported, and its previous version keeps serving.
    pub async fn sync(&mut self) -> SyncReport {
        if let Some(file) = self.config.config_file.clone() {
            match crate::config::KilnConfig::load(Some(&file)) {
                Ok(mut config) => {
                    config.registry.config_file = Some(file.clone());
                    if config.registry != self.config {
                        tracing::info!(file = %file.display(), "registry config changed");
                        self.config = config.registry;
                    }
                }
                Err(error) => {
                    tracing::warn!(file = %file.display(), error = %report(&error), "cannot re-read the config; keeping the registry settings");
                }
            }
        }
        let mut report = SyncReport::default();
        let mut refs = Vec::new();
        for text in &self.config.plugins {
            match OciRef::parse(text) {
                Ok(reference) => refs.push(reference),
                Err(error) => report.errors.push(error),
            }
        }
        let client = client(&self.config, &refs.iter().collect::<Vec<_>>());
        let mut keep = BTreeSet::new();
        let mut changed = false;
        for (reference, slug) in refs.iter().zip(slugs(&refs)) {
            let path = self.store.plugin_path(&slug);
            keep.insert(path.clone());
            match self.sync_one(&client, reference, &slug).await {
                Ok(activated) => {
                    changed |= activated;
                    report.active.push(path);
                }
                Err(error) => {
                    if path.exists() {
                        report.active.push(path);
                    }
                    report.errors.push(error);
                }
            }
        }
        self.store.deactivate_others(&keep);
        for error in &report.errors {
            tracing::error!(error = %report_of(error), "registry plugin refused or unavailable; the version in place (if any) keeps serving");
            if let Some(m) = &self.metrics {
                m.reload_failed();
            }
        }
        self.shared.set_errors(
            report
                .errors
                .iter()
                .map(|e| as_load_error(e, &reference_of(e)))
                .collect(),
        );
        if changed || !report.errors.is_empty() {
            self.shared.wake();
        }
        report
    }

    async fn sync_one(
        &self,
        client: &Client,
        reference: &OciRef,
        slug: &str,
    ) -> Result<bool, OciError> {
        let pulled = fetch_with(&self.config, &self.store, client, reference).await?;
        self.store.activate(reference, slug, &pulled)
    }

    /// Runs [`Syncer::sync`] every `registry.refresh_ms` until `stop`.
    pub fn spawn(mut self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let period = Duration::from_millis(self.config.refresh_ms.max(100));
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    () = tokio::time::sleep(period) => {}
                }
                self.sync().await;
            }
        })
    }
}

/// The verified artifact `reference` resolves to, from the store when a
/// pinned digest is already there, else pulled, verified and stored. A
/// registry outage falls back on the store's copy (said in the log).
pub async fn fetch(
    config: &RegistryConfig,
    store: &Store,
    reference: &OciRef,
) -> Result<Pulled, OciError> {
    let client = client(config, &[reference]);
    fetch_with(config, store, &client, reference).await
}

async fn fetch_with(
    config: &RegistryConfig,
    store: &Store,
    client: &Client,
    reference: &OciRef,
) -> Result<Pulled, OciError> {
    if let Some(digest) = reference.digest()
        && store.resolved(reference).as_deref() == Some(digest)
        && let Ok(pulled) = store.get(reference, digest)
    {
        return Ok(pulled);
    }
    let started = std::time::Instant::now();
    match pull(config, client, reference).await {
        Ok(pulled) => {
            tracing::info!(reference = %reference, digest = %pulled.digest, bytes = pulled.wasm.len(), pull_ms = started.elapsed().as_millis() as u64, "registry plugin pulled and verified");
            store.put(reference, &pulled)?;
            Ok(pulled)
        }
        Err(error @ OciError::Registry { .. }) => {
            // An outage: serve what the store has, and say so.
            let Some(digest) = store.resolved(reference) else {
                return Err(error);
            };
            let pulled = store.get(reference, &digest)?;
            tracing::warn!(reference = %reference, digest = %digest, error = %report(&error), "registry unreachable; serving the stored copy");
            Ok(pulled)
        }
        Err(error) => Err(error),
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The `Ref` is dropped here: it must not live across an await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// The plugin files `config` requires before the worker is ready.
pub fn required(config: &RegistryConfig, store: &Store) -> Vec<PathBuf> {
    let refs: Vec<OciRef> = config
        .plugins
        .iter()
        .filter_map(|r| OciRef::parse(r).ok())
        .collect();
    refs.iter()
        .zip(slugs(&refs))
        .filter(|(r, _)| !config.ready_without.iter().any(|w| w == r.as_str()))
        .map(|(_, slug)| store.plugin_path(&slug))
        .collect()
}

fn report_of(error: &OciError) -> String {
    report(error)
}

/// The reference an error names (the auth file's path for its own errors).
fn reference_of(error: &OciError) -> String {
    match error {
        OciError::Parse { reference, .. }
        | OciError::Unpinned { reference }
        | OciError::Registry { reference, .. }
        | OciError::DigestMismatch { reference, .. }
        | OciError::Corrupt { reference, .. }
        | OciError::Layout { reference, .. }
        | OciError::TooLarge { reference, .. }
        | OciError::Store { reference, .. } => reference.clone(),
        OciError::Read { path, .. } | OciError::AuthFile { path, .. } => path.display().to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_or_without_the_scheme() {
        let r = OciRef::parse("oci://127.0.0.1:5000/team/rot13:0.3.1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert!(r.digest().unwrap().starts_with("sha256:0123"));
        let bare = OciRef::parse("127.0.0.1:5000/team/rot13:0.3.1").unwrap();
        assert_eq!(bare.digest(), None);
        let other = OciRef::parse("127.0.0.1:5000/team/upper:1").unwrap();
        // A new tag or digest of a repository keeps its file; a second
        // reference to it (a canary) gets its own.
        let one = slugs(std::slice::from_ref(&r));
        assert!(one[0].starts_with("rot13-"), "{one:?}");
        assert_eq!(slugs(std::slice::from_ref(&bare)), one);
        let three = slugs(&[r.clone(), other, bare]);
        assert_eq!(three[0], one[0]);
        assert!(three[1].starts_with("upper-"), "{three:?}");
        assert!(
            three[2].starts_with(&one[0]) && three[2] != one[0],
            "{three:?}"
        );
        assert!(OciRef::parse("oci://UPPER/Case:x").is_err());
    }

    #[test]
    fn loopback_is_recognised() {
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("localhost", true),
            ("registry.local:5000", false),
            ("10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(registry), loopback, "{registry}");
        }
    }

    #[test]
    fn auth_files_give_basic_credentials_for_their_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // base64("kiln:s3cret")
        std::fs::write(
            &path,
            r#"{"auths": {"127.0.0.1:5000": {"auth": "a2lsbjpzM2NyZXQ="}, "https://other.example": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let auth = auth_for(Some(&path), "127.0.0.1:5000").unwrap();
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "kiln" && p == "s3cret"));
        let other = auth_for(Some(&path), "other.example").unwrap();
        assert!(matches!(other, RegistryAuth::Basic(u, _) if u == "u"));
        assert!(matches!(
            auth_for(Some(&path), "elsewhere:1").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(&path, "not json").unwrap();
        let err = auth_for(Some(&path), "x").unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn non_components_are_refused() {
        assert!(component_info(b"\0asm\x01\0\0\0").is_err());
        assert!(component_info(b"garbage").is_err());
    }

    #[test]
    fn the_store_re_verifies_what_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let reference = OciRef::parse("oci://127.0.0.1:5000/team/rot13:1").unwrap();
        let wasm = b"\0asm component bytes".to_vec();
        let layer = ImageLayer::new(wasm.clone(), WASM_LAYER_MEDIA_TYPE.to_owned(), None);
        let config = Config::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.to_owned(), None);
        let manifest =
            serde_json::to_vec(&OciImageManifest::build(&[layer], &config, None)).unwrap();
        let pulled = Pulled {
            digest: sha256_digest(&manifest),
            manifest,
            wasm: wasm.clone(),
            plugin_manifest: None,
        };
        store.put(&reference, &pulled).unwrap();
        assert_eq!(
            store.resolved(&reference).as_deref(),
            Some(pulled.digest.as_str())
        );
        assert!(store.activate(&reference, "rot13", &pulled).unwrap());
        assert!(
            !store.activate(&reference, "rot13", &pulled).unwrap(),
            "unchanged"
        );
        let path = store.plugin_path("rot13");
        assert_eq!(std::fs::read(&path).unwrap(), wasm);
        assert_eq!(Source::of(&path).unwrap().digest, pulled.digest);
        assert_eq!(store.get(&reference, &pulled.digest).unwrap().wasm, wasm);
        // A blob rewritten on disk is refused.
        let blob = store.blob_path(&sha256_digest(&wasm));
        std::fs::write(&blob, b"tampered").unwrap();
        let err = store
            .get(&reference, &pulled.digest)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("digest mismatch") && err.contains("rot13:1"),
            "{err}"
        );
        store.deactivate_others(&BTreeSet::new());
        assert!(!path.exists());
    }
}
