//! `reach rootfs export` and `import`: a container's file system, exported through the
//! engine, lands in a proot root (as root: owners and device nodes too) and on an SSH server
//! (as its unprivileged user: what it may keep), the trees compared entry by entry with
//! the archive.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::reach;

fn hash(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a compared entry is: type, mode, owners (when kept), size and content or target.
fn describe(kind: &str, mode: u32, owner: Option<(u64, u64)>, detail: String) -> String {
    let owner = owner.map_or(String::new(), |(u, g)| format!(" {u}:{g}"));
    format!("{kind} {mode:o}{owner} {detail}")
}

/// The archive's entries by path (hard links as what they link to).
fn archive_tree(file: &Path, owners: bool, mode_mask: u32) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(std::fs::File::open(file).unwrap());
    let mut tree = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || path == "." {
            continue;
        }
        let mode = header.mode().unwrap() & mode_mask;
        let owner = owners.then(|| (header.uid().unwrap(), header.gid().unwrap()));
        let kind = header.entry_type();
        let value = if kind.is_hard_link() {
            let target = entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            tree.get(&target).cloned().unwrap()
        } else if kind.is_dir() {
            describe("dir", mode, owner, String::new())
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            describe("link", 0, owner, target)
        } else if kind.is_character_special() {
            let dev = format!(
                "{},{}",
                header.device_major().unwrap().unwrap(),
                header.device_minor().unwrap().unwrap()
            );
            describe("char", mode, owner, dev)
        } else if kind.is_fifo() {
            describe("fifo", mode, owner, String::new())
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            describe("file", mode, owner, hash(&data))
        };
        tree.insert(path, value);
    }
    tree
}

/// The tree under `dir` on this host, as [`archive_tree`] describes it.
fn disk_tree(dir: &Path, owners: bool, mode_mask: u32) -> BTreeMap<String, String> {
    fn walk(
        dir: &Path,
        prefix: &str,
        owners: bool,
        mask: u32,
        tree: &mut BTreeMap<String, String>,
    ) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let owner = owners.then(|| (u64::from(meta.uid()), u64::from(meta.gid())));
            let mode = meta.mode() & mask;
            let kind = meta.file_type();
            let value = if kind.is_dir() {
                walk(&entry.path(), &format!("{name}/"), owners, mask, tree);
                describe("dir", mode, owner, String::new())
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                describe("link", 0, owner, target.to_string_lossy().into_owned())
            } else if kind.is_char_device() {
                let rdev = meta.rdev();
                describe(
                    "char",
                    mode,
                    owner,
                    format!("{},{}", (rdev >> 8) & 0xfff, rdev & 0xff),
                )
            } else if kind.is_fifo() {
                describe("fifo", mode, owner, String::new())
            } else {
                let data = std::fs::read(entry.path()).unwrap();
                describe("file", mode, owner, hash(&data))
            };
            tree.insert(name, value);
        }
    }
    let mut tree = BTreeMap::new();
    walk(dir, "", owners, mode_mask, &mut tree);
    tree
}

#[test]
fn a_containers_file_system_lands_whole_in_proot_and_over_ssh() {
    if !reach_test::docker::available_or_skip("reach rootfs export docker://") {
        return;
    }
    let Some(sshd) = reach_test::sshd::SshdFixture::start_or_skip("reach rootfs import over ssh")
    else {
        return;
    };
    let container = reach_test::docker::ContainerFixture::busybox().unwrap();
    let made = container
        .exec(&[
            "sh",
            "-c",
            "mkdir /data && echo hello > /data/f && ln /data/f /data/hard && ln -s f /data/link \
             && mkfifo /data/fifo && chown 1000:1000 /data/f && chmod 4755 /data/f \
             && mknod /data/null c 1 3 && mkdir /data/ro && chmod 555 /data/ro",
        ])
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("c.tar");
    let dest = format!("docker://{}", container.name());
    let out = reach(&["rootfs", "export", &dest, export.to_str().unwrap()]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!work.path().join("c.tar.part").exists());

    // Into an empty proot root, as root: everything, owners and the device node included.
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let into = format!("proot://{}:/", root.display());
    let out = reach(&["rootfs", "import", export.to_str().unwrap(), &into]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected = archive_tree(&export, true, 0o7777);
    assert!(expected.contains_key("data/null") && expected.contains_key("bin/sh"));
    assert_eq!(disk_tree(&root, true, 0o7777), expected);
    let out = reach(&[
        "exec",
        &format!("proot://{}", root.display()),
        "--",
        "cat",
        "/data/hard",
    ])
    .run();
    assert_eq!(out.stdout_text(), "hello\n", "{}", out.stderr);

    // Over SSH, as an unprivileged user: no device node may be made, no owner kept.
    container.exec(&["rm", "/data/null"]).unwrap();
    let out = reach(&["rootfs", "export", &dest, export.to_str().unwrap()]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let remote = sshd.user_dir("imported").unwrap();
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let target = format!("{}:{remote}", sshd.destination());
    let out = reach(&[
        "rootfs",
        "-i",
        &key,
        "--known-hosts",
        &known,
        "import",
        export.to_str().unwrap(),
        &target,
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        disk_tree(Path::new(&remote), false, 0o777),
        archive_tree(&export, false, 0o777)
    );

    // And back out over SSH: the same tree again.
    let again = work.path().join("again.tar");
    let out = reach(&[
        "rootfs",
        "-i",
        &key,
        "--known-hosts",
        &known,
        "export",
        &target,
        again.to_str().unwrap(),
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        archive_tree(&again, false, 0o777),
        archive_tree(&export, false, 0o777)
    );
}

#[test]
fn a_failed_export_leaves_no_file() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("out.tar");
    let out = reach(&[
        "rootfs",
        "export",
        "/nonexistent/root",
        file.to_str().unwrap(),
    ])
    .run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/nonexistent/root"), "{}", out.stderr);
    assert!(!file.exists() && !work.path().join("out.tar.part").exists());
}
