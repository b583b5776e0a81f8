//! Which versions of the `kiln:plugin` contract this host serves, checked on
//! a component's type before anything is linked or run.
//!
//! A component names the contract's interfaces with their package version
//! (`kiln:plugin/plugin@0.1.0`). This host serves `kiln:plugin@0.1.x`: by
//! semver rules for 0.x, a 0.1 patch release may add nothing that breaks a
//! 0.1 plugin, and 0.2 may break anything. A component whose `kiln:plugin`
//! imports or exports carry another version is refused with both versions
//! named, instead of a link error about some function's type.

use wasmtime::component::Component;

/// The WIT package of the contract.
pub const PACKAGE: &str = "kiln:plugin";

/// The contract version this host was built against (`wit/kiln-plugin.wit`).
pub const VERSION: &str = "0.1.0";

/// The versions served: semver-compatible with [`VERSION`].
const SERVED: &str = "^0.1";

/// A component built against a contract version this host does not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The interface that gave it away, e.g. `kiln:plugin/plugin@0.2.0`.
    pub interface: String,
    /// The version it carries, or `None` when unversioned.
    pub found: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "built against {PACKAGE}@{found} (interface {}), but this host serves {PACKAGE}@{VERSION} (versions {SERVED})",
                self.interface
            ),
            None => write!(
                f,
                "interface {} has no version; this host serves {PACKAGE}@{VERSION} (versions {SERVED})",
                self.interface
            ),
        }
    }
}

/// Checks every `kiln:plugin` import and export of `component` against the
/// versions served.
pub fn check(component: &Component) -> Result<(), Mismatch> {
    let ty = component.component_type();
    let engine = component.engine();
    let names = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name));
    for name in names {
        check_name(name)?;
    }
    Ok(())
}

/// Checks one import or export name; names outside the package pass.
fn check_name(name: &str) -> Result<(), Mismatch> {
    let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
        return Ok(());
    };
    let mismatch = |found: Option<&str>| Mismatch {
        interface: name.to_owned(),
        found: found.map(str::to_owned),
    };
    let Some((_, version)) = rest.split_once('@') else {
        return Err(mismatch(None));
    };
    let served = semver::VersionReq::parse(SERVED).map_err(|_| mismatch(Some(version)))?;
    match semver::Version::parse(version) {
        Ok(v) if served.matches(&v) => Ok(()),
        _ => Err(mismatch(Some(version))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_served_and_refused() {
        for ok in [
            "kiln:plugin/plugin@0.1.0",
            "kiln:plugin/host-api@0.1.7",
            "wasi:io/streams@0.2.6",
            "kiln:plugins-extra/thing@9.0.0",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for (bad, found) in [
            ("kiln:plugin/plugin@0.2.0", Some("0.2.0")),
            ("kiln:plugin/batch@1.0.0", Some("1.0.0")),
            ("kiln:plugin/plugin@0.1.0-rc.1", Some("0.1.0-rc.1")),
            ("kiln:plugin/plugin@garbage", Some("garbage")),
            ("kiln:plugin/plugin", None),
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.found.as_deref(), found, "{bad}");
            let text = err.to_string();
            assert!(text.contains("kiln:plugin@0.1.0"), "{text}");
            if let Some(found) = found {
                assert!(text.contains(&format!("kiln:plugin@{found}")), "{text}");
            }
        }
    }
}
