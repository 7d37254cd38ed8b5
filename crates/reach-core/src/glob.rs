//! Wildcards in remote paths, expanded on the target the way a shell expands them, so that
//! `reach cp host:/var/log/*.log .` works as it does with `scp`.
//!
//! - `*` matches any run of characters, `?` one character, `[abc]`, `[a-z]` and `[!a-z]`
//!   (or `[^a-z]`) one character of (or not of) a set. A `[` with no closing `]` is itself.
//! - A wildcard never matches `/`, nor a leading `.`: `*` skips hidden files, `.*` finds them.
//! - A backslash takes the next character literally: `\*` is a file named `*`.
//! - Matches come back sorted by name, byte order (as with `LC_ALL=C`).
//! - When nothing matches but the path exists as written (`file[1].txt`), that path is the
//!   one match, as a shell passes an unmatched word through.
//!
//! Only [`FileSystem::read_dir`], [`FileSystem::metadata`] and
//! [`FileSystem::symlink_metadata`] are used, so expansion works the same on every backend.

use crate::{ErrorKind, FileSystem, FileType, Result};

/// One element of a pattern component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Char(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters, empty included.
    Any,
    /// `[...]`: one character in (or, negated, not in) the inclusive ranges.
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::One => true,
            Token::Any => false,
            Token::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Parses one path component (no `/`) into tokens.
fn parse(component: &str) -> Vec<Token> {
    let chars: Vec<char> = component.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                tokens.push(Token::Char(chars[i + 1]));
                i += 2;
            }
            '*' => {
                // `**` is `*`.
                if tokens.last() != Some(&Token::Any) {
                    tokens.push(Token::Any);
                }
                i += 1;
            }
            '?' => {
                tokens.push(Token::One);
                i += 1;
            }
            '[' => match parse_set(&chars, i + 1) {
                Some((set, next)) => {
                    tokens.push(set);
                    i = next;
                }
                None => {
                    tokens.push(Token::Char('['));
                    i += 1;
                }
            },
            c => {
                tokens.push(Token::Char(c));
                i += 1;
            }
        }
    }
    tokens
}

/// Parses a set whose `[` came just before `start`; `None` when it has no closing `]`.
/// Returns the set and the index after its `]`.
fn parse_set(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Set { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        i += 1;
        // `a-z`, unless the `-` is last (`[a-]` holds `a` and `-`).
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
}

/// Whether `tokens` hold anything but plain characters.
fn is_pattern(tokens: &[Token]) -> bool {
    tokens.iter().any(|t| !matches!(t, Token::Char(_)))
}

/// Whether `path` holds a wildcard (`*`, `?` or a closed `[...]`) not escaped by a
/// backslash.
pub fn has_wildcards(path: &str) -> bool {
    path.split('/')
        .any(|component| is_pattern(&parse(component)))
}

/// `path` with its backslash escapes resolved (`\*` is `*`, `\\` is `\`), for a path that is
/// to be taken as written. A backslash before any other character stays.
pub fn unescape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if matches!(next, '*' | '?' | '[' | ']' | '\\') {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Whether the file name `name` matches the one-component pattern `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    matches_tokens(&parse(pattern), name)
}

fn matches_tokens(tokens: &[Token], name: &str) -> bool {
    let text: Vec<char> = name.chars().collect();
    // A leading `.` is matched only by a `.` written in the pattern.
    if text.first() == Some(&'.') && tokens.first() != Some(&Token::Char('.')) {
        return false;
    }
    crate::pattern::match_tokens(tokens, &text, |t| *t == Token::Any, Token::matches)
}

/// The paths on `fs` that `pattern` matches, sorted within each directory; a path without
/// wildcards comes back as written (unescaped), whether or not it exists.
///
/// An empty result means nothing matched and nothing exists under the pattern's own name.
/// A directory that cannot be read on the way is skipped, as a shell skips it, except the
/// one the pattern names before its first wildcard: its error is returned (a missing one
/// only means no match).
pub async fn expand(fs: &dyn FileSystem, pattern: &str) -> Result<Vec<String>> {
    if !has_wildcards(pattern) {
        return Ok(vec![unescape(pattern)]);
    }
    let dirs_only = pattern.ends_with('/');
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut found = vec![if pattern.starts_with('/') {
        "/".to_owned()
    } else {
        String::new()
    }];
    // Whether `found` still holds only the literal prefix.
    let mut prefix = true;
    // Whether the last component was literal: its paths are not known to exist yet.
    let mut unchecked = false;
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let tokens = parse(component);
        if !is_pattern(&tokens) {
            let name = unescape(component);
            for path in &mut found {
                *path = crate::path::join(path, &name);
            }
            unchecked = true;
            continue;
        }
        let mut next = Vec::new();
        for base in &found {
            let dir = if base.is_empty() { "." } else { base.as_str() };
            let entries = match fs.read_dir(dir).await {
                Ok(entries) => entries,
                Err(e) if !prefix || matches!(e.kind(), ErrorKind::NotFound) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::InvalidInput) => continue,
                Err(e) => return Err(e),
            };
            let mut names: Vec<_> = entries
                .into_iter()
                .filter(|e| e.name != "." && e.name != ".." && matches_tokens(&tokens, &e.name))
                .collect();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            for entry in names {
                let path = crate::path::join(base, &entry.name);
                if !last || dirs_only {
                    let is_dir = match entry.metadata.file_type {
                        FileType::Dir => true,
                        FileType::Symlink => fs.metadata(&path).await.is_ok_and(|m| m.is_dir()),
                        _ => false,
                    };
                    if !is_dir {
                        continue;
                    }
                }
                next.push(path);
            }
        }
        found = next;
        prefix = false;
        unchecked = false;
    }
    if unchecked {
        let mut existing = Vec::with_capacity(found.len());
        for path in found {
            if fs.symlink_metadata(&path).await.is_ok() {
                existing.push(path);
            }
        }
        found = existing;
    }
    if dirs_only {
        for path in &mut found {
            path.push('/');
        }
    }
    if found.is_empty() {
        let literal = unescape(pattern);
        if fs.symlink_metadata(&literal).await.is_ok() {
            found.push(literal);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_found_unless_escaped() {
        assert!(has_wildcards("/var/log/*.log"));
        assert!(has_wildcards("a?c"));
        assert!(has_wildcards("/x/[ab]/y"));
        assert!(!has_wildcards("/etc/hosts"));
        assert!(!has_wildcards("a\\*b"));
        assert!(!has_wildcards("open[bracket"));
        assert!(!has_wildcards("x]"));
        assert_eq!(unescape("a\\*b\\?\\[c\\]\\\\d\\e"), "a*b?[c]\\d\\e");
    }

    #[test]
    fn stars_questions_and_sets() {
        assert!(matches("*.txt", "a.txt"));
        assert!(matches("*.txt", "x.y.txt"));
        assert!(!matches("*.txt", "a.txt.gz"));
        assert!(matches("a*b*c", "abbbc"));
        assert!(matches("a*b*c", "a_b_c"));
        assert!(!matches("a*b*c", "a_b_"));
        assert!(matches("*", "anything"));
        assert!(matches("**", "x"));
        assert!(matches("?", "é"));
        assert!(!matches("?", "ab"));
        assert!(matches("f[0-9].log", "f7.log"));
        assert!(!matches("f[0-9].log", "fx.log"));
        assert!(matches("f[!0-9]", "fx"));
        assert!(matches("f[^0-9]", "fx"));
        assert!(!matches("f[!0-9]", "f3"));
        assert!(matches("[]a]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("open[bracket", "open[bracket"));
        assert!(matches("a\\*", "a*"));
        assert!(!matches("a\\*", "ab"));
        assert!(matches("日*語", "日本語"));
    }

    #[test]
    fn hidden_files_need_a_written_dot() {
        assert!(!matches("*", ".profile"));
        assert!(!matches("?profile", ".profile"));
        assert!(!matches("[.]profile", ".profile"));
        assert!(matches(".*", ".profile"));
        assert!(matches("*rc", "vimrc"));
    }
}
