//! Adapters that die, lie or hang, and the pins and opt-ins that decide what runs: each gives
//! the error a user can act on, never a made-up exit status.

use std::time::{Duration, Instant};

use reach_core::{Backend, ErrorKind, ExecSpec, ProcessExt};
use reach_plugin::{PluginBackend, PluginOptions, PluginSettings};

use crate::common::{
    backend, demo_fixture, demo_fixture_with, pinned, script_adapter, CAPABILITIES,
};

/// A command in flight when its adapter is killed ends in `SessionDropped` naming the
/// adapter, not in an exit status; the next command starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_killed_mid_command_drops_the_session() {
    let Some(fixture) = demo_fixture("adapter killed mid-command") else {
        return;
    };
    let backend = fixture.backend.clone();
    let waiting = backend
        .exec(ExecSpec::shell("echo started; exec sleep 5"))
        .await
        .unwrap();
    // The adapter is every command's parent: one of them kills it, maybe before the adapter
    // has answered its `exec`.
    let killer = backend
        .exec(ExecSpec::shell("kill -KILL $PPID; sleep 5"))
        .await;
    let mut ends = vec![];
    for process in [Ok(waiting), killer] {
        let end = match process {
            Ok(process) => tokio::time::timeout(Duration::from_secs(10), process.output())
                .await
                .expect("a command of a dead adapter must not hang"),
            Err(e) => Err(e),
        };
        ends.push(end);
    }
    for end in ends {
        let err = end.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SessionDropped, "{err}");
        assert!(err.message().contains("reach-backend-demo"), "{err}");
        assert!(err.message().contains("closed its output"), "{err}");
    }
    let again = backend.exec(ExecSpec::shell("echo again")).await.unwrap();
    assert_eq!(again.output().await.unwrap().stdout, b"again\n");
}

/// Output that is not the protocol is a `Protocol` error naming the adapter and the line,
/// for the connect and for a command in flight.
#[tokio::test]
async fn garbage_from_an_adapter_names_it_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let at_connect = script_adapter(
        dir.path(),
        "junk",
        &format!("#!/bin/sh\n{CAPABILITIES}read line\necho 'Welcome to my adapter!'\nsleep 5\n"),
    );
    let err = backend(
        "junk://x",
        pinned("junk", &at_connect, &[]),
        Duration::from_secs(5),
    )
    .connect()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("reach-backend-junk"), "{err}");
    assert!(err.message().contains("line 1"), "{err}");
    assert!(err.message().contains("`Welcome to my adapter!`"), "{err}");

    let mid_command = script_adapter(
        dir.path(),
        "late",
        &format!(
            "#!/bin/sh\n{CAPABILITIES}read line\n\
             echo '{{\"id\":1,\"ok\":{{\"platform\":{{\"os\":\"linux\",\"arch\":\"x86_64\"}}}}}}'\n\
             read line\necho '{{\"id\":2,\"ok\":{{}}}}'\n\
             printf '{{\"data\":2,\"stream\":\"stdout\",\"len\":3}}\\nhi\\n'\n\
             echo '{{\"exit\":2,\"code\":\"zero\"}}'\nsleep 5\n"
        ),
    );
    let backend = backend(
        "late://x",
        pinned("late", &mid_command, &[]),
        Duration::from_secs(5),
    );
    let process = backend.exec(ExecSpec::shell("anything")).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), process.output())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("reach-backend-late"), "{err}");
    assert!(err.message().contains("line 4"), "{err}");
    assert!(err.message().contains("zero"), "{err}");
}

/// An adapter of another protocol version is refused before it serves anything, with both
/// versions named.
#[tokio::test]
async fn a_wrong_protocol_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let future = script_adapter(
        dir.path(),
        "future",
        "#!/bin/sh\necho '{\"protocol\":[7],\"name\":\"future\",\"version\":\"9.0\"}'\n",
    );
    let err = backend(
        "future://x",
        pinned("future", &future, &[]),
        Duration::from_secs(5),
    )
    .connect()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("[7]"), "{err}");
    assert!(err.message().contains("speaks 1"), "{err}");
}

/// An adapter that never answers `--capabilities`, or never answers `connect`, hits the
/// connect timeout instead of hanging reach.
#[tokio::test]
async fn an_adapter_that_never_answers_hits_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let silent_probe = script_adapter(dir.path(), "mute", "#!/bin/sh\nexec sleep 30\n");
    let silent_session = script_adapter(
        dir.path(),
        "deaf",
        &format!("#!/bin/sh\n{CAPABILITIES}exec sleep 30\n"),
    );
    for (scheme, path) in [("mute", silent_probe), ("deaf", silent_session)] {
        let started = Instant::now();
        let err = backend(
            &format!("{scheme}://x"),
            pinned(scheme, &path, &[]),
            Duration::from_secs(1),
        )
        .connect()
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{scheme}: {err}");
        assert!(
            err.message().contains(&format!("reach-backend-{scheme}")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{scheme}");
    }
}

/// An adapter with no pin runs only with the user's opt-in; one whose file changed after it
/// was pinned does not run at all.
#[tokio::test]
async fn unpinned_and_changed_adapters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let path = script_adapter(
        dir.path(),
        "opt",
        &format!(
            "#!/bin/sh\ntouch '{}'\n{CAPABILITIES}exec sleep 30\n",
            marker.display()
        ),
    );
    let mut settings = pinned("opt", &path, &[]);
    settings.adapters.get_mut("opt").unwrap().sha256 = None;
    let destination = reach_core::Destination::parse("opt://x").unwrap();
    let err = PluginBackend::new(
        destination.clone(),
        PluginOptions {
            settings: settings.clone(),
            ..PluginOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("reach plugin pin opt"), "{err}");
    assert!(err.message().contains("--allow-unpinned-plugin"), "{err}");
    assert!(!marker.exists(), "an unpinned adapter ran");

    let allowed = PluginBackend::new(
        destination,
        PluginOptions {
            settings,
            allow_unpinned: true,
            connect_timeout: Duration::from_secs(1),
            ..PluginOptions::default()
        },
    )
    .unwrap();
    let _ = allowed.connect().await;
    assert!(marker.exists(), "the opted-in adapter did not run");
    std::fs::remove_file(&marker).unwrap();

    // Pinned, then changed.
    let settings = pinned("opt", &path, &[]);
    std::fs::write(&path, "#!/bin/sh\necho changed\n").unwrap();
    let err = backend("opt://x", settings, Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("reach-backend-opt"), "{err}");
    assert!(!marker.exists(), "a changed adapter ran");
}

/// A scheme with no adapter is refused with the name reach looked for and how to configure
/// one.
#[tokio::test]
async fn a_scheme_without_an_adapter_says_what_was_looked_for() {
    let err = PluginBackend::new(
        reach_core::Destination::parse("nosuchthing://x").unwrap(),
        PluginOptions {
            settings: PluginSettings::default(),
            allow_unpinned: true,
            ..PluginOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("reach-backend-nosuchthing"), "{err}");
}

/// An adapter's errors reach the caller with their kind, subject and hint; the session goes
/// on after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_the_adapter_keep_their_kind_subject_and_hint() {
    let Some(fixture) = demo_fixture("adapter errors") else {
        return;
    };
    let backend = fixture.backend.clone();
    let err = backend
        .exec(ExecSpec::argv(["reach-no-such-command"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.subject(), Some(reach_core::Subject::Command), "{err}");
    assert!(err.message().contains("reach-no-such-command"), "{err}");
    assert!(err.message().contains("PATH"), "the hint is shown: {err}");
    let fs = backend.fs().await.unwrap();
    let outside = format!("{}/file", fixture.denied);
    let err = reach_core::FileSystemExt::write(fs.as_ref(), &outside, b"x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("--root"), "{err}");
    assert!(!std::path::Path::new(&outside).exists());
    let out = backend.exec(ExecSpec::shell("echo still")).await.unwrap();
    assert_eq!(out.output().await.unwrap().stdout, b"still\n");
}

/// Every control line of a session, both ways, is a message the JSON Schema in
/// docs/plugin-protocol.schema.json allows; and the schema is not a rubber stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_session_matches_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("transcript");
    let path = transcript.clone();
    let Some(fixture) = demo_fixture_with("protocol schema", move |options| {
        options.transcript = Some(path);
    }) else {
        return;
    };
    let backend = fixture.backend.clone();
    // Commands of every kind, files both ways, errors, a TCP connection refused.
    let scratch = &fixture.scratch;
    let process = backend
        .exec(
            ExecSpec::shell("cat; echo err >&2; exit 3")
                .stdin(reach_core::StdinMode::Piped)
                .env("A", "b")
                .cwd(scratch),
        )
        .await
        .unwrap();
    let mut stdin = process.take_stdin().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &vec![b'x'; 600_000])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut stdin)
        .await
        .unwrap();
    drop(stdin);
    let out = process.output().await.unwrap();
    assert_eq!(out.stdout.len(), 600_000);
    let pty = backend
        .exec(ExecSpec::shell("stty size").pty("xterm", reach_core::PtySize { rows: 5, cols: 7 }))
        .await
        .unwrap();
    pty.output().await.unwrap();
    let killed = backend.exec(ExecSpec::shell("sleep 30")).await.unwrap();
    killed.signal(reach_core::Signal::TERM).await.unwrap();
    killed.wait().await.unwrap();
    let timed = backend
        .exec(ExecSpec::shell("sleep 30").timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(timed.wait().await.unwrap_err().kind(), ErrorKind::Timeout);
    let _ = backend
        .exec(ExecSpec::argv(["reach-no-such-command"]))
        .await;
    let fs = backend.fs().await.unwrap();
    let file = format!("{scratch}/f");
    let (mut writer, digest) = fs
        .open_write_hashed(&file, reach_core::WriteOptions::default())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut writer, &[1u8; 300_000])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut writer)
        .await
        .unwrap();
    digest.await.unwrap();
    let _ = reach_core::FileSystemExt::read(fs.as_ref(), &file)
        .await
        .unwrap();
    fs.metadata(&file).await.unwrap();
    fs.read_dir(scratch).await.unwrap();
    fs.set_permissions(&file, 0o600).await.unwrap();
    fs.truncate(&file, 3).await.unwrap();
    fs.sha256(&file).await.unwrap();
    fs.set_modified(&file, std::time::SystemTime::now())
        .await
        .unwrap();
    fs.symlink("f", &format!("{scratch}/l")).await.unwrap();
    fs.read_link(&format!("{scratch}/l")).await.unwrap();
    fs.rename(&file, &format!("{scratch}/g")).await.unwrap();
    fs.create_dir_all(&format!("{scratch}/d/e")).await.unwrap();
    fs.remove_dir_all(&format!("{scratch}/d")).await.unwrap();
    fs.home_dir().await.unwrap();
    assert!(fs.metadata(&format!("{scratch}/missing")).await.is_err());
    assert!(backend.connect_tcp("127.0.0.1", 1).await.is_err());
    backend.close().await.unwrap();

    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs/plugin-protocol.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let text = std::fs::read_to_string(&transcript).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let (direction, json) = line.split_at(2);
        let message: serde_json::Value = serde_json::from_str(json).unwrap();
        let tagged = serde_json::json!({ "direction": direction.trim(), "message": message });
        let errors: Vec<String> = validator
            .iter_errors(&tagged)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "`{line}` does not match the schema: {errors:?}"
        );
        let kind = ["op", "data", "eof", "exit", "taken", "closed"]
            .iter()
            .find_map(|k| {
                message.get(*k).map(|v| {
                    if *k == "op" {
                        v.as_str().unwrap().to_owned()
                    } else {
                        (*k).to_owned()
                    }
                })
            })
            .unwrap_or_else(|| {
                if message.get("ok").is_some() {
                    "ok".into()
                } else {
                    "error".into()
                }
            });
        seen.insert(kind);
    }
    for kind in [
        "connect", "exec", "input", "ack", "signal", "write", "read", "metadata", "read_dir",
        "truncate", "close", "data", "eof", "exit", "taken", "closed", "ok", "error",
    ] {
        assert!(
            seen.contains(kind),
            "the transcript has no `{kind}`: {seen:?}"
        );
    }
    let capabilities = std::process::Command::new(crate::common::demo_adapter())
        .arg("--capabilities")
        .output()
        .unwrap();
    let message: serde_json::Value = serde_json::from_slice(&capabilities.stdout).unwrap();
    let tagged = serde_json::json!({"direction": "capabilities", "message": message});
    assert!(validator.is_valid(&tagged), "--capabilities: {message}");
    // Messages the schema must refuse.
    for bad in [
        serde_json::json!({"direction": "<", "message": {"exit": 2, "code": "zero"}}),
        serde_json::json!({"direction": "<", "message": {"id": 2}}),
        serde_json::json!({"direction": ">", "message": {"id": 2, "op": "truncate", "path": "/x", "len": 3}}),
        serde_json::json!({"direction": "<", "message": {"id": 2, "error": {"code": "nope", "message": "x"}}}),
    ] {
        assert!(!validator.is_valid(&bad), "the schema allowed {bad}");
    }
}

/// What an adapter does not claim in `--capabilities` is `Unsupported` without asking it:
/// here one that runs commands and nothing else.
#[tokio::test]
async fn what_an_adapter_does_not_claim_is_never_asked() {
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard");
    let path = script_adapter(
        dir.path(),
        "bare",
        &format!(
            "#!/bin/sh\n{CAPABILITIES}read line\necho \"$line\" >> '{heard}'\n\
             echo '{{\"id\":1,\"ok\":{{\"platform\":{{\"os\":\"linux\",\"arch\":\"x86_64\"}}}}}}'\n\
             while read line; do echo \"$line\" >> '{heard}'; done\n",
            heard = heard.display()
        ),
    );
    let backend = backend(
        "bare://x",
        pinned("bare", &path, &[]),
        Duration::from_secs(5),
    );
    let fs = backend.fs().await.unwrap();
    let err = fs.read_dir("/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("read_dir"), "{err}");
    let err = reach_core::FileSystemExt::read(fs.as_ref(), "/etc/hostname")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    for spec in [
        ExecSpec::shell("true").stdin(reach_core::StdinMode::Piped),
        ExecSpec::shell("true").pty("xterm", reach_core::PtySize { rows: 2, cols: 2 }),
    ] {
        let err = backend.exec(spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
    assert!(backend.connect_tcp("127.0.0.1", 9).await.is_err());
    let heard = std::fs::read_to_string(&heard).unwrap();
    assert_eq!(heard.lines().count(), 1, "the adapter was asked: {heard}");
    assert!(heard.contains("\"op\":\"connect\""), "{heard}");
}
