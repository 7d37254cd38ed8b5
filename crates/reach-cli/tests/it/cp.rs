//! `reach cp` between every pair of backends (local, ssh, docker), against the real sshd
//! and Docker engine. Files are put in place and checked with the peers' own tools (the
//! local file system, `docker cp`, busybox `sha256sum`), never with reach itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use reach_test::docker::ContainerFixture;
use reach_test::sshd::SshdFixture;
use sha2::{Digest, Sha256};

use crate::{reach, Outcome};

const GIB: u64 = 1 << 30;

/// Where one side of a copy lives.
enum Peer {
    Local,
    Ssh(Rc<SshdFixture>),
    Docker(Rc<ContainerFixture>),
}

/// One side of a copy: a peer and a fresh directory on it.
struct Side {
    peer: Peer,
    /// The directory, in the peer's syntax (a local path for local and ssh: same disk).
    dir: String,
    _local: Option<tempfile::TempDir>,
}

fn sh(script: &str) -> std::process::Output {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Side {
    /// The two sides of a pair; a pair of one kind shares one server.
    fn pair(src: &str, dst: &str, test: &str) -> Option<(Side, Side)> {
        let mut sshd = None;
        let mut container = None;
        for kind in [src, dst] {
            match kind {
                "ssh" if sshd.is_none() => sshd = Some(Rc::new(SshdFixture::start_or_skip(test)?)),
                "docker" if container.is_none() => {
                    if !reach_test::docker::available_or_skip(test) {
                        return None;
                    }
                    container = Some(Rc::new(ContainerFixture::busybox().unwrap()));
                }
                _ => {}
            }
        }
        let make = |kind: &str| match kind {
            "local" => {
                let dir = tempfile::tempdir().unwrap();
                Side {
                    peer: Peer::Local,
                    dir: dir.path().display().to_string(),
                    _local: Some(dir),
                }
            }
            "ssh" => {
                let sshd = sshd.clone().unwrap();
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = sshd.user_dir(&format!("side-{n}")).unwrap();
                Side {
                    peer: Peer::Ssh(sshd),
                    dir,
                    _local: None,
                }
            }
            "docker" => {
                let c = container.clone().unwrap();
                let dir = c.scratch(None).unwrap();
                Side {
                    peer: Peer::Docker(c),
                    dir,
                    _local: None,
                }
            }
            other => panic!("no backend {other}"),
        };
        Some((make(src), make(dst)))
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir)
    }

    /// The CLI argument naming `rel` on this side.
    fn arg(&self, rel: &str) -> String {
        match &self.peer {
            Peer::Local => self.path(rel),
            Peer::Ssh(sshd) => format!("{}{}", sshd.destination(), self.path(rel)),
            Peer::Docker(c) => format!("{}{}", c.destination(None), self.path(rel)),
        }
    }

    /// Runs a shell script in this side's directory, as the side's user where it matters.
    fn sh(&self, script: &str) -> std::process::Output {
        match &self.peer {
            Peer::Local => sh(&format!("cd {} && {script}", quote(&self.dir))),
            Peer::Ssh(sshd) => {
                let out = sh(&format!("cd {} && {script}", quote(&self.dir)));
                sh(&format!("chown -R {} {}", sshd.user(), quote(&self.dir)));
                out
            }
            Peer::Docker(c) => {
                let out = c
                    .exec(&["sh", "-c", &format!("cd {} && {script}", quote(&self.dir))])
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out
            }
        }
    }

    /// Puts a local file or tree at `rel`.
    fn stage(&self, from: &Path, rel: &str) {
        match &self.peer {
            Peer::Docker(c) => c.cp_to(from, &self.path(rel)).unwrap(),
            _ => {
                sh(&format!(
                    "cp -a {} {}",
                    quote(&from.display().to_string()),
                    quote(&self.path(rel))
                ));
                if let Peer::Ssh(sshd) = &self.peer {
                    sh(&format!(
                        "chown -R {} {}",
                        sshd.user(),
                        quote(&self.path(rel))
                    ));
                }
            }
        }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, data).unwrap();
        self.stage(&file, rel);
    }

    /// A local view of `rel` (the path itself, or a `docker cp` of it).
    fn fetch(&self, rel: &str) -> (PathBuf, Option<tempfile::TempDir>) {
        match &self.peer {
            Peer::Docker(c) => {
                let dir = tempfile::tempdir().unwrap();
                let to = dir.path().join("x");
                c.cp_from(&self.path(rel), &to).unwrap();
                (to, Some(dir))
            }
            _ => (PathBuf::from(self.path(rel)), None),
        }
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        let (path, _keep) = self.fetch(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    fn exists(&self, rel: &str) -> bool {
        match &self.peer {
            Peer::Docker(c) => c
                .exec(&["test", "-e", &self.path(rel)])
                .unwrap()
                .status
                .success(),
            _ => std::fs::symlink_metadata(self.path(rel)).is_ok(),
        }
    }

    /// The size of `rel`, or `None` when it does not exist.
    fn size(&self, rel: &str) -> Option<u64> {
        match &self.peer {
            Peer::Docker(c) => {
                let out = c.exec(&["stat", "-c", "%s", &self.path(rel)]).unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().ok()
            }
            _ => std::fs::metadata(self.path(rel)).ok().map(|m| m.len()),
        }
    }

    /// Where this host sees `rel` without a round trip through the engine: root looks into a
    /// container through `/proc/PID/root`. For watching a part grow, where a `docker exec`
    /// per look can take longer than a fast copy.
    fn host_view(&self, rel: &str) -> PathBuf {
        match &self.peer {
            Peer::Docker(c) => {
                let out = Command::new("docker")
                    .args(["inspect", "-f", "{{.State.Pid}}", c.name()])
                    .output()
                    .unwrap();
                let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                PathBuf::from(format!("/proc/{pid}/root{}", self.path(rel)))
            }
            _ => PathBuf::from(self.path(rel)),
        }
    }

    /// The SHA-256 of `rel` by the peer's own tools.
    fn sha256(&self, rel: &str) -> String {
        match &self.peer {
            Peer::Docker(c) => {
                let out = c.exec(&["sha256sum", &self.path(rel)]).unwrap();
                String::from_utf8_lossy(&out.stdout)[..64].to_owned()
            }
            _ => file_sha256(Path::new(&self.path(rel))),
        }
    }

    /// The flags `reach` needs for this side.
    fn flags(&self) -> Vec<String> {
        match &self.peer {
            Peer::Ssh(sshd) => vec![
                "-i".into(),
                sshd.client_key().display().to_string(),
                "--known-hosts".into(),
                sshd.known_hosts().display().to_string(),
            ],
            _ => Vec::new(),
        }
    }
}

fn file_sha256(path: &Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hex(&hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `reach cp` with the flags both sides need, then `args`.
fn cp_command(src: &Side, dst: &Side, args: &[&str]) -> Vec<String> {
    let mut all = vec!["cp".to_owned()];
    let mut flags = src.flags();
    if flags.is_empty() {
        flags = dst.flags();
    }
    all.extend(flags);
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

fn cp(src: &Side, dst: &Side, args: &[&str]) -> Outcome {
    let all = cp_command(src, dst, args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    reach(&refs).run()
}

/// Deterministic incompressible bytes (xorshift), so every offset differs.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 1 GiB pseudo-random file shared by the tests of this machine (made once, atomically),
/// readable by the ssh test user; with its SHA-256.
fn big_file() -> (PathBuf, String) {
    let path = PathBuf::from("/tmp/reach-test-cp-1g.bin");
    let hash_path = PathBuf::from("/tmp/reach-test-cp-1g.sha256");
    if let (Ok(meta), Ok(hash)) = (
        std::fs::metadata(&path),
        std::fs::read_to_string(&hash_path),
    ) {
        if meta.len() == GIB && hash.len() == 64 {
            return (path, hash);
        }
    }
    let tmp = PathBuf::from(format!("/tmp/reach-test-cp-1g.{}", std::process::id()));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp).unwrap();
        let mut hasher = Sha256::new();
        for i in 0..(GIB / (64 << 20)) {
            let chunk = pseudo_random(64 << 20, 0x9e37_79b9 + i);
            hasher.update(&chunk);
            file.write_all(&chunk).unwrap();
        }
        let hash = hex(&hasher.finalize());
        std::fs::write(format!("{}.sha", tmp.display()), &hash).unwrap();
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    let hash = std::fs::read_to_string(format!("{}.sha", tmp.display())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    std::fs::write(&hash_path, &hash).unwrap();
    let _ = std::fs::remove_file(format!("{}.sha", tmp.display()));
    (path, hash)
}

/// Empty file, names with spaces and non-ASCII, a tree with a symlink and a FIFO,
/// modes and mtimes with --preserve, a missing destination directory, an unreadable source.
fn basics(src_kind: &str, dst_kind: &str) {
    let test = format!("cp {src_kind}->{dst_kind} basics");
    let Some((src, dst)) = Side::pair(src_kind, dst_kind, &test) else {
        return;
    };
    // Empty file.
    src.write("empty", b"");
    let out = cp(
        &src,
        &dst,
        &["--json", &src.arg("empty"), &dst.arg("empty")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["files"], 1);
    assert_eq!(summary["bytes"], 0);
    assert_eq!(
        summary["copied"][0]["sha256"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(dst.read("empty"), b"");
    assert!(!dst.exists(".empty.reach-part"));

    // A name with spaces and non-ASCII, into an existing directory (several sources).
    let name = "with space é ü.txt";
    src.write(name, "héllo wörld\n".as_bytes());
    src.write("second", b"2\n");
    dst.sh("mkdir into");
    let out = cp(
        &src,
        &dst,
        &[&src.arg(name), &src.arg("second"), &dst.arg("into")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        dst.read(&format!("into/{name}")),
        "héllo wörld\n".as_bytes()
    );
    assert_eq!(dst.read("into/second"), b"2\n");

    // A tree: a file with mode and mtime, a nested dir with an odd name, a symlink, a FIFO.
    src.sh(
        "mkdir -p 't r/sub dir' && printf aaa > 't r/a' && chmod 640 't r/a' \
         && touch -d '2001-02-03 04:05:06' 't r/a' && printf bbb > 't r/sub dir/ü b' \
         && ln -s a 't r/link' && mkfifo 't r/fifo'",
    );
    let out = cp(
        &src,
        &dst,
        &["-r", "--preserve", &src.arg("t r"), &dst.arg("t r")],
    );
    assert_ne!(out.code, 0, "a FIFO in the tree must fail the copy");
    assert!(
        out.stderr.contains("fifo") && out.stderr.contains("special files are not copied"),
        "{}",
        out.stderr
    );
    assert_eq!(dst.read("t r/a"), b"aaa");
    assert_eq!(dst.read("t r/sub dir/ü b"), b"bbb");
    let (local, _keep) = dst.fetch("t r");
    let a = std::fs::metadata(local.join("a")).unwrap();
    assert_eq!(a.permissions().mode() & 0o7777, 0o640);
    let mtime = a
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expected = sh("date -d '2001-02-03 04:05:06' +%s").stdout;
    assert_eq!(
        mtime.as_secs().to_string(),
        String::from_utf8_lossy(&expected).trim()
    );
    assert_eq!(
        std::fs::read_link(local.join("link")).unwrap(),
        PathBuf::from("a"),
        "the symlink is copied as a link"
    );
    assert!(!local.join("fifo").exists());

    // A destination directory that does not exist: an error naming it; nothing made.
    let out = cp(&src, &dst, &[&src.arg("empty"), &dst.arg("nope/x")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("nope") && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
    assert!(!dst.exists("nope"));

    // A directory without -r.
    let out = cp(&src, &dst, &[&src.arg("t r"), &dst.arg("x")]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("-r"), "{}", out.stderr);

    // An unreadable source over an existing destination: an error, the old file kept.
    dst.write("keep", b"old\n");
    if let Peer::Ssh(_) = src.peer {
        // Root-owned and private: the ssh user cannot read it.
        sh(&format!(
            "printf secret > {0} && chown root {0} && chmod 600 {0}",
            quote(&src.path("secret"))
        ));
        let out = cp(&src, &dst, &[&src.arg("secret"), &dst.arg("keep")]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("secret") && out.stderr.to_lowercase().contains("permission"),
            "{}",
            out.stderr
        );
        assert_eq!(dst.read("keep"), b"old\n");
        assert!(!dst.exists(".keep.reach-part"));
    } else {
        eprintln!(
            "{test}: unreadable source not tried: the {src_kind} source reads as root, \
             which any file lets read (covered by the ssh-source pairs)"
        );
    }
}

/// A 1 GiB copy over an old destination, SIGKILLed at 50%: the old file is intact; then
/// `--resume` continues from the part and the result hashes right.
fn killed_at_half_then_resumed(src_kind: &str, dst_kind: &str) {
    let test = format!("cp {src_kind}->{dst_kind} killed at half");
    let Some((src, dst)) = Side::pair(src_kind, dst_kind, &test) else {
        return;
    };
    let (big, hash) = big_file();
    let source = match src.peer {
        // Local and ssh read the shared file where it is (the ssh user may read /tmp).
        Peer::Docker(_) => {
            src.stage(&big, "big");
            src.arg("big")
        }
        Peer::Local => big.display().to_string(),
        Peer::Ssh(ref sshd) => format!("{}{}", sshd.destination(), big.display()),
    };
    dst.write("big", b"the old contents\n");
    let args = cp_command(&src, &dst, &[&source, &dst.arg("big")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Looked at directly (a copy between containers can pass half in a fraction of a
    // second), or through the peer where this host cannot see in (not root).
    let view = dst.host_view(".big.reach-part");
    let seen = |view: &Path| match std::fs::metadata(view) {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    };
    loop {
        let size = seen(&view).or_else(|| dst.size(".big.reach-part"));
        if size.unwrap_or(0) >= GIB / 2 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("reach cp ended before half the copy ({status})");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "copy too slow"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        dst.read("big"),
        b"the old contents\n",
        "the old destination is untouched"
    );
    let mut part = dst
        .size(".big.reach-part")
        .expect("the part stays for --resume");
    // The server side may still be writing what it had received when the client died.
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = dst
            .size(".big.reach-part")
            .expect("the part stays for --resume");
        if now == part {
            break;
        }
        part = now;
    }
    assert!(part < GIB, "part {part}");

    let out = cp(
        &src,
        &dst,
        &["--resume", "--json", &source, &dst.arg("big")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    let file = &summary["copied"][0];
    assert_eq!(file["bytes"], GIB);
    assert_eq!(file["sha256"], hash.as_str());
    // Into this machine from a remote one, the source hashes the file itself while it
    // streams; everywhere else the destination hashes what landed.
    let check = if dst_kind == "local" && src_kind != "local" {
        "source-hash"
    } else {
        "target-hash"
    };
    assert_eq!(file["verified"], check, "{summary}");
    let resumed = file["resumed_from"].as_u64().unwrap();
    assert!(
        resumed > 0 && resumed <= part,
        "resumed from {resumed}, the part held {part}"
    );
    assert_eq!(dst.size("big"), Some(GIB));
    assert_eq!(dst.sha256("big"), hash);
    assert!(!dst.exists(".big.reach-part"));
}

/// 10,000 small files in 20 directories, copied with -r, every byte checked.
fn tree_of_10000_files(src_kind: &str, dst_kind: &str) {
    let test = format!("cp {src_kind}->{dst_kind} tree");
    let Some((src, dst)) = Side::pair(src_kind, dst_kind, &test) else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    let root = local.path().join("tree");
    for d in 0..20 {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            let n = d * 500 + f;
            let data = pseudo_random(64 + (n * 37) % 4000, n as u64);
            std::fs::write(dir.join(format!("f{f:03}")), data).unwrap();
        }
    }
    src.stage(&root, "tree");
    let out = cp(
        &src,
        &dst,
        &["-r", "--json", &src.arg("tree"), &dst.arg("tree")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["files"], 10_000);
    assert_eq!(summary["failures"].as_array().map(Vec::len), Some(0));
    let (copied, _keep) = dst.fetch("tree");
    let mut checked = 0;
    for d in 0..20 {
        for f in 0..500 {
            let rel = format!("d{d:02}/f{f:03}");
            let want = std::fs::read(root.join(&rel)).unwrap();
            let got = std::fs::read(copied.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(got == want, "{rel} differs");
            checked += 1;
        }
    }
    assert_eq!(checked, 10_000);
    let leftovers = sh(&format!(
        "find {} -name '*.reach-part' | wc -l",
        quote(&copied.display().to_string())
    ));
    assert_eq!(String::from_utf8_lossy(&leftovers.stdout).trim(), "0");
}

/// Wildcards in a source expand on the source's target, as scp expands them: sorted, hidden
/// names left out, `-r` on matched directories, a bracketed name taken as written when the
/// pattern matches nothing, and no match an error naming the pattern.
fn wildcards_in_sources(src_kind: &str) {
    let test = format!("cp {src_kind} wildcards");
    let Some((src, dst)) = Side::pair(src_kind, "local", &test) else {
        return;
    };
    src.sh(
        "mkdir w w/d1 w/d2 && printf A > w/a.txt && printf B > 'w/b c.txt' && \
         printf H > w/.h.txt && printf L > w/c.log && printf K > 'w/k[1].txt' && \
         printf 1 > w/d1/x.txt && printf 2 > w/d2/x.txt",
    );
    let local = |rel: &str| dst.path(rel);
    let arg = |rel: &str| match src.peer {
        // `local:` names the destination, so the pattern is reach's to expand.
        Peer::Local => format!("local:{}", src.path(rel)),
        _ => src.arg(rel),
    };
    std::fs::create_dir(local("flat")).unwrap();
    let out = cp(&src, &dst, &[&arg("w/*.txt"), &local("flat")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut names: Vec<String> = std::fs::read_dir(local("flat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "b c.txt", "k[1].txt"]);
    assert_eq!(std::fs::read(local("flat/b c.txt")).unwrap(), b"B");

    std::fs::create_dir(local("trees")).unwrap();
    let out = cp(&src, &dst, &["-r", &arg("w/d?"), &local("trees")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(local("trees/d1/x.txt")).unwrap(), b"1");
    assert_eq!(std::fs::read(local("trees/d2/x.txt")).unwrap(), b"2");

    let out = cp(&src, &dst, &[&arg("w/k[1].txt"), &local("lit")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(local("lit")).unwrap(), b"K");

    let out = cp(
        &src,
        &dst,
        &[&arg("w/*.nope"), &arg("w/a.txt"), &local("flat")],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("nothing matches") && out.stderr.contains("w/*.nope"),
        "{}",
        out.stderr
    );
}

#[test]
fn wildcards_in_sources_local() {
    wildcards_in_sources("local");
}

#[test]
fn wildcards_in_sources_ssh() {
    wildcards_in_sources("ssh");
}

#[test]
fn wildcards_in_sources_docker() {
    wildcards_in_sources("docker");
}

macro_rules! pairs {
    ($($name:ident: $src:literal -> $dst:literal;)*) => {$(
        mod $name {
            #[test]
            fn basics() {
                super::basics($src, $dst);
            }
            #[test]
            fn killed_at_half_then_resumed() {
                super::killed_at_half_then_resumed($src, $dst);
            }
            #[test]
            fn tree_of_10000_files() {
                super::tree_of_10000_files($src, $dst);
            }
        }
    )*};
}

pairs! {
    local_to_local: "local" -> "local";
    local_to_ssh: "local" -> "ssh";
    local_to_docker: "local" -> "docker";
    ssh_to_local: "ssh" -> "local";
    ssh_to_ssh: "ssh" -> "ssh";
    ssh_to_docker: "ssh" -> "docker";
    docker_to_local: "docker" -> "local";
    docker_to_ssh: "docker" -> "ssh";
    docker_to_docker: "docker" -> "docker";
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(test: &str) -> Option<SmallDisk> {
        if !reach_test::is_root() {
            reach_test::skip(test, "mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        sh(&format!(
            "mount -t tmpfs -o size=4m,mode=0777 reach-test-full {}",
            quote(&dir.path().display().to_string())
        ));
        Some(SmallDisk { dir })
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn used(&self) -> u64 {
        let out = sh(&format!(
            "df -B1 --output=used {} | tail -1",
            quote(&self.path())
        ));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An 8 MiB file onto a 4 MiB file system: an error, the old file intact, no part left.
fn disk_full(dst_kind: &str) {
    let test = format!("cp local->{dst_kind} disk full");
    let Some(disk) = SmallDisk::mount(&test) else {
        return;
    };
    let Some((src, mut dst)) = Side::pair("local", dst_kind, &test) else {
        return;
    };
    let _container;
    match &dst.peer {
        Peer::Local => dst.dir = disk.path(),
        Peer::Ssh(sshd) => {
            sh(&format!("chown {} {}", sshd.user(), quote(&disk.path())));
            dst.dir = disk.path();
        }
        Peer::Docker(_) => {
            let image = reach_test::docker::busybox_image().unwrap();
            let mount = format!("{}:/small", disk.path());
            let c = Rc::new(
                ContainerFixture::run(&image, &["-v", &mount], &["sleep", "1000000"]).unwrap(),
            );
            _container = c.clone();
            dst = Side {
                peer: Peer::Docker(c),
                dir: "/small".into(),
                _local: None,
            };
        }
    }
    dst.write("keep", b"old\n");
    let before = disk.used();
    src.write("big", &pseudo_random(8 << 20, 7));
    let out = cp(&src, &dst, &[&src.arg("big"), &dst.arg("keep")]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("keep"),
        "the error names the file: {}",
        out.stderr
    );
    if !matches!(dst.peer, Peer::Ssh(_)) {
        // OpenSSH's sftp-server reports ENOSPC as a bare "Failure".
        assert!(out.stderr.contains("No space left"), "{}", out.stderr);
    }
    assert_eq!(dst.read("keep"), b"old\n");
    assert!(!dst.exists(".keep.reach-part"), "the part is removed");
    assert!(disk.used() <= before + 64 * 1024, "the space is given back");
}

#[test]
fn disk_full_local() {
    disk_full("local");
}

#[test]
fn disk_full_ssh() {
    disk_full("ssh");
}

#[test]
fn disk_full_docker() {
    disk_full("docker");
}

/// Ctrl-C in the middle of a copy: exit 130, the part removed, the old file intact.
#[test]
fn ctrl_c_removes_the_part_and_keeps_the_old_file() {
    let Some((src, dst)) = Side::pair("local", "ssh", "cp ctrl-c") else {
        return;
    };
    let (big, _) = big_file();
    dst.write("big", b"the old contents\n");
    let args = cp_command(&src, &dst, &[&big.display().to_string(), &dst.arg("big")]);
    let child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while dst.size(".big.reach-part").unwrap_or(0) < 64 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "copy too slow"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sh(&format!("kill -INT {}", child.id()));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(dst.read("big"), b"the old contents\n");
    assert!(!dst.exists(".big.reach-part"), "the part is removed");
}

/// The progress bar is drawn on a terminal (here one made by `script`) and never on a pipe.
#[test]
fn progress_shows_on_a_terminal_only() {
    let (big, _) = big_file();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy").display().to_string();
    let line = format!(
        "{} cp {} {}",
        env!("CARGO_BIN_EXE_reach"),
        quote(&big.display().to_string()),
        quote(&to)
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("ETA") && shown.contains("/s") && shown.contains("GiB"),
        "no progress bar on a terminal: {shown:?}"
    );
    std::fs::remove_file(&to).unwrap();
    let piped = reach(&["cp", &big.display().to_string(), &to]).run();
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(piped.stderr, "", "nothing is drawn on a pipe");
}

/// A server whose `dd` is a stand-in, put first on `PATH` by sshd's `SetEnv`: a large upload
/// is hashed while it arrives only with GNU dd there, a hasher that cannot run leaves the
/// check to the hash after the copy, and a hasher that lies is caught, never trusted.
#[test]
fn uploads_are_checked_even_where_hashing_while_writing_fails() {
    let test = "cp uploads without a working Python or GNU dd";
    if !SshdFixture::available_or_skip(test) {
        return;
    }
    let bin = tempfile::Builder::new()
        .prefix("reach-fake-dd-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lie = bin.path().join("lie");
    // Like busybox's dd, it knows no --version; with `lie` present it claims to be GNU dd
    // and adds a byte to everything it reads.
    let script = format!(
        "#!/bin/sh\nif [ -e {lie} ]; then\n  [ \"$1\" = --version ] && exit 0\n  \
         /bin/dd \"$@\" && printf x\n  exit\nfi\n\
         [ \"$1\" = --version ] && {{ echo 'dd: unrecognized option' >&2; exit 1; }}\n\
         exec /bin/dd \"$@\"\n",
        lie = quote(&lie.display().to_string())
    );
    let dd = bin.path().join("dd");
    std::fs::write(&dd, script).unwrap();
    std::fs::set_permissions(&dd, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A python3 that cannot hash (the follower then tries dd), or with `lie-python` present,
    // reads the offsets and claims a digest of its own.
    let lie_python = bin.path().join("lie-python");
    let python = bin.path().join("python3");
    std::fs::write(
        &python,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then cat >/dev/null; echo {} '*stdin'; exit 0; fi\nexit 98\n",
            quote(&lie_python.display().to_string()),
            "ab".repeat(32)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = SshdFixture::start_with(&format!(
        "SetEnv PATH={}:/usr/bin:/bin",
        bin.path().display()
    ))
    .unwrap();
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("nine-mib");
    let data = pseudo_random(9 << 20, 7);
    std::fs::write(&source, &data).unwrap();
    let remote = sshd.user_dir("upload").unwrap();
    let target = format!("{remote}/nine-mib");
    let upload = || {
        let key = sshd.client_key().display().to_string();
        let known = sshd.known_hosts().display().to_string();
        let dest = format!("{}{target}", sshd.destination());
        let src = source.display().to_string();
        reach(&[
            "cp",
            "-i",
            &key,
            "--known-hosts",
            &known,
            "--json",
            &src,
            &dest,
        ])
        .run()
    };

    // No GNU dd: checked after the copy, as on any server with a hash command.
    let out = upload();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["copied"][0]["verified"], "target-hash");
    assert_eq!(std::fs::read(&target).unwrap(), data);

    // A hasher that lies, one that says it is GNU dd or the Python one: the copy is
    // refused, the old file stays, no part is left.
    for (liar, who) in [(&lie, "GNU dd"), (&lie_python, "Python")] {
        std::fs::write(&target, b"the old contents\n").unwrap();
        let _ = std::fs::remove_file(&lie);
        std::fs::write(liar, b"").unwrap();
        let out = upload();
        assert_ne!(out.code, 0, "a copy checked by a lying {who} was accepted");
        assert!(
            out.stderr.contains("does not match what was sent"),
            "{who}: {}",
            out.stderr
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"the old contents\n");
        assert!(!Path::new(&format!("{remote}/.nine-mib.reach-part")).exists());
    }
}

/// A server that allows one session per connection (`MaxSessions 1`) has no room for a
/// hashing or tar command beside the SFTP session: copies still land whole and checked, by
/// reading back what was written and file by file, where they failed before.
#[test]
fn a_server_with_one_session_per_connection_still_gets_checked_copies() {
    let test = "cp against MaxSessions 1";
    if !SshdFixture::available_or_skip(test) {
        return;
    }
    let sshd = SshdFixture::start_with("MaxSessions 1").unwrap();
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let copy = |src: &str, dst: &str, recursive: bool| {
        let mut args = vec!["cp", "-i", &key, "--known-hosts", &known, "--json"];
        if recursive {
            args.push("-r");
        }
        args.extend([src, dst]);
        reach(&args).run()
    };
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("nine-mib");
    let data = pseudo_random(9 << 20, 11);
    std::fs::write(&source, &data).unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..5 {
        std::fs::write(
            tree.join(format!("f{i}")),
            pseudo_random(1000 + i, i as u64),
        )
        .unwrap();
    }
    let remote = sshd.user_dir("one-session").unwrap();
    let on_server = |rel: &str| format!("{}{remote}/{rel}", sshd.destination());

    let out = copy(&source.display().to_string(), &on_server("nine-mib"), false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["copied"][0]["verified"], "read-back");
    assert_eq!(std::fs::read(format!("{remote}/nine-mib")).unwrap(), data);

    let back = local.path().join("back");
    let out = copy(&on_server("nine-mib"), &back.display().to_string(), false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = copy(&tree.display().to_string(), &on_server("tree"), true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let back = local.path().join("tree-back");
    let out = copy(&on_server("tree"), &back.display().to_string(), true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for i in 0..5 {
        let name = format!("f{i}");
        let want = pseudo_random(1000 + i, i as u64);
        assert_eq!(
            std::fs::read(format!("{remote}/tree/{name}")).unwrap(),
            want
        );
        assert_eq!(std::fs::read(back.join(&name)).unwrap(), want);
    }
}
