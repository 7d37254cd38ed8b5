//! Container lifecycle for the gateway, against the real engine.

use std::process::Command;
use std::time::Duration;

use reach_docker::{ContainerSpec, Containers, DockerOptions};
use reach_test::docker::busybox_image;

use crate::engine;

fn inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn create_start_stop_remove_list_and_reap_by_label() {
    if !engine("container lifecycle") {
        return;
    }
    let image = busybox_image().unwrap();
    let containers = Containers::connect(&DockerOptions::default())
        .await
        .unwrap();
    let run = format!("run-{}", std::process::id());
    let mut spec = ContainerSpec::new(&image)
        .label("reach-test", "")
        .label("reach.run", &run)
        .env("GREETING", "hello there")
        .cmd(["sleep", "1000000"]);
    spec.network = Some("none".to_owned());
    spec.memory_bytes = Some(64 << 20);
    spec.cpus = Some(0.5);
    spec.pids_limit = Some(64);
    let id = containers.create(&spec).await.unwrap();
    assert_eq!(inspect(&id, "{{.State.Status}}"), "created");
    assert_eq!(
        inspect(&id, "{{.HostConfig.Memory}}"),
        (64u64 << 20).to_string()
    );
    assert_eq!(inspect(&id, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(&id, "{{.HostConfig.PidsLimit}}"), "64");
    assert_eq!(inspect(&id, "{{.HostConfig.NetworkMode}}"), "none");
    assert!(inspect(&id, "{{.Config.Env}}").contains("GREETING=hello there"));
    containers.start(&id).await.unwrap();
    assert_eq!(inspect(&id, "{{.State.Status}}"), "running");
    let label = format!("reach.run={run}");
    let listed = containers.list(&[&label]).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].state, "running");
    assert_eq!(listed[0].labels.get("reach.run"), Some(&run));
    containers.stop(&id, Duration::from_secs(0)).await.unwrap();
    assert_eq!(inspect(&id, "{{.State.Status}}"), "exited");
    containers.stop(&id, Duration::from_secs(0)).await.unwrap();
    containers.remove(&id).await.unwrap();
    assert!(containers.list(&[&label]).await.unwrap().is_empty());
    containers.remove(&id).await.unwrap();

    // Orphans of a crashed run: found by label, removed, running or not.
    let orphan = ContainerSpec::new(&image)
        .label("reach-test", "")
        .label("reach.run", &run)
        .cmd(["sleep", "1000000"]);
    let a = containers.create(&orphan).await.unwrap();
    let b = containers.create(&orphan).await.unwrap();
    containers.start(&a).await.unwrap();
    assert_eq!(containers.reap(&[&label]).await.unwrap(), 2);
    assert!(containers.list(&[&label]).await.unwrap().is_empty());
    let _ = b;
}

#[tokio::test]
async fn a_missing_image_says_what_to_do() {
    if !engine("missing image") {
        return;
    }
    let containers = Containers::connect(&DockerOptions::default())
        .await
        .unwrap();
    let err = containers
        .create(&ContainerSpec::new("reach-no-such-image:1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), reach_core::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("build or load the image"), "{err}");
}
