//! `reach forward`: local ports carried to servers as each destination sees them — a web
//! server on the host's loopback reached through `local` and through a real sshd, one on a
//! container's loopback (no published port) through the agent — and the refusals named.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reach_test::docker::ContainerFixture;
use reach_test::sshd::SshdFixture;
use sha2::{Digest, Sha256};

/// A running `reach --json forward`, with the local addresses it printed.
struct Forwarder {
    child: Child,
    ports: Vec<u16>,
}

impl Forwarder {
    /// Starts `reach --json [flags] forward DEST SPECS...` and waits for every port to listen.
    /// A spec in parentheses is not passed: it stands for one the SSH config gives.
    fn start(flags: &[&str], dest: &str, specs: &[&str]) -> Forwarder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
            .arg("--json")
            .args(flags)
            .arg("forward")
            .arg(dest)
            .args(specs.iter().filter(|s| !s.starts_with('(')))
            .env("REACH_NO_REUSE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reach forward");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ports = Vec::new();
        for _ in specs {
            let line = lines.next().and_then(Result::ok).unwrap_or_else(|| {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("reach forward printed no listening address: {err}")
            });
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let listening = value["listening"].as_str().unwrap();
            ports.push(listening.rsplit(':').next().unwrap().parse().unwrap());
        }
        Forwarder { child, ports }
    }

    /// SIGTERM, then its exit code and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), err)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /path` over HTTP/1.0 to 127.0.0.1:port; the body of a 200.
fn get(port: u16, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    response[split + 4..].to_vec()
}

/// A file of `len` bytes that no two offsets repeat soon.
fn blob(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.join("blob");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// A busybox server on the host's loopback, stopped on drop.
struct HostServer(Child);

impl HostServer {
    /// `busybox httpd` serving `dir` on 127.0.0.1:port.
    fn httpd(dir: &Path, port: u16) -> HostServer {
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir)
            .spawn()
            .expect("busybox httpd (busybox-static)");
        wait_listening(port);
        HostServer(child)
    }
}

/// A server on the host's 127.0.0.1 that answers each connection, once it has read it to the
/// end, with the SHA-256 of what it read (as `sha256sum` prints it): it answers only if the
/// end of stream is passed on. Returns its port; it serves until the test process ends.
pub fn host_sha_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut data = Vec::new();
                if stream.read_to_end(&mut data).is_ok() {
                    let hex: String = Sha256::digest(&data)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let _ = writeln!(stream, "{hex}  -");
                }
            });
        }
    });
    port
}

/// The same server in a container: busybox `nc` running `sha256sum` per connection.
pub fn container_sha_server(port: u16) -> Vec<String> {
    ["nc", "-ll", "-p", &port.to_string(), "-e", "sha256sum"]
        .map(str::to_owned)
        .to_vec()
}

/// Sends `data` to 127.0.0.1:port, ends the stream, and returns the answer.
pub fn send_then_read(port: u16, data: &[u8]) -> String {
    try_send_then_read(port, data).unwrap()
}

/// [`send_then_read`], for a server that may not be there yet.
pub fn try_send_then_read(port: u16, data: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(data)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_listening(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing came to listen on 127.0.0.1:{port}");
}

/// Three fetches at once through the first forward; an upload through the second whose
/// answer needs our end of stream passed on; a connection through the third (whose target
/// nobody listens on) closed and reported. The forwarder ends cleanly on SIGTERM.
fn check_forwarding(flags: &[&str], dest: &str, http_port: u16, sha_port: u16, want: &[u8]) {
    let dead = free_port();
    let specs = [http_port, sha_port, dead].map(|p| format!("0:127.0.0.1:{p}"));
    let forwarder = Forwarder::start(flags, dest, &[&specs[0], &specs[1], &specs[2]]);
    let [port, sha_local, refused_port] = [0, 1, 2].map(|i| forwarder.ports[i]);
    let want_sum = Sha256::digest(want);
    let fetches: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(port, "/blob")))
        .collect();
    for fetch in fetches {
        let body = fetch.join().unwrap();
        assert_eq!(body.len(), want.len(), "{dest}: body length");
        assert_eq!(Sha256::digest(&body), want_sum, "{dest}: body bytes");
    }
    let answer = send_then_read(sha_local, want);
    let hex: String = want_sum.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        answer.split_whitespace().next(),
        Some(hex.as_str()),
        "{dest}: {answer:?}"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", refused_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.is_empty(), "{dest}: bytes from a refused connection");
    // Still serving after the refusal.
    assert_eq!(get(port, "/blob").len(), want.len());
    let (code, stderr) = forwarder.stop();
    assert_eq!(code, Some(0), "{dest}: {stderr}");
    assert!(
        stderr.contains(&format!("could not connect to 127.0.0.1:{dead}"))
            && stderr.contains("is anything listening there?"),
        "{dest}: {stderr}"
    );
}

#[test]
fn forward_reaches_a_server_on_the_hosts_loopback_locally_and_over_ssh() {
    let Some(sshd) = SshdFixture::start_or_skip("forward over ssh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = blob(dir.path(), 3_000_000);
    let (port, sha_port) = (free_port(), host_sha_server());
    let _httpd = HostServer::httpd(dir.path(), port);

    check_forwarding(&[], "local", port, sha_port, &data);
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    check_forwarding(
        &["-i", &key, "--known-hosts", &known],
        &sshd.destination(),
        port,
        sha_port,
        &data,
    );
}

/// `reach forward HOST` with no forwards runs the SSH config's `LocalForward` lines, as
/// `ssh -N HOST` would; a destination with neither says what to give.
#[test]
fn forward_with_no_spec_uses_the_ssh_configs_local_forwards() {
    let Some(sshd) = SshdFixture::start_or_skip("forward from LocalForward") else {
        return;
    };
    let server = host_sha_server();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host fwd\n{}  LocalForward 0 127.0.0.1:{server}\n",
            sshd.config_lines()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let forwarder = Forwarder::start(&["-F", &config], "fwd", &["(from the config)"]);
    let data = vec![7u8; 100_000];
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let answer = send_then_read(forwarder.ports[0], &data);
    assert_eq!(
        answer.split_whitespace().next(),
        Some(hex.as_str()),
        "{answer:?}"
    );
    let (code, stderr) = forwarder.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let out = crate::reach(&["forward", "local"]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nothing to forward"), "{}", out.stderr);
}

#[test]
fn forward_reaches_a_containers_unpublished_port() {
    if !reach_test::docker::available_or_skip("forward into a container") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = blob(dir.path(), 3_000_000);
    c.exec(&["mkdir", "/www"]).unwrap();
    c.cp_to(&path, "/www/blob").unwrap();
    let out = Command::new("docker")
        .args([
            "exec",
            "-d",
            c.name(),
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:8080",
            "-h",
            "/www",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut sha = vec!["exec".to_owned(), "-d".to_owned(), c.name().to_owned()];
    sha.extend(container_sha_server(9000));
    let out = Command::new("docker").args(&sha).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for port in [8080, 9000] {
        let listening = format!("netstat -ltn | grep -q ':{port} '");
        let up = (0..100).any(|_| {
            let ok = c.exec(&["sh", "-c", &listening]).unwrap().status.success();
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(up, "nothing came to listen on port {port} in the container");
    }
    // Listening in the container only: nothing on the host's side answers.
    check_forwarding(&[], &c.destination(None), 8080, 9000, &data);
}

#[test]
fn forward_refusals_are_named() {
    // A malformed spec: usage, with what to write.
    let out = crate::reach(&["forward", "local", "8080"]).run();
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("[BIND:]PORT:HOST:HOSTPORT"),
        "{}",
        out.stderr
    );
    // A local port in use: named, and nothing forwarded.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = crate::reach(&["forward", "local", &format!("{port}:127.0.0.1:1")]).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    // A server that forbids forwarding: the connection is closed and the reason named.
    let Some(sshd) = SshdFixture::start_or_skip("forward refused by sshd") else {
        return;
    };
    drop(sshd);
    let sshd = SshdFixture::start_with("AllowTcpForwarding no").unwrap();
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("0:127.0.0.1:{}", server.local_addr().unwrap().port());
    let forwarder = Forwarder::start(
        &["-i", &key, "--known-hosts", &known],
        &sshd.destination(),
        &[&target],
    );
    let mut stream = TcpStream::connect(("127.0.0.1", forwarder.ports[0])).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.is_empty());
    let (code, stderr) = forwarder.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("does not allow TCP forwarding"), "{stderr}");
}
