//! Plugin manifests: `<stem>.toml` beside `<stem>.wasm`, giving one plugin
//! its identity, limits, config and grants (docs/PLUGINS.md has the schema).
//!
//! A manifest can only ask: the operator's caps ([`Caps`]) clamp it, and a
//! manifest asking for more than a cap is refused at load with the plugin,
//! the key and the cap named. A plugin without a manifest gets the
//! operator's default limits and no grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Caps, Limits};
use crate::http::OutboundGrant;

/// What a manifest file holds. Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; must equal what the component's `get-name` reports.
    pub name: String,
    /// The plugin's version; must equal what `get-version` reports.
    pub version: semver::Version,
    /// One line for operators (`kiln plugins`).
    #[serde(default)]
    pub description: String,
    /// Limits for this plugin's jobs, each within the operator's cap.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// Served through `get-config`, after the job's config and the
    /// operator's `sandbox.plugin_config` for this plugin.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// What the plugin may reach beyond its own memory.
    #[serde(default)]
    pub grants: Grants,
    /// In the stable version's manifest: send a share of the jobs that name
    /// no version to another loaded version.
    pub canary: Option<Canary>,
    /// Whether an instance may serve more than one job.
    #[serde(default)]
    pub instances: ManifestInstances,
}

/// `[instances]`: how long an instance lives (docs/SANDBOX.md, "Warm
/// instances").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestInstances {
    /// Most jobs one instance serves before it is dropped. `1` (the
    /// default) is a fresh instance per job. Above 1, state (and so data)
    /// can carry from one job to the next: for trusted plugins serving one
    /// tenant only. At most the operator's `sandbox.caps.reuse_jobs`.
    pub reuse_jobs: Option<u32>,
}

/// `canary = { version = "1.1.0", percent = 10 }`: `percent` of the jobs
/// without a version requirement go to `version`, chosen by a stable hash
/// of the job id, so a retried job meets the same version again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The version under trial; it must be loaded too, or the canary is idle.
    pub version: semver::Version,
    /// Share of the jobs without a version requirement, 0 to 100.
    pub percent: u8,
}

/// `[limits]`: each key unset keeps the operator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Total linear memory per job, in bytes.
    pub memory_bytes: Option<usize>,
    /// Fuel per job, in wasmtime fuel units.
    pub fuel: Option<u64>,
    /// Wall-clock deadline per job, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Largest input, in bytes.
    pub max_input_bytes: Option<usize>,
    /// Largest output, in bytes.
    pub max_output_bytes: Option<usize>,
    /// Jobs of this plugin running at once; others wait for a turn.
    pub max_concurrency: Option<u32>,
    /// Outgoing HTTP requests per job.
    pub max_requests: Option<u32>,
    /// Response body bytes read per job, over all its requests.
    pub max_response_bytes: Option<usize>,
    /// Longest one outgoing request may take, in milliseconds.
    pub request_timeout_ms: Option<u64>,
}

/// `[grants]`: nothing is granted unless listed here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Read-only directories, host path → guest path. Each host path must
    /// lie under one of the operator's `sandbox.caps.allowed_dirs`.
    #[serde(default)]
    pub dirs: BTreeMap<PathBuf, String>,
    /// Environment variables with explicit values (the host's own
    /// environment is never passed through).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Raw network access: only `none` exists (no sockets, no name
    /// lookups), the same as leaving it out.
    #[serde(default)]
    pub network: Network,
    /// The services the plugin may call over `wasi:http`,
    /// `scheme://host[:port]` each (docs/SANDBOX.md, "Outbound HTTP"). Each
    /// must lie within the operator's `sandbox.caps.outbound`.
    #[serde(default)]
    pub outbound: Vec<OutboundGrant>,
    /// Set at load from `sandbox.caps.allow_private_outbound`: whether a
    /// grant by name may reach a private address.
    #[serde(skip)]
    pub allow_private_outbound: bool,
}

/// Raw network access a manifest may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No sockets, no name lookups (HTTP goes through `outbound`).
    #[default]
    None,
}

/// A manifest checked against the operator's caps, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The plugin's limits: the operator's defaults, overridden by the
    /// manifest within the caps.
    pub limits: Limits,
    /// Jobs of this plugin at once, if bounded.
    pub max_concurrency: Option<u32>,
    /// Config from the manifest.
    pub config: BTreeMap<String, String>,
    /// Grants, with canonical host paths.
    pub grants: Grants,
    /// The identity the manifest claims.
    pub identity: (String, semver::Version),
    /// The canary this (stable) version routes to, if any.
    pub canary: Option<Canary>,
    /// Most jobs one instance serves (1: a fresh instance per job).
    pub reuse_jobs: u32,
}

/// The manifest path for a plugin file: `<stem>.toml` beside `<stem>.wasm`.
pub fn path_for(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

/// Reads and parses `path`; `Ok(None)` when there is no such file.
pub fn read(path: &Path) -> Result<Option<Manifest>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{}: {}", path.display(), e.message()))
}

impl Manifest {
    /// Applies the manifest to the operator's `defaults`, refusing anything
    /// beyond `caps`. The error names the plugin, the key and the cap.
    pub fn resolve(&self, defaults: &Limits, caps: &Caps) -> Result<Settings, String> {
        let over = |key: &str, asked: u128, cap: u128, cap_key: &str| {
            format!(
                "plugin {}: limits.{key} = {asked} is above the operator's cap of {cap} (sandbox.caps.{cap_key})",
                self.name
            )
        };
        let mut limits = defaults.clone();
        let wanted = &self.limits;
        macro_rules! clamp {
            ($field:ident) => {
                if let Some(asked) = wanted.$field {
                    let cap = caps.$field.unwrap_or(defaults.$field);
                    if asked > cap {
                        return Err(over(
                            stringify!($field),
                            asked as u128,
                            cap as u128,
                            stringify!($field),
                        ));
                    }
                    limits.$field = asked;
                }
            };
        }
        clamp!(memory_bytes);
        clamp!(fuel);
        clamp!(timeout_ms);
        clamp!(max_input_bytes);
        clamp!(max_output_bytes);
        clamp!(max_requests);
        clamp!(max_response_bytes);
        clamp!(request_timeout_ms);
        if limits.timeout_ms == 0
            || limits.request_timeout_ms == 0
            || limits.memory_bytes < 64 << 10
        {
            return Err(format!(
                "plugin {}: limits.timeout_ms and limits.request_timeout_ms must be at least 1 and limits.memory_bytes at least 65536",
                self.name
            ));
        }
        if let Some(canary) = &self.canary
            && (canary.percent > 100 || canary.version == self.version)
        {
            return Err(format!(
                "plugin {}: canary must name another version and a percent from 0 to 100",
                self.name
            ));
        }
        if wanted.max_concurrency == Some(0) {
            return Err(format!(
                "plugin {}: limits.max_concurrency must be at least 1",
                self.name
            ));
        }
        let reuse_jobs = self.instances.reuse_jobs.unwrap_or(1);
        let reuse_cap = caps.reuse_jobs.unwrap_or(1);
        if reuse_jobs == 0 {
            return Err(format!(
                "plugin {}: instances.reuse_jobs must be at least 1",
                self.name
            ));
        }
        if reuse_jobs > reuse_cap {
            return Err(over_reuse(&self.name, reuse_jobs, reuse_cap));
        }
        let mut grants = self.grants.clone();
        grants.dirs = self
            .grants
            .dirs
            .iter()
            .map(|(host, guest)| {
                allowed_dir(host, &caps.allowed_dirs)
                    .map(|canonical| (canonical, guest.clone()))
                    .map_err(|why| {
                        format!(
                            "plugin {}: grants.dirs {}: {why}",
                            self.name,
                            host.display()
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        if let Some(entry) = self
            .grants
            .outbound
            .iter()
            .find(|entry| !caps.outbound.iter().any(|cap| cap.covers(entry)))
        {
            return Err(format!(
                "plugin {}: grants.outbound {:?} is not covered by the operator's caps (sandbox.caps.outbound = {:?})",
                self.name,
                entry.to_string(),
                caps.outbound
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ));
        }
        grants.allow_private_outbound = caps.allow_private_outbound;
        Ok(Settings {
            limits,
            max_concurrency: wanted.max_concurrency,
            config: self.config.clone(),
            grants,
            identity: (self.name.clone(), self.version.clone()),
            canary: self.canary.clone(),
            reuse_jobs,
        })
    }
}

/// The refusal of a manifest whose `[instances] reuse_jobs` is above the
/// operator's cap.
fn over_reuse(plugin: &str, asked: u32, cap: u32) -> String {
    format!(
        "plugin {plugin}: instances.reuse_jobs = {asked} is above the operator's cap of {cap} (sandbox.caps.reuse_jobs)"
    )
}

/// The canonical form of `host` if it lies under one of `roots` (symlinks
/// resolved on both sides, so a link cannot lead out of a root).
fn allowed_dir(host: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let canonical = host
        .canonicalize()
        .map_err(|e| format!("cannot open: {e}"))?;
    if !canonical.is_dir() {
        return Err("not a directory".to_owned());
    }
    let inside = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| canonical.starts_with(root));
    if inside {
        Ok(canonical)
    } else {
        Err(format!(
            "outside the operator's allowed roots (sandbox.caps.allowed_dirs = {roots:?})"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Result<Manifest, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    const HEAD: &str = "name = \"rot13\"\nversion = \"0.3.1\"\n";

    #[test]
    fn identity_only_keeps_the_defaults() {
        let m = manifest(HEAD).unwrap();
        let s = m.resolve(&Limits::default(), &Caps::default()).unwrap();
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.identity.1, semver::Version::new(0, 3, 1));
        assert_eq!(s.max_concurrency, None);
        assert_eq!(s.reuse_jobs, 1);
    }

    #[test]
    fn reuse_jobs_is_capped_by_the_operator() {
        let m = manifest(&format!("{HEAD}[instances]\nreuse_jobs = 1000\n")).unwrap();
        // The default cap is 1: reuse is off unless the operator allows it.
        let err = m.resolve(&Limits::default(), &Caps::default()).unwrap_err();
        for needle in [
            "rot13",
            "instances.reuse_jobs = 1000",
            "cap of 1",
            "sandbox.caps.reuse_jobs",
        ] {
            assert!(err.contains(needle), "{err}");
        }
        let caps = Caps {
            reuse_jobs: Some(1000),
            ..Caps::default()
        };
        let s = m.resolve(&Limits::default(), &caps).unwrap();
        assert_eq!(s.reuse_jobs, 1000);
        let m = manifest(&format!("{HEAD}[instances]\nreuse_jobs = 0\n")).unwrap();
        let err = m.resolve(&Limits::default(), &caps).unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        assert!(manifest(&format!("{HEAD}[instances]\nreuse = 2\n")).is_err());
    }

    #[test]
    fn unknown_keys_and_network_grants_are_rejected() {
        for (text, needle) in [
            ("colour = \"red\"\n", "colour"),
            ("[limits]\nmemory = 5\n", "memory"),
            ("[grants]\nnetwork = \"outbound\"\n", "outbound"),
            ("[grants.env]\nHOME = 5\n", "string"),
        ] {
            let err = manifest(&format!("{HEAD}{text}")).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(manifest("name = \"x\"\nversion = \"one\"\n").is_err());
    }

    #[test]
    fn canary_parses_and_must_be_sane() {
        let m = manifest(&format!(
            "{HEAD}canary = {{ version = \"0.4.0\", percent = 10 }}\n"
        ))
        .unwrap();
        let s = m.resolve(&Limits::default(), &Caps::default()).unwrap();
        assert_eq!(
            s.canary,
            Some(Canary {
                version: semver::Version::new(0, 4, 0),
                percent: 10
            })
        );
        for bad in [
            "canary = { version = \"0.4.0\", percent = 101 }",
            "canary = { version = \"0.3.1\", percent = 5 }",
        ] {
            let m = manifest(&format!("{HEAD}{bad}\n")).unwrap();
            let err = m.resolve(&Limits::default(), &Caps::default()).unwrap_err();
            assert!(err.contains("canary"), "{err}");
        }
    }

    #[test]
    fn limits_within_the_caps_apply_and_above_are_refused() {
        let defaults = Limits::default();
        let caps = Caps {
            memory_bytes: Some(256 << 20),
            ..Caps::default()
        };
        let m = manifest(&format!(
            "{HEAD}[limits]\nmemory_bytes = 134217728\ntimeout_ms = 500\nmax_concurrency = 2\n"
        ))
        .unwrap();
        let s = m.resolve(&defaults, &caps).unwrap();
        assert_eq!(s.limits.memory_bytes, 128 << 20);
        assert_eq!(s.limits.timeout_ms, 500);
        assert_eq!(s.limits.fuel, defaults.fuel);
        assert_eq!(s.max_concurrency, Some(2));

        // No cap set: the operator's default is the cap.
        let m = manifest(&format!("{HEAD}[limits]\nfuel = 99999999999999\n")).unwrap();
        let err = m.resolve(&defaults, &caps).unwrap_err();
        for needle in ["rot13", "limits.fuel", "10000000000", "sandbox.caps.fuel"] {
            assert!(err.contains(needle), "{err}");
        }
        let m = manifest(&format!("{HEAD}[limits]\nmemory_bytes = 536870912\n")).unwrap();
        let err = m.resolve(&defaults, &caps).unwrap_err();
        assert!(err.contains("268435456"), "{err}");
    }

    #[test]
    fn directories_must_lie_under_an_allowed_root() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("dicts");
        std::fs::create_dir(&inside).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let link = root.path().join("escape");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let caps = Caps {
            allowed_dirs: vec![root.path().to_path_buf()],
            ..Caps::default()
        };
        let grant = |dir: &Path| {
            manifest(&format!(
                "{HEAD}[grants.dirs]\n{:?} = \"/data\"\n",
                dir.display().to_string()
            ))
            .unwrap()
            .resolve(&Limits::default(), &caps)
        };
        let s = grant(&inside).unwrap();
        assert_eq!(
            s.grants
                .dirs
                .get(&inside.canonicalize().unwrap())
                .map(String::as_str),
            Some("/data")
        );
        for dir in [outside.path(), link.as_path()] {
            let err = grant(dir).unwrap_err();
            assert!(
                err.contains("outside the operator's allowed roots"),
                "{err}"
            );
        }
        let err = grant(&root.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
        // No roots at all: nothing can be granted.
        let err = manifest(&format!(
            "{HEAD}[grants.dirs]\n{:?} = \"/data\"\n",
            inside.display().to_string()
        ))
        .unwrap()
        .resolve(&Limits::default(), &Caps::default())
        .unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn outbound_grants_must_lie_within_the_caps() {
        let caps = Caps {
            outbound: vec![
                "https://*.example.com".parse().unwrap(),
                "http://127.0.0.1:*".parse().unwrap(),
            ],
            ..Caps::default()
        };
        let m = manifest(&format!(
            "{HEAD}[grants]\nnetwork = \"none\"\noutbound = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]\n"
        ))
        .unwrap();
        let s = m.resolve(&Limits::default(), &caps).unwrap();
        assert_eq!(s.grants.outbound.len(), 2);
        assert!(!s.grants.allow_private_outbound);

        let m = manifest(&format!(
            "{HEAD}[grants]\noutbound = [\"https://api.example.com\", \"https://evil.org\"]\n"
        ))
        .unwrap();
        let err = m.resolve(&Limits::default(), &caps).unwrap_err();
        for needle in [
            "rot13",
            "https://evil.org",
            "sandbox.caps.outbound",
            "*.example.com",
        ] {
            assert!(err.contains(needle), "{err}");
        }
        // No caps at all: nothing can be granted.
        let m = manifest(&format!(
            "{HEAD}[grants]\noutbound = [\"http://127.0.0.1:8080\"]\n"
        ))
        .unwrap();
        let err = m.resolve(&Limits::default(), &Caps::default()).unwrap_err();
        assert!(err.contains("sandbox.caps.outbound = []"), "{err}");
        // A malformed entry fails to parse, naming it.
        let err = manifest(&format!(
            "{HEAD}[grants]\noutbound = [\"api.example.com\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("api.example.com") && err.contains("no scheme"),
            "{err}"
        );
    }

    #[test]
    fn http_budgets_are_capped_like_other_limits() {
        let caps = Caps {
            max_requests: Some(100),
            ..Caps::default()
        };
        let m = manifest(&format!(
            "{HEAD}[limits]\nmax_requests = 50\nmax_response_bytes = 1000\nrequest_timeout_ms = 200\n"
        ))
        .unwrap();
        let s = m.resolve(&Limits::default(), &caps).unwrap();
        assert_eq!(
            (
                s.limits.max_requests,
                s.limits.max_response_bytes,
                s.limits.request_timeout_ms
            ),
            (50, 1000, 200)
        );
        let m = manifest(&format!("{HEAD}[limits]\nrequest_timeout_ms = 60000\n")).unwrap();
        let err = m.resolve(&Limits::default(), &caps).unwrap_err();
        assert!(err.contains("sandbox.caps.request_timeout_ms"), "{err}");
    }
}
