//! The architecture an executable file was built for, read from its ELF header, so that a
//! program of another architecture is refused with the way to run it (qemu) rather than
//! started to die of `SIGILL`.

use std::io::Read;
use std::path::Path;

/// The architecture of the ELF file at `path`, as Rust names architectures
/// (`std::env::consts::ARCH`); `None` for a script, an unknown machine or an unreadable file.
pub(crate) fn of_file(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    // EI_DATA: 1 little-endian, 2 big-endian; e_machine is the half-word at offset 18.
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return None,
    };
    Some(match machine {
        3 => "x86",
        8 => "mips",
        20 => "powerpc",
        21 => "powerpc64",
        22 => "s390x",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        258 => "loongarch64",
        _ => return None,
    })
}

/// Whether this host runs programs built for `arch` without an emulator.
pub(crate) fn runs_here(arch: &str) -> bool {
    let host = std::env::consts::ARCH;
    arch == host || (host == "x86_64" && arch == "x86")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn this_hosts_programs_and_scripts() {
        let own = std::env::current_exe().unwrap();
        assert_eq!(of_file(&own), Some(std::env::consts::ARCH));
        assert!(runs_here(std::env::consts::ARCH));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(of_file(&script), None);
        // An aarch64 header: little-endian, machine 183.
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        header[5] = 1;
        header[18] = 183;
        let elf = dir.path().join("elf");
        std::fs::write(&elf, &header).unwrap();
        assert_eq!(of_file(&elf), Some("aarch64"));
        assert_eq!(runs_here("aarch64"), std::env::consts::ARCH == "aarch64");
    }
}
