//! How commands end, where proot's own exit status would mislead: proot exits with the code
//! of the last process that exited normally, so a command killed by a signal after one of
//! its children exited would look like that child's `exit 0`.

use reach_core::{ExecSpec, ExitStatus, ProcessExt, PtySize, Signal, StdinMode};

#[tokio::test]
async fn the_commands_own_end_is_reported_not_proots() {
    let Some(fixture) = crate::fixture("proot exit statuses") else {
        return;
    };
    let backend = fixture.backend.clone();
    let cases = [
        (
            "ls / | head -1 >/dev/null; kill -TERM $$",
            ExitStatus::Signal {
                signal: Signal::TERM,
                core_dumped: false,
            },
        ),
        ("true; (exit 3); exit 255", ExitStatus::Code(255)),
        ("sh -c 'exit 9' & wait; exit 4", ExitStatus::Code(4)),
        ("sh -c 'kill -KILL $$'; exit 0", ExitStatus::Code(0)),
    ];
    for (line, expected) in cases {
        let out = backend
            .exec(ExecSpec::shell(line))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.status, expected, "`{line}`");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("proot"), "`{line}` said {said:?}");
    }
    // Under a terminal proot's lines would be in the output: they are not, and the signal
    // still is.
    let process = backend
        .exec(
            ExecSpec::shell("echo shown; ls / >/dev/null; kill -INT $$")
                .pty("xterm", PtySize { rows: 24, cols: 80 })
                .stdin(StdinMode::Piped),
        )
        .await
        .unwrap();
    let out = process.output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shown\r\n");
    assert_eq!(
        out.status,
        ExitStatus::Signal {
            signal: Signal::INT,
            core_dumped: false
        }
    );
}
