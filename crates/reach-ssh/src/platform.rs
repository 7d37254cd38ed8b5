//! What a server runs on, from `uname` or Windows' `ver`.

use reach_core::Platform;

/// `uname -s; uname -m` output as a platform.
pub(crate) fn parse_uname(stdout: &[u8]) -> Option<Platform> {
    let text = String::from_utf8_lossy(stdout).to_ascii_lowercase();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (os, arch) = (lines.next()?, lines.next()?);
    if os.contains(' ') || arch.contains(' ') {
        return None;
    }
    Some(Platform {
        os: if os == "darwin" {
            "macos".into()
        } else {
            os.to_owned()
        },
        arch: arch.to_owned(),
        variant: None,
    })
}

/// `ver & echo %PROCESSOR_ARCHITECTURE%` output (cmd.exe) as a platform.
pub(crate) fn parse_windows(stdout: &[u8]) -> Option<Platform> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let version = lines.next()?;
    if !version.contains("Windows") {
        return None;
    }
    let arch = match lines.next()?.to_ascii_uppercase().as_str() {
        "AMD64" => "x86_64".to_owned(),
        "ARM64" => "aarch64".to_owned(),
        "X86" => "i686".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    let variant = version
        .split("Version ")
        .nth(1)
        .map(|v| format!("windows {}", v.trim_end_matches(']')));
    Some(Platform {
        os: "windows".into(),
        arch,
        variant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_from_uname_and_windows_ver() {
        let linux = parse_uname(b"Linux\nx86_64\n").unwrap();
        assert_eq!(
            (linux.os.as_str(), linux.arch.as_str()),
            ("linux", "x86_64")
        );
        assert_eq!(parse_uname(b"Darwin\narm64\n").unwrap().os, "macos");
        assert!(parse_uname(b"'uname' is not recognized as a command\n").is_none());
        let windows =
            parse_windows(b"\r\nMicrosoft Windows [Version 10.0.20348.2655]\r\nAMD64\r\n").unwrap();
        assert_eq!(windows.os, "windows");
        assert_eq!(windows.arch, "x86_64");
        assert_eq!(windows.variant.as_deref(), Some("windows 10.0.20348.2655"));
        assert!(parse_windows(b"sh: ver: not found\n").is_none());
    }
}
