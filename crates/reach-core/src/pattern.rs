//! Wildcard patterns, one matcher for all of them: remote path globs ([`crate::glob`]), the
//! SSH client config's `Host`, known_hosts, algorithm lists, and the gateway's `from=`.
//!
//! The matcher never backtracks further than the last `*` it passed, so a pattern of `p`
//! tokens against a text of `n` characters takes at most `p × n` steps: a hostile pattern or
//! name (`*a*a*a*…b` against `aaaa…`) cannot make it take exponential time.
//!
//! Pattern lists follow OpenSSH: a list matches when some plain pattern matches and no
//! `!`-negated one does ([`list_matches`]).

/// Whether `tokens` match all of `text`, where `is_star` says which tokens match any run of
/// characters (the empty one included) and `matches_one` whether any other token matches one
/// character.
pub(crate) fn match_tokens<T>(
    tokens: &[T],
    text: &[char],
    is_star: impl Fn(&T) -> bool,
    matches_one: impl Fn(&T, char) -> bool,
) -> bool {
    let (mut t, mut s) = (0, 0);
    // Where the last star was, and how much of the text it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(s) {
        match tokens.get(t) {
            Some(token) if is_star(token) => {
                star = Some((t, s));
                t += 1;
            }
            Some(token) if matches_one(token, c) => {
                t += 1;
                s += 1;
            }
            _ => match star {
                // Let the last star take one more character and try again.
                Some((at, taken)) => {
                    t = at + 1;
                    s = taken + 1;
                    star = Some((at, taken + 1));
                }
                None => return false,
            },
        }
    }
    tokens.get(t..).unwrap_or_default().iter().all(is_star)
}

/// `*` (any run of characters) and `?` (any one) against `text`; every other character
/// matches itself exactly.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    match_tokens(&pattern, &text, |p| *p == '*', |p, c| *p == '?' || *p == c)
}

/// [`wildcard`], with ASCII letters matched regardless of case (as OpenSSH matches host
/// names).
pub fn wildcard_ignore_ascii_case(pattern: &str, text: &str) -> bool {
    wildcard(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

/// Whether a pattern list matches: some plain pattern does (by `hit`) and no `!`-negated one
/// does.
pub fn list_matches<'a>(
    patterns: impl IntoIterator<Item = &'a str>,
    mut hit: impl FnMut(&str) -> bool,
) -> bool {
    let mut matched = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if hit(negated) => return false,
            Some(_) => {}
            None => matched = matched || hit(pattern),
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        assert!(wildcard("*", ""));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*.example.com", "a.b.example.com"));
        assert!(!wildcard("*.example.com", "example.com"));
        assert!(wildcard("a*b*c", "aXbYbZc"));
        assert!(!wildcard("a*b", "ac"));
        assert!(
            wildcard("[*]:2222", "[h]:2222"),
            "brackets are plain characters"
        );
        assert!(!wildcard("Web", "web"));
        assert!(wildcard_ignore_ascii_case("Web*", "wEB-1"));
    }

    /// The case that takes a backtracking matcher exponential time: here it is answered at
    /// once (a test that took seconds would show the regression in the suite's timings).
    #[test]
    fn a_hostile_pattern_takes_no_exponential_time() {
        let pattern = format!("{}b", "*a".repeat(30));
        let text = "a".repeat(5000);
        assert!(!wildcard(&pattern, &text));
        assert!(wildcard(&format!("{}*", "*a".repeat(30)), &text));
    }

    #[test]
    fn a_negated_pattern_that_matches_refuses_the_list() {
        let hit =
            |list: &[&str], name: &str| list_matches(list.iter().copied(), |p| wildcard(p, name));
        assert!(hit(&["web*", "!web-old"], "web1"));
        assert!(!hit(&["web*", "!web-old"], "web-old"));
        assert!(!hit(&["!db"], "web"), "only negations: nothing matches");
        assert!(!hit(&[], "web"));
        assert!(!hit(&["db", "!web"], "web"));
    }
}
