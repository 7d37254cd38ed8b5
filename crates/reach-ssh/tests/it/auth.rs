//! Authentication methods, ProxyJump, the client config and keepalives against real sshds.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reach_core::{Backend, Destination, ErrorKind, ExecSpec, ProcessExt};
use reach_ssh::zeroize::Zeroizing;
use reach_ssh::{SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;

use crate::{backend, fixture, options};

async fn id_un(ssh: &SshBackend) -> reach_core::Result<String> {
    let out = ssh.exec(ExecSpec::shell("id -un")).await?.output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Options that use nothing but what the test gives (no config, agent or default keys).
fn bare(sshd: &SshdFixture) -> SshOptions {
    SshOptions {
        known_hosts: Some(sshd.known_hosts()),
        use_agent: false,
        no_config: true,
        ..SshOptions::default()
    }
}

#[tokio::test]
async fn ssh_agent_keys_are_used() {
    let Some(sshd) = fixture("ssh_agent_keys_are_used") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _agent = crate::SshAgent::start(&socket);
    let added = Command::new("ssh-add")
        .arg(sshd.client_key())
        .env("SSH_AUTH_SOCK", &socket)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(added.success());
    // No -i: only the agent holds the authorized key.
    let ssh = backend(
        &sshd,
        SshOptions {
            use_agent: true,
            agent_socket: Some(socket.clone()),
            ..bare(&sshd)
        },
    );
    assert_eq!(id_un(&ssh).await.unwrap(), sshd.user());
    // Without the agent the same setup is refused.
    let ssh = backend(&sshd, bare(&sshd));
    let err = id_un(&ssh).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    // The config's IdentityAgent names the agent, or turns it off.
    for (agent, works) in [(socket.display().to_string(), true), ("none".into(), false)] {
        let config = dir.path().join("config");
        std::fs::write(&config, format!("Host *\n  IdentityAgent {agent}\n")).unwrap();
        let ssh = backend(
            &sshd,
            SshOptions {
                use_agent: true,
                no_config: false,
                config_file: Some(config),
                ..bare(&sshd)
            },
        );
        match id_un(&ssh).await {
            Ok(user) if works => assert_eq!(user, sshd.user()),
            Err(e) if !works => assert_eq!(e.kind(), ErrorKind::AuthFailed, "{e}"),
            other => panic!("IdentityAgent {agent}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn encrypted_keys_take_a_passphrase_given_or_prompted() {
    let Some(sshd) = fixture("encrypted_keys_take_a_passphrase_given_or_prompted") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("locked");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "open sesame", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    sshd.authorize(&std::fs::read_to_string(format!("{}.pub", key.display())).unwrap())
        .unwrap();
    let with_key = |extra: SshOptions| SshOptions {
        identity: Some(key.clone()),
        ..extra
    };

    let err = id_un(&backend(&sshd, with_key(bare(&sshd))))
        .await
        .unwrap_err();
    println!("no passphrase: {err}");
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert!(err.to_string().contains("is encrypted"), "{err}");
    assert!(!err.to_string().contains("open sesame"), "{err}");

    let given = with_key(SshOptions {
        passphrase: Some(Zeroizing::new("open sesame".into())),
        ..bare(&sshd)
    });
    assert_eq!(id_un(&backend(&sshd, given)).await.unwrap(), sshd.user());

    let wrong = with_key(SshOptions {
        passphrase: Some(Zeroizing::new("close sesame".into())),
        ..bare(&sshd)
    });
    let err = id_un(&backend(&sshd, wrong)).await.unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let prompted = with_key(SshOptions {
        prompt: Some(Arc::new(move |prompt: &str| {
            assert!(prompt.contains("passphrase"), "{prompt}");
            counter.fetch_add(1, Ordering::SeqCst);
            Some(Zeroizing::new("open sesame".to_owned()))
        })),
        ..bare(&sshd)
    });
    assert_eq!(id_un(&backend(&sshd, prompted)).await.unwrap(), sshd.user());
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // The key text itself works as -i too.
    let text = std::fs::read_to_string(&key).unwrap();
    let inline = SshOptions {
        identity: Some(text.into()),
        passphrase: Some(Zeroizing::new("open sesame".into())),
        ..bare(&sshd)
    };
    assert_eq!(id_un(&backend(&sshd, inline)).await.unwrap(), sshd.user());
}

#[tokio::test]
async fn password_authentication() {
    if !reach_test::is_root() {
        reach_test::skip(
            "password_authentication",
            "creating a user with a password needs root",
        );
        return;
    }
    if !SshdFixture::available_or_skip("password_authentication") {
        return;
    }
    let password = "correct horse, battery staple!";
    reach_test::sshd::ensure_password_user("reachpw", password).unwrap();
    let sshd = SshdFixture::start_with("PasswordAuthentication yes").unwrap();
    let dest = Destination::parse(&format!("ssh://reachpw@127.0.0.1:{}", sshd.port())).unwrap();
    let with = |password: &str| SshOptions {
        password: Some(Zeroizing::new(password.to_owned())),
        ..bare(&sshd)
    };
    let ssh = SshBackend::new(dest.clone(), with(password)).unwrap();
    assert_eq!(id_un(&ssh).await.unwrap(), "reachpw");
    let ssh = SshBackend::new(dest.clone(), with("wrong")).unwrap();
    let err = id_un(&ssh).await.unwrap_err();
    println!("wrong password: {err}");
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert!(err.to_string().contains("password was refused"), "{err}");
    // Secrets stay out of Debug output (and so out of logs).
    assert!(!format!("{:?}", with("hunter2")).contains("hunter2"));
}

/// Three sshds: the target is reached through two jump hosts, first with `-J`-style
/// options, then by a config file that names them all (`Host`, `HostName`, `Port`, `User`,
/// `IdentityFile`, `ProxyJump`, `UserKnownHostsFile`).
#[tokio::test]
async fn proxy_jump_through_a_chain_of_sshds() {
    let Some(first) = fixture("proxy_jump_through_a_chain_of_sshds") else {
        return;
    };
    let second = SshdFixture::start().unwrap();
    let target = SshdFixture::start().unwrap();
    let key = first.client_key();
    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    second.authorize(&public).unwrap();
    target.authorize(&public).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let mut all = String::new();
    for sshd in [&first, &second, &target] {
        all.push_str(&std::fs::read_to_string(sshd.known_hosts()).unwrap());
    }
    std::fs::write(&known, all).unwrap();
    let user = target.user();

    let jumps = vec![
        format!("{user}@127.0.0.1:{}", first.port()),
        format!("{user}@127.0.0.1:{}", second.port()),
    ];
    let ssh = SshBackend::new(
        Destination::parse(&target.destination()).unwrap(),
        SshOptions {
            identity: Some(key.clone()),
            known_hosts: Some(known.clone()),
            proxy_jump: Some(jumps),
            use_agent: false,
            no_config: true,
            ..SshOptions::default()
        },
    )
    .unwrap();
    let out = ssh
        .exec(ExecSpec::shell("echo through"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"through\n");
    for (name, sshd) in [("first", &first), ("second", &second), ("target", &target)] {
        assert!(
            sshd.log().contains("Accepted publickey"),
            "{name} sshd saw no login: {}",
            sshd.log()
        );
    }

    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host target\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump hop1,hop2\n\
             Host hop1\n  HostName 127.0.0.1\n  Port {}\n\
             Host hop2\n  HostName 127.0.0.1\n  Port {}\n\
             Host *\n  User {user}\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            target.port(),
            first.port(),
            second.port(),
            key.display(),
            known.display(),
        ),
    )
    .unwrap();
    let ssh = SshBackend::new(
        Destination::parse("target").unwrap(),
        SshOptions {
            config_file: Some(config),
            use_agent: false,
            ..SshOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ssh.addr(), format!("127.0.0.1:{}", target.port()));
    assert_eq!(id_un(&ssh).await.unwrap(), user);
}

#[tokio::test]
async fn keepalives_detect_a_peer_that_stopped_answering() {
    let Some(sshd) = fixture("keepalives_detect_a_peer_that_stopped_answering") else {
        return;
    };
    let ssh = backend(
        &sshd,
        SshOptions {
            keepalive_interval: Some(Duration::from_secs(1)),
            ..options(&sshd)
        },
    );
    let process = ssh.exec(ExecSpec::shell("sleep 60")).await.unwrap();
    sshd.freeze_connections();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("keepalives did not notice the silent peer within 30 s");
    let err = outcome.unwrap_err();
    println!("silent peer after {:?}: {err}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::SessionDropped, "{err}");
}

/// A key the server does not list, certified by a CA it trusts (`TrustedUserCAKeys`): the
/// certificate beside the key (`KEY-cert.pub`), or named by `CertificateFile`, lets it in;
/// without one the key is refused.
#[tokio::test]
async fn user_certificates_are_offered_with_their_keys() {
    let test = "user_certificates_are_offered_with_their_keys";
    if !SshdFixture::available_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = |name: &str| dir.path().join(name);
    crate::keygen(&path("ca"));
    crate::keygen(&path("user"));
    let sshd = SshdFixture::start_with(&format!("TrustedUserCAKeys {}", path("ca.pub").display()))
        .unwrap();
    let with_key = |config: Option<&std::path::Path>| {
        let mut options = SshOptions {
            identity: Some(path("user")),
            ..bare(&sshd)
        };
        if let Some(config) = config {
            options.no_config = false;
            options.config_file = Some(config.to_owned());
        }
        backend(&sshd, options)
    };
    // Not authorized on its own.
    let err = id_un(&with_key(None)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(path("ca"))
        .args(["-I", "reach-test", "-n", sshd.user(), "-V", "+1h"])
        .arg(path("user.pub"))
        .status()
        .unwrap();
    assert!(signed.success());
    assert_eq!(id_un(&with_key(None)).await.unwrap(), sshd.user());
    // Held by an ssh-agent (ssh-add loads the certificate beside the key), with no key file.
    let socket = path("agent.sock");
    let _agent = crate::SshAgent::start(&socket);
    let added = Command::new("ssh-add")
        .arg(path("user"))
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&added.stderr).contains("Certificate added"),
        "{added:?}"
    );
    let through_agent = backend(
        &sshd,
        SshOptions {
            use_agent: true,
            agent_socket: Some(socket.clone()),
            ..bare(&sshd)
        },
    );
    assert_eq!(id_un(&through_agent).await.unwrap(), sshd.user());
    // Moved away and named in the config instead.
    std::fs::rename(path("user-cert.pub"), path("elsewhere.pub")).unwrap();
    let err = id_un(&with_key(None)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    std::fs::write(
        path("config"),
        format!(
            "Host *\n  CertificateFile {}\n",
            path("elsewhere.pub").display()
        ),
    )
    .unwrap();
    assert_eq!(
        id_un(&with_key(Some(&path("config")))).await.unwrap(),
        sshd.user()
    );
}

/// A server whose host key is certified by an authority that known_hosts trusts for it
/// (`@cert-authority`) is let in with no line for its key, as with `ssh`; a certificate from
/// another authority, or for another host name, is refused.
#[tokio::test]
async fn host_certificates_from_a_trusted_authority_are_accepted() {
    let test = "host_certificates_from_a_trusted_authority_are_accepted";
    if !SshdFixture::available_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    crate::keygen(&path("ca"));
    crate::keygen(&path("other-ca"));
    let server = |principal: &str, name: &str| {
        let key = path(name);
        assert!(Command::new("ssh-keygen")
            .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(path("ca"))
            .args(["-h", "-I", "reach-host", "-n", principal, "-V", "+1h"])
            .arg(key.with_extension("pub"))
            .status()
            .unwrap()
            .success());
        let cert = format!("{}-cert.pub", key.display());
        SshdFixture::start_with(&format!(
            "HostKey {}\nHostCertificate {cert}",
            key.display()
        ))
        .unwrap()
    };
    let trusting = |sshd: &SshdFixture, ca: &str, file: &str| {
        let ca = std::fs::read_to_string(path(&format!("{ca}.pub"))).unwrap();
        let known = path(file);
        std::fs::write(
            &known,
            format!("@cert-authority [127.0.0.1]:{} {ca}", sshd.port()),
        )
        .unwrap();
        backend(
            sshd,
            SshOptions {
                identity: Some(sshd.client_key()),
                known_hosts: Some(known),
                ..bare(sshd)
            },
        )
    };
    let good = server("127.0.0.1", "host-good");
    assert_eq!(
        id_un(&trusting(&good, "ca", "known-good")).await.unwrap(),
        good.user()
    );
    let err = id_un(&trusting(&good, "other-ca", "known-other"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostKeyRejected, "{err}");
    assert!(err.to_string().contains("not valid"), "{err}");
    let misnamed = server("somewhere-else.example", "host-misnamed");
    let err = id_un(&trusting(&misnamed, "ca", "known-misnamed"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostKeyRejected, "{err}");
    assert!(err.to_string().contains("somewhere-else.example"), "{err}");
}
