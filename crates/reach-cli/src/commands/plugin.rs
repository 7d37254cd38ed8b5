//! `reach plugin list` and `reach plugin pin`: the adapters a user has, their pins, and what
//! they say they can do.

use std::time::Duration;

use reach::{Error, ErrorKind};
use reach_plugin::{Adapter, PluginSettings, Source, Trust, VerifiedProgram};
use serde_json::{json, Value};

use crate::cli::{ConnArgs, PluginAction, PluginArgs};
use crate::output;

/// How long an adapter may take to answer `--capabilities` unless --connect-timeout says.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn plugin(args: PluginArgs, json: bool, conn: &ConnArgs) -> reach::Result<i32> {
    let settings = PluginSettings::load_user()?;
    match args.action {
        PluginAction::List => list(&settings, json, conn).await,
        PluginAction::Pin { scheme, path } => pin(&settings, &scheme, path, json),
    }
}

/// One adapter's line: where it is, its pin, and its answer (or why there is none).
async fn describe(
    adapter: &Adapter,
    settings: &PluginSettings,
    conn: &ConnArgs,
) -> (Value, String) {
    let pin = match adapter.trust {
        Trust::Pinned(digest) => reach_plugin::hex(&digest),
        Trust::Unpinned => "unpinned".to_owned(),
    };
    let source = match &adapter.source {
        Source::Config(file) => file.display().to_string(),
        Source::SearchPath => "PATH".to_owned(),
    };
    // Only an adapter allowed to run is asked, and only as the bytes its pin names.
    let timeout = conn.connect_timeout.unwrap_or(PROBE_TIMEOUT);
    let answer = match reach_plugin::may_run(adapter, settings, conn.allow_unpinned_plugin)
        .and_then(|()| VerifiedProgram::open(&adapter.path, adapter.trust))
    {
        Ok(program) => reach_plugin::probe(adapter, &program, timeout).await,
        Err(e) => Err(e),
    };
    let mut value = json!({
        "scheme": adapter.scheme,
        "path": adapter.path.display().to_string(),
        "source": source,
        "sha256": pin,
    });
    let status = match &answer {
        Ok(info) => {
            value["adapter"] = json!({
                "name": info.name,
                "version": info.version,
                "protocol": info.protocol,
                "features": info.features,
                "limits": info.limits,
            });
            format!(
                "{} {}, protocol {:?}, features: {}",
                info.name,
                info.version,
                info.protocol,
                info.feature_names().join(" ")
            )
        }
        Err(e) => {
            value["error"] = json!({"kind": e.kind().as_str(), "message": e.message()});
            format!("{}: {}", e.kind().as_str(), e.message())
        }
    };
    let text = format!(
        "{}://\t{}\t(from {source})\n\tsha256 {pin}\n\t{status}",
        adapter.scheme,
        adapter.path.display()
    );
    (value, text)
}

async fn list(settings: &PluginSettings, json: bool, conn: &ConnArgs) -> reach::Result<i32> {
    let mut values = Vec::new();
    for found in reach_plugin::all(settings) {
        let (value, text) = match found {
            Ok(adapter) => describe(&adapter, settings, conn).await,
            Err(e) => (
                json!({"error": {"kind": e.kind().as_str(), "message": e.message()}}),
                format!("{}: {}", e.kind().as_str(), e.message()),
            ),
        };
        if !json {
            println!("{text}");
        }
        values.push(value);
    }
    if json {
        output::print_json(&json!({ "plugins": values }));
    } else if values.is_empty() {
        println!("no plugin adapters: none configured in [plugins] and no reach-backend-* on PATH");
    }
    Ok(0)
}

fn pin(
    settings: &PluginSettings,
    scheme: &str,
    path: Option<std::path::PathBuf>,
    json: bool,
) -> reach::Result<i32> {
    reach_plugin::check_scheme(scheme)?;
    let path = match path {
        Some(path) => path,
        None => reach_plugin::find(scheme, settings)?.path,
    };
    let path = std::fs::canonicalize(&path)
        .map_err(|e| Error::io(format!("adapter `{}`", path.display()), e))?;
    // Hashing reads the file once; nothing is run.
    let program = VerifiedProgram::open(&path, Trust::Unpinned)?;
    let config = reach_plugin::user_config_path().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            "no configuration directory: set HOME or XDG_CONFIG_HOME",
        )
    })?;
    reach_plugin::write_pin(&config, scheme, &path, &program.digest())?;
    let digest = reach_plugin::hex(&program.digest());
    if json {
        output::print_json(&json!({
            "scheme": scheme,
            "path": path.display().to_string(),
            "sha256": digest,
            "config": config.display().to_string(),
        }));
    } else {
        println!(
            "pinned {scheme}:// to {} (sha256 {digest}) in {}",
            path.display(),
            config.display()
        );
    }
    Ok(0)
}
