//! `KexAlgorithms`, `Ciphers`, `MACs` and `HostKeyAlgorithms` against a real sshd that is
//! set to offer only what old servers offer: refused by default with the option to change
//! named, accepted once the configuration allows it.

use std::io::Write;

use reach_core::{Backend, Destination, ErrorKind, ExecSpec, ProcessExt};
use reach_ssh::{SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;

use crate::{backend, options};

/// The error of connecting and running `true` with `options`.
async fn refusal(sshd: &SshdFixture, options: SshOptions) -> reach_core::Error {
    match backend(sshd, options).exec(ExecSpec::shell("true")).await {
        Ok(_) => panic!("the handshake was expected to fail"),
        Err(e) => e,
    }
}

async fn echo(sshd: &SshdFixture, options: SshOptions) -> Vec<u8> {
    let out = backend(sshd, options)
        .exec(ExecSpec::shell("echo ok"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[tokio::test]
async fn an_old_servers_algorithms_are_refused_until_the_config_allows_them() {
    if !SshdFixture::available_or_skip(
        "an_old_servers_algorithms_are_refused_until_the_config_allows_them",
    ) {
        return;
    }
    let sshd = SshdFixture::start_with(
        "KexAlgorithms diffie-hellman-group14-sha1\nCiphers aes128-cbc\nMACs hmac-sha1\n",
    )
    .unwrap();
    let e = refusal(&sshd, options(&sshd)).await;
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string()
            .contains("`KexAlgorithms=+diffie-hellman-group14-sha1`"),
        "{e}"
    );

    // A file that allows the cipher and the MAC, and sets a key exchange the server does not
    // have; `-o` wins over it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(b"Host *\n  KexAlgorithms curve25519-sha256\n  Ciphers +aes128-cbc\n  MACs ^hmac-sha1\n")
        .unwrap();
    let with_file = |extra: &[&str]| SshOptions {
        config_file: Some(config.clone()),
        config_options: extra.iter().map(|s| s.to_string()).collect(),
        ..options(&sshd)
    };
    let e = refusal(&sshd, with_file(&[])).await;
    assert!(e.to_string().contains("KexAlgorithms"), "{e}");
    assert_eq!(
        echo(
            &sshd,
            with_file(&["KexAlgorithms=+diffie-hellman-group14-sha1"])
        )
        .await,
        b"ok\n"
    );

    // Without the file's cipher, the next refusal names `Ciphers`.
    let e = refusal(
        &sshd,
        SshOptions {
            config_options: vec!["KexAlgorithms +diffie-hellman-group14-sha1".into()],
            ..options(&sshd)
        },
    )
    .await;
    assert!(e.to_string().contains("`Ciphers=+aes128-cbc`"), "{e}");
}

#[tokio::test]
async fn a_sha1_rsa_host_key_needs_host_key_algorithms() {
    if !SshdFixture::available_or_skip("a_sha1_rsa_host_key_needs_host_key_algorithms") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("host_rsa");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&rsa)
        .status()
        .unwrap()
        .success());
    let sshd = SshdFixture::start_with(&format!(
        "HostKey {}\nHostKeyAlgorithms ssh-rsa\n",
        rsa.display()
    ))
    .unwrap();
    // Trust the RSA key too.
    let public = std::fs::read_to_string(rsa.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.known_hosts())
        .unwrap()
        .write_all(format!("[127.0.0.1]:{} {}\n", sshd.port(), key.join(" ")).as_bytes())
        .unwrap();

    let e = refusal(&sshd, options(&sshd)).await;
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string().contains("`HostKeyAlgorithms=+ssh-rsa`"),
        "{e}"
    );
    let allowed = SshOptions {
        config_options: vec!["HostKeyAlgorithms=+ssh-rsa".into()],
        ..options(&sshd)
    };
    assert_eq!(echo(&sshd, allowed).await, b"ok\n");
}

#[test]
fn a_bad_option_is_named_before_connecting() {
    let destination = Destination::parse("ssh://nobody@127.0.0.1:9").unwrap();
    for (option, expected) in [
        (
            "Ciphers=aes128-gmc",
            "`-o Ciphers=aes128-gmc`: `aes128-gmc` is not a list of ciphers: `aes128-gmc` is not one",
        ),
        ("KexAlgorithms=-*", "leaves a key exchange algorithm"),
        ("Host=other", "`-o Host=other` is not an SSH option"),
        ("ConnectTimeout", "is not an SSH option"),
    ] {
        let options = SshOptions {
            no_config: true,
            config_options: vec![option.to_owned()],
            ..SshOptions::default()
        };
        let e = match SshBackend::new(destination.clone(), options) {
            Ok(_) => panic!("`-o {option}` was accepted"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(expected), "{option}: {e}");
    }
}
