//! The file subcommands on `local`, checked against the files on disk.

use std::os::unix::fs::PermissionsExt;

use crate::reach;

#[test]
fn put_cat_stat_ls_chmod_mv_rm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let file = format!("{d}/notes ü.txt");
    let loc = format!("local:{file}");

    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    let out = reach(&["put", &loc]).stdin(data.clone()).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);

    let out = reach(&["cat", &loc]).run();
    assert_eq!(out.stdout, data);

    let out = reach(&["--json", "stat", &loc]).run();
    let v = out.json();
    assert_eq!(v[0]["size"], 100_000);
    assert_eq!(v[0]["type"], "file");

    let out = reach(&["chmod", "600", &loc]).run();
    assert_eq!(out.code, 0, "{out:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);

    let out = reach(&["mkdir", "--parents", &format!("local:{d}/a/b")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(std::path::Path::new(&format!("{d}/a/b")).is_dir());

    let out = reach(&["mv", &loc, &format!("{d}/a")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::read(format!("{d}/a/notes ü.txt")).unwrap(), data);
    assert!(!std::path::Path::new(&file).exists());

    let out = reach(&["ls", &format!("local:{d}/a")]).run();
    assert_eq!(out.stdout_text(), "b\nnotes ü.txt\n");
    let out = reach(&["ls", "--long", &format!("{d}/a")]).run();
    assert!(
        out.stdout_text().contains("-rw-------       100000 "),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().starts_with("drwx"),
        "{}",
        out.stdout_text()
    );

    let out = reach(&["rm", &format!("{d}/a")]).run();
    assert_eq!(out.code, 2, "removing a directory needs -r: {out:?}");
    assert!(out.stderr.contains("use -r"), "{}", out.stderr);
    let out = reach(&["rm", "-r", &format!("{d}/a")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!std::path::Path::new(&format!("{d}/a")).exists());
}

#[test]
fn missing_paths_fail_with_the_path_named() {
    let out = reach(&["cat", "local:/no/such/file"]).run();
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("`/no/such/file`"), "{}", out.stderr);
    let out = reach(&["rm", "-f", "local:/no/such/file"]).run();
    assert_eq!(out.code, 0, "-f ignores missing files: {out:?}");
    let out = reach(&["--json", "stat", "/no/such", "/"]).run();
    assert_eq!(out.code, 1);
    let v = out.json();
    assert_eq!(v[0]["error"]["kind"], "not_found");
    assert_eq!(v[1]["type"], "dir");
    let out = reach(&["chmod", "u+x", "/tmp"]).run();
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not an octal mode"), "{}", out.stderr);
}

#[test]
fn put_replaces_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let file = format!("{d}/config");
    std::fs::write(&file, "old").unwrap();
    // A put onto a directory fails and leaves everything as it was.
    let out = reach(&["put", &d]).stdin("new").run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);
    // A put into a missing directory fails without leaving anything behind.
    let out = reach(&["put", &format!("{d}/missing/x")])
        .stdin("new")
        .run();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("missing"), "{}", out.stderr);
    let out = reach(&["put", "-m", "0600", &file]).stdin("new").run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["config"], "temporary files left behind");
}

#[test]
fn mv_across_destinations_points_to_cp() {
    let out = reach(&["mv", "local:/tmp/a", "docker://web:/tmp/b"]).run();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("reach cp"), "{}", out.stderr);
}

/// Wildcards in `DEST:PATH` arguments expand on the target, as scp expands them; a bare
/// local path is the shell's to expand and is taken as written.
#[test]
fn wildcards_expand_on_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    for (name, text) in [
        ("a.log", "A"),
        ("b.log", "B"),
        (".hidden.log", "H"),
        ("keep.txt", "K"),
        ("f[1].txt", "brackets"),
        ("f1.txt", "one"),
    ] {
        std::fs::write(format!("{d}/{name}"), text).unwrap();
    }
    std::fs::create_dir(format!("{d}/sub")).unwrap();
    std::fs::write(format!("{d}/sub/c.log"), "C").unwrap();

    let out = reach(&["cat", &format!("local:{d}/*.log")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout_text(), "AB", "sorted, hidden left out");
    let out = reach(&["cat", &format!("local:{d}/*/*.log")]).run();
    assert_eq!(out.stdout_text(), "C");
    // As written: the shell already had its turn at a bare path.
    let out = reach(&["cat", &format!("{d}/f[1].txt")]).run();
    assert_eq!(out.stdout_text(), "brackets");
    // A pattern, which an escape turns back into the name.
    let out = reach(&["cat", &format!("local:{d}/f[1].txt")]).run();
    assert_eq!(out.stdout_text(), "one");
    let out = reach(&["cat", &format!("local:{d}/f\\[1\\].txt")]).run();
    assert_eq!(out.stdout_text(), "brackets");

    let out = reach(&["ls", &format!("local:{d}/?.log")]).run();
    assert_eq!(out.stdout_text(), format!("{d}/a.log\n{d}/b.log\n"));
    let out = reach(&["--json", "stat", &format!("local:{d}/.*.log")]).run();
    let v = out.json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["path"], format!("local:{d}/.hidden.log"));

    let out = reach(&["chmod", "600", &format!("local:{d}/*.log")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    for name in ["a.log", "b.log", ".hidden.log", "keep.txt"] {
        let mode = std::fs::metadata(format!("{d}/{name}"))
            .unwrap()
            .permissions()
            .mode();
        let want = if name.ends_with(".log") && !name.starts_with('.') {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode & 0o777, want, "{name}");
    }

    // No match: an error naming the pattern, unless -f.
    let out = reach(&["rm", &format!("local:{d}/*.nothing")]).run();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("nothing matches") && out.stderr.contains("*.nothing"),
        "{}",
        out.stderr
    );
    let out = reach(&["rm", "-f", &format!("local:{d}/*.nothing")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    let out = reach(&["rm", &format!("local:{d}/*.log")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    let mut left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".hidden.log", "f1.txt", "f[1].txt", "keep.txt", "sub"]
    );

    // mkdir makes what it is told: a pattern there is a name.
    let out = reach(&["mkdir", &format!("local:{d}/new*")]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(std::path::Path::new(&format!("{d}/new*")).is_dir());
}
