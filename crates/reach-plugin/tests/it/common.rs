//! The Python reference adapter as a test peer, and adapters written on the spot.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reach_core::Destination;
use reach_plugin::{hex, AdapterConfig, PluginBackend, PluginOptions, PluginSettings};
use reach_test::PeerFixture;
use sha2::{Digest, Sha256};

/// `examples/plugins/reach-backend-demo`.
pub fn demo_adapter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/reach-backend-demo")
}

/// The SHA-256 of a file, as a pin.
pub fn pin_of(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).unwrap()).into())
}

/// Whether `python3` (the reference adapter's interpreter) is here; says so when not.
pub fn python_or_skip(test: &str) -> bool {
    let found = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        reach_test::skip(test, "python3 is not installed (apt-get install python3)");
    }
    found
}

/// Settings that serve `scheme` with the adapter at `path`, pinned to its digest.
pub fn pinned(scheme: &str, path: &Path, args: &[&str]) -> PluginSettings {
    let mut settings = PluginSettings::default();
    settings.adapters.insert(
        scheme.to_owned(),
        AdapterConfig {
            path: Some(path.to_owned()),
            sha256: Some(pin_of(path)),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Default::default(),
        },
    );
    settings
}

/// A backend for `destination` with `settings`.
pub fn backend(destination: &str, settings: PluginSettings, timeout: Duration) -> PluginBackend {
    PluginBackend::new(
        Destination::parse(destination).unwrap(),
        PluginOptions {
            settings,
            connect_timeout: timeout,
            ..PluginOptions::default()
        },
    )
    .unwrap()
}

/// The directories a demo target works in (kept until the fixture drops): its root (also the
/// scratch directory) and one
/// outside it, where the adapter refuses to create anything.
#[derive(Debug)]
pub struct Dirs {
    pub _root: tempfile::TempDir,
    pub _outside: tempfile::TempDir,
}

/// The reference adapter serving `demo://test`, rooted in a fresh directory; `options`
/// adjusted by `adjust`.
pub fn demo_fixture_with(
    test: &str,
    adjust: impl FnOnce(&mut PluginOptions),
) -> Option<PeerFixture<Dirs>> {
    if !python_or_skip(test) {
        return None;
    }
    let root = tempfile::Builder::new()
        .prefix("reach-plugin-root-")
        .tempdir()
        .unwrap();
    let outside = tempfile::Builder::new()
        .prefix("reach-plugin-outside-")
        .tempdir()
        .unwrap();
    let root_path = root.path().to_str().unwrap().to_owned();
    let mut options = PluginOptions {
        settings: pinned("demo", &demo_adapter(), &["--root", &root_path]),
        ..PluginOptions::default()
    };
    adjust(&mut options);
    let backend = PluginBackend::new(Destination::parse("demo://test").unwrap(), options).unwrap();
    Some(PeerFixture {
        backend: Arc::new(backend),
        scratch: root_path,
        denied: outside.path().to_str().unwrap().to_owned(),
        peer: Dirs {
            _root: root,
            _outside: outside,
        },
    })
}

/// The reference adapter serving `demo://test`.
pub fn demo_fixture(test: &str) -> Option<PeerFixture<Dirs>> {
    demo_fixture_with(test, |_| {})
}

/// Writes an executable adapter script into `dir`, named for `scheme`.
pub fn script_adapter(dir: &Path, scheme: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("reach-backend-{scheme}"));
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The `--capabilities` answer of a protocol-1 adapter, as a shell `case` arm.
pub const CAPABILITIES: &str = r#"if [ "$1" = --capabilities ]; then
  echo '{"protocol":[1],"name":"test","version":"0","features":{"exec":true}}'
  exit 0
fi
"#;
