//! Paths on a target, as strings in its own syntax (`/`-separated): joined and split the
//! same way by every crate, whatever machine reach runs on. An empty directory means the
//! login directory, so joining onto it leaves the name relative.

/// `dir` + `/` + `name`, without doubling a slash; `name` alone when `dir` is empty.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of `path`, trailing slashes ignored (`/a/b/` → `b`).
pub fn file_name(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// The directory holding `path` (`/a/b` → `/a`, `/a` → `/`); `None` for a bare name, which
/// lives in the login directory.
pub fn parent(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&trimmed[..i]),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_neither_doubles_nor_invents_a_slash() {
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(join("/a/", "b"), "/a/b");
        assert_eq!(join("/", "b"), "/b");
        assert_eq!(join("", "b"), "b", "the login directory stays relative");
    }

    #[test]
    fn names_and_parents() {
        assert_eq!((file_name("/a/b/"), parent("/a/b/")), ("b", Some("/a")));
        assert_eq!((file_name("/a"), parent("/a")), ("a", Some("/")));
        assert_eq!((file_name("a"), parent("a")), ("a", None));
        assert_eq!((file_name("a/b"), parent("a/b")), ("b", Some("a")));
    }
}
