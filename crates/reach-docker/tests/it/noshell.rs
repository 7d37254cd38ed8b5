//! The image with no shell, no tar and no libc: one static executable.

use reach_core::{ErrorKind, ExecSpec, FileSystemExt, FileType, ProcessExt};
use reach_docker::DockerOptions;
use reach_test::docker::ContainerFixture;

use crate::{backend_for, engine, no_agent};

#[tokio::test]
async fn files_work_through_the_archive_api_alone() {
    if !engine("no-shell image files") {
        return;
    }
    let c = ContainerFixture::noshell().unwrap();
    for options in [DockerOptions::default(), no_agent()] {
        let agent = options.agent;
        let backend = backend_for(&c.destination(None), options);
        let fs = backend.fs().await.unwrap();
        let dir = format!("/tmp/agent-{agent}");
        fs.create_dir_all(&format!("{dir}/a/b")).await.unwrap();
        fs.write(&format!("{dir}/a/b/f ü"), b"data").await.unwrap();
        fs.write(&format!("{dir}/empty"), b"").await.unwrap();
        assert_eq!(fs.read(&format!("{dir}/a/b/f ü")).await.unwrap(), b"data");
        assert!(fs.read(&format!("{dir}/empty")).await.unwrap().is_empty());
        fs.symlink("a/b/f ü", &format!("{dir}/link")).await.unwrap();
        assert_eq!(
            fs.read_link(&format!("{dir}/link")).await.unwrap(),
            "a/b/f ü"
        );
        assert_eq!(fs.read(&format!("{dir}/link")).await.unwrap(), b"data");
        let listed: Vec<(String, FileType)> = fs
            .read_dir(&dir)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.metadata.file_type))
            .collect();
        assert_eq!(
            listed,
            [
                ("a".to_owned(), FileType::Dir),
                ("empty".to_owned(), FileType::File),
                ("link".to_owned(), FileType::Symlink)
            ],
            "agent {agent}"
        );
        let meta = fs.metadata(&format!("{dir}/a/b/f ü")).await.unwrap();
        assert_eq!((meta.len, meta.mode), (4, 0o644));
        let err = fs.write("/denied/x", b"x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        // What the archive API cannot do: the agent does it, or it is Unsupported and says
        // why.
        let file = format!("{dir}/a/b/f ü");
        let ops = [
            fs.set_permissions(&file, 0o600).await,
            fs.truncate(&file, 2).await,
            fs.rename(&file, &format!("{dir}/moved")).await,
            fs.remove_file(&format!("{dir}/empty")).await,
        ];
        for result in ops {
            if agent {
                result.unwrap();
            } else {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
                assert!(err.to_string().contains("has no shell"), "{err}");
                assert!(err.to_string().contains("agent is turned off"), "{err}");
            }
        }
        if agent {
            assert_eq!(fs.read(&format!("{dir}/moved")).await.unwrap(), b"da");
            assert_eq!(
                fs.metadata(&format!("{dir}/moved")).await.unwrap().mode,
                0o600
            );
            fs.remove_dir_all(&dir).await.unwrap();
            assert_eq!(
                fs.metadata(&dir).await.unwrap_err().kind(),
                ErrorKind::NotFound
            );
        }
    }
}

#[tokio::test]
async fn commands_run_without_a_shell() {
    if !engine("no-shell image commands") {
        return;
    }
    let c = ContainerFixture::noshell().unwrap();
    for options in [DockerOptions::default(), no_agent()] {
        let agent = options.agent;
        let backend = backend_for(&c.destination(None), options);
        let out = backend
            .exec(ExecSpec::argv(["/reach-idle", "hello", "there"]).env("X", "1"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hello there\n", "agent {agent}");
        assert!(out.status.success());
        let err = match backend.exec(ExecSpec::shell("echo hi")).await {
            Err(e) => e,
            Ok(p) => p
                .wait()
                .await
                .expect_err("a shell line ran without a shell"),
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "agent {agent}: {err}");
        assert!(err.to_string().contains("/bin/sh"), "{err}");
        let platform = backend.platform().await.unwrap();
        assert_eq!(platform.os, "linux");
        assert_eq!(platform.arch, std::env::consts::ARCH);
    }
}
