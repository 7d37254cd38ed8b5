//! The container agent lost or starved: what was running on it fails with the reason, and
//! what comes after runs on a new agent instead of failing too.

use std::time::Duration;

use reach_core::{ErrorKind, ExecSpec, FileSystemExt, ProcessExt};
use reach_docker::DockerOptions;
use reach_test::docker::ContainerFixture;

use super::{backend_for, engine, sh};

/// The pids of the reach agents running in the container (a fixture's container holds one
/// agent version in `/.reach`).
fn agents(c: &ContainerFixture) -> Vec<String> {
    sh(c, "pidof $(ls /.reach) || true")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// SIGKILLs every reach agent in the container, as the OOM killer or an admin would.
fn kill_agents(c: &ContainerFixture) {
    let pids = agents(c);
    assert!(!pids.is_empty(), "no agent to kill");
    sh(c, &format!("kill -9 {}", pids.join(" ")));
}

fn agents_running(c: &ContainerFixture) -> usize {
    agents(c).len()
}

#[tokio::test]
async fn a_killed_agent_fails_what_ran_on_it_and_a_new_one_serves_the_rest() {
    if !engine("agent killed") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    fs.write("/tmp/kept", b"kept\n").await.unwrap();
    let want = fs.sha256("/tmp/kept").await.unwrap();

    for round in 1..=4 {
        let process = backend.exec(ExecSpec::shell("sleep 60")).await.unwrap();
        assert_eq!(agents_running(&c), 1, "round {round}: one agent at a time");
        kill_agents(&c);
        let err = tokio::time::timeout(Duration::from_secs(20), process.wait())
            .await
            .expect("wait hung after the agent died")
            .expect_err("a command whose agent died reported an exit status");
        assert_eq!(err.kind(), ErrorKind::SessionDropped, "{err}");
        assert!(
            err.to_string().contains(&format!(
                "the reach agent in container `{}` was killed by SIGKILL",
                c.name()
            )),
            "round {round}: {err}"
        );
        if round < 4 {
            // The same file system goes on, on a new agent (SHA-256 needs one).
            assert_eq!(fs.sha256("/tmp/kept").await.unwrap(), want, "round {round}");
            fs.write("/tmp/after", format!("{round}\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(sh(&c, "cat /tmp/after"), format!("{round}\n"));
        }
    }
    // Lost four times: this connection stops chasing it, and says so.
    let err = fs
        .sha256("/tmp/kept")
        .await
        .expect_err("a fifth agent was started");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("lost 4 times"), "{err}");
    // A new command opens a new connection, with its own agent.
    let out = backend
        .exec(ExecSpec::argv(["echo", "again"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"again\n");
}

#[tokio::test]
async fn an_agent_out_of_threads_refuses_work_and_keeps_what_runs() {
    if !engine("agent pids limit") {
        return;
    }
    // The sleeping init and the agent take two pids, each command four (itself, two output
    // pumps, a waiter) and each file operation one thread while it runs.
    let image = reach_test::docker::busybox_image().unwrap();
    let c = ContainerFixture::run(&image, &["--pids-limit", "12"], &["sleep", "1000000"]).unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    fs.write("/tmp/big", &data).await.unwrap();
    let want = fs.sha256("/tmp/big").await.unwrap();

    let mut started = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        // No shell: a shell's own fork could meet the limit too.
        match backend.exec(ExecSpec::argv(["sleep", "5"])).await {
            Ok(p) => started.push(p),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("every command started under a pids limit of 12");
    assert!(
        refused
            .to_string()
            .contains("Resource temporarily unavailable"),
        "{refused}"
    );
    assert!(!started.is_empty(), "not even one command started");
    // File operations beside them: more at once than threads are left.
    let sums = futures_util::future::join_all((0..16).map(|_| fs.sha256("/tmp/big"))).await;
    let mut short = 0;
    for sum in sums {
        match sum {
            Ok(sum) => assert_eq!(sum, want),
            Err(e) => {
                assert!(
                    e.to_string().contains("Resource temporarily unavailable"),
                    "{e}"
                );
                short += 1;
            }
        }
    }
    assert!(short > 0, "16 hashes at once all found a thread");
    // The commands that started are whole: each ends with its status.
    for (i, p) in started.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(20), p.output())
            .await
            .expect("a command hung")
            .unwrap_or_else(|e| panic!("command {i} lost with its agent: {e}"));
        assert!(out.status.success(), "command {i}: {out:?}");
    }
    // And the same agent does the next thing.
    assert_eq!(fs.sha256("/tmp/big").await.unwrap(), want);
    assert_eq!(agents_running(&c), 1);
}
