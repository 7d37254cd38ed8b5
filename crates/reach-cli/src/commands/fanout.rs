//! `reach exec` on many targets: lines prefixed with their target (pdsh style), identical
//! outputs gathered (`--group`, clubak style) or one JSON object per target (`--json`); a
//! progress bar on a terminal and a summary line at the end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use reach::fanout::{self, Event, FanOut, Outcome, Phase, Stream, Target};
use reach::{ExecSpec, ExitStatus};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::output;

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lines as they come, `NAME: line`.
    Prefixed,
    /// Each distinct output once, under the targets that produced it.
    Grouped,
    /// One JSON object per target, as each ends.
    Json,
}

/// What a target's outcome counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Failed,
    Unreachable,
    Cancelled,
}

fn verdict(outcome: &Outcome) -> Verdict {
    match (outcome.phase, &outcome.result) {
        (Phase::Cancelled, _) => Verdict::Cancelled,
        (Phase::Connect, _) => Verdict::Unreachable,
        (Phase::Run, Ok(status)) if status.success() => Verdict::Ok,
        (Phase::Run, _) => Verdict::Failed,
    }
}

/// Runs `spec` on `targets` and prints the results; returns the exit code: 0 when every
/// target ran it successfully, 255 when any could not be reached, else 1.
pub async fn run(targets: Vec<Target>, spec: ExecSpec, mut options: FanOut, mode: Mode) -> i32 {
    let started = Instant::now();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    options.capture = mode != Mode::Prefixed;
    options.stream = mode == Mode::Prefixed;
    let mut events = fanout::run(targets, spec, options);
    let mut bar = Progress::new(names.len());
    let mut done: Vec<Option<Outcome>> = (0..names.len()).map(|_| None).collect();
    while let Some(event) = events.recv().await {
        match event {
            Event::Lines {
                target,
                stream,
                bytes,
            } => bar.clear_then(|| print_lines(&names[target], width, stream, &bytes)),
            Event::Done { target, outcome } => {
                let name = &names[target];
                bar.count(verdict(&outcome));
                match mode {
                    Mode::Json => {
                        bar.clear_then(|| output::print_json(&json_result(name, &outcome)))
                    }
                    Mode::Prefixed => {
                        if let Some(line) = status_line(&outcome) {
                            bar.clear_then(|| eprintln!("{name:width$}: {line}"));
                        }
                    }
                    Mode::Grouped => {}
                }
                done[target] = Some(outcome);
            }
        }
    }
    bar.finish();
    let outcomes: Vec<(&str, &Outcome)> = names
        .iter()
        .zip(&done)
        .filter_map(|(n, o)| o.as_ref().map(|o| (n.as_str(), o)))
        .collect();
    if mode == Mode::Grouped {
        print_groups(&outcomes);
    }
    let counts = bar.counts;
    eprintln!("{}", summary(names.len(), &counts, started.elapsed()));
    output::flush_stdio();
    if counts[2] > 0 {
        crate::exit::TRANSPORT
    } else if counts[1] > 0 || counts[3] > 0 {
        crate::exit::FAILURE
    } else {
        0
    }
}

/// `NAME: line` for every line in `bytes` (a last line without `\n` gets one).
fn print_lines(name: &str, width: usize, stream: Stream, bytes: &[u8]) {
    let mut text = Vec::with_capacity(bytes.len() + 64);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        text.extend_from_slice(format!("{name:width$}: ").as_bytes());
        text.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            text.push(b'\n');
        }
    }
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(&text),
        Stream::Stderr => std::io::stderr().lock().write_all(&text),
    };
}

/// What a target's end adds to prefixed output (nothing for a clean exit).
fn status_line(outcome: &Outcome) -> Option<String> {
    match (&outcome.result, outcome.phase) {
        (Ok(status), _) if status.success() => None,
        (Ok(ExitStatus::Code(code)), _) => Some(format!("[exit {code}]")),
        (Ok(ExitStatus::Signal { signal, .. }), _) => Some(format!("[killed by {signal}]")),
        (Err(_), Phase::Cancelled) => Some("[cancelled]".to_owned()),
        (Err(e), Phase::Connect) => Some(format!("[unreachable] {e}")),
        (Err(e), _) => Some(format!("[failed] {e}")),
    }
}

/// A target's result as one JSON object.
fn json_result(name: &str, outcome: &Outcome) -> Value {
    let mut object = Map::new();
    object.insert("destination".into(), json!(name));
    match (&outcome.result, outcome.phase) {
        (Ok(ExitStatus::Code(code)), _) => {
            object.insert("status".into(), json!({"code": code}));
        }
        (
            Ok(ExitStatus::Signal {
                signal,
                core_dumped,
            }),
            _,
        ) => {
            object.insert(
                "status".into(),
                json!({"signal": signal.name(), "core_dumped": core_dumped}),
            );
        }
        (Err(_), Phase::Cancelled) => {
            object.insert(
                "error".into(),
                json!({"kind": "cancelled", "message": "cancelled by --fail-fast"}),
            );
        }
        (Err(e), _) => {
            object.insert(
                "error".into(),
                json!({"kind": e.kind().as_str(), "message": e.to_string()}),
            );
        }
    }
    object.insert("reached".into(), json!(outcome.phase == Phase::Run));
    output::put_bytes(&mut object, "stdout", &outcome.stdout);
    output::put_bytes(&mut object, "stderr", &outcome.stderr);
    object.insert(
        "duration_ms".into(),
        json!((outcome.duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
    );
    object.insert(
        "stdout_sha256".into(),
        json!(hex(&Sha256::digest(&outcome.stdout))),
    );
    Value::Object(object)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What groups targets together in `--group` output: the same output and the same end
/// (errors by their kind; each target's message is listed under its group).
fn group_key(outcome: &Outcome) -> (Vec<u8>, Vec<u8>, String) {
    let end = match (&outcome.result, outcome.phase) {
        (Ok(status), _) if status.success() => String::new(),
        (Ok(ExitStatus::Code(code)), _) => format!("exit {code}"),
        (Ok(ExitStatus::Signal { signal, .. }), _) => format!("killed by {signal}"),
        (Err(_), Phase::Cancelled) => "cancelled".to_owned(),
        (Err(e), Phase::Connect) => format!("unreachable ({})", e.kind().as_str()),
        (Err(e), _) => format!("failed ({})", e.kind().as_str()),
    };
    (outcome.stdout.clone(), outcome.stderr.clone(), end)
}

type Group<'a> = ((Vec<u8>, Vec<u8>, String), Vec<&'a str>, Vec<String>);

fn print_groups(outcomes: &[(&str, &Outcome)]) {
    let mut groups: Vec<Group> = Vec::new();
    for (name, outcome) in outcomes {
        let key = group_key(outcome);
        let message = match (&outcome.result, outcome.phase) {
            (Err(e), phase) if phase != Phase::Cancelled => Some(format!("{name}: {e}")),
            _ => None,
        };
        let at = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                groups.push((key, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.push(name);
        groups[at].2.extend(message);
    }
    let mut out = std::io::stdout().lock();
    let rule = "-".repeat(15);
    for ((stdout, stderr, end), names, messages) in groups {
        let _ = writeln!(out, "{rule}\n{} ({})", fold(&names), names.len());
        if !end.is_empty() {
            let _ = writeln!(out, "{end}");
        }
        let _ = writeln!(out, "{rule}");
        for block in [&stdout, &stderr] {
            let _ = out.write_all(block);
            if !block.is_empty() && !block.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
        }
        for message in messages {
            let _ = writeln!(out, "{message}");
        }
    }
}

/// Names folded where they differ only in one number (`web1,web2,web3` → `web[1-3]`,
/// `127.0.0.2:22,127.0.0.3:22` → `127.0.0.[2-3]:22`): of the ways to fold on one run of digits,
/// the one that leaves the fewest parts.
pub fn fold(names: &[&str]) -> String {
    let most = names.iter().map(|n| digit_runs(n).len()).max().unwrap_or(0);
    (0..most)
        .map(|k| fold_at(names, k))
        .min_by_key(Vec::len)
        .unwrap_or_else(|| names.iter().map(|n| (*n).to_owned()).collect())
        .join(",")
}

/// Folds on the `k`-th run of digits from the end.
fn fold_at(names: &[&str], k: usize) -> Vec<String> {
    // (prefix, suffix, width of the number) → numbers, in first-seen order.
    let mut runs: Vec<((String, String, usize), Vec<u64>)> = Vec::new();
    let mut plain: Vec<String> = Vec::new();
    let mut order: Vec<Result<usize, usize>> = Vec::new();
    for name in names {
        let runs_here = digit_runs(name);
        let found = runs_here
            .len()
            .checked_sub(k + 1)
            .map(|i| runs_here[i])
            .filter(|(start, end)| end - start <= 18);
        let Some((start, end)) = found else {
            plain.push((*name).to_owned());
            order.push(Err(plain.len() - 1));
            continue;
        };
        let digits = &name[start..end];
        let width = if digits.starts_with('0') {
            digits.len()
        } else {
            0
        };
        let key = (name[..start].to_owned(), name[end..].to_owned(), width);
        let number = digits.parse().unwrap_or(0);
        match runs.iter_mut().position(|(k, _)| *k == key) {
            Some(at) => runs[at].1.push(number),
            None => {
                runs.push((key, vec![number]));
                order.push(Ok(runs.len() - 1));
            }
        }
    }
    order
        .into_iter()
        .map(|slot| match slot {
            Err(i) => plain[i].clone(),
            Ok(i) => {
                let ((prefix, suffix, width), numbers) = &runs[i];
                if numbers.len() == 1 {
                    return format!("{prefix}{:0width$}{suffix}", numbers[0]);
                }
                let mut sorted = numbers.clone();
                sorted.sort_unstable();
                sorted.dedup();
                format!("{prefix}[{}]{suffix}", ranges(&sorted, *width))
            }
        })
        .collect()
}

/// The byte ranges of the runs of ASCII digits in `name`.
fn digit_runs(name: &str) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, c) in name.char_indices() {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, name.len()));
    }
    runs
}

fn ranges(sorted: &[u64], width: usize) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        if j == i {
            parts.push(format!("{:0width$}", sorted[i]));
        } else {
            parts.push(format!("{:0width$}-{:0width$}", sorted[i], sorted[j]));
        }
        i = j + 1;
    }
    parts.join(",")
}

fn summary(total: usize, counts: &[usize; 4], took: Duration) -> String {
    let mut line = format!(
        "reach: {total} targets in {:.2} s: {} ok, {} failed, {} unreachable",
        took.as_secs_f64(),
        counts[0],
        counts[1],
        counts[2]
    );
    if counts[3] > 0 {
        line.push_str(&format!(", {} cancelled", counts[3]));
    }
    line
}

/// Counts by verdict, drawn as a bar on stderr (indicatif) when it is a terminal.
struct Progress {
    counts: [usize; 4],
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(total as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#> "),
        );
        let progress = Progress {
            counts: [0; 4],
            bar,
        };
        progress.show();
        progress
    }

    fn count(&mut self, verdict: Verdict) {
        let slot = match verdict {
            Verdict::Ok => 0,
            Verdict::Failed => 1,
            Verdict::Unreachable => 2,
            Verdict::Cancelled => 3,
        };
        self.counts[slot] += 1;
        self.bar.inc(1);
        self.show();
    }

    fn show(&self) {
        self.bar.set_message(format!(
            "ok {} failed {} unreachable {}",
            self.counts[0], self.counts[1], self.counts[2]
        ));
    }

    /// Prints something with the bar out of its way, then draws it again.
    fn clear_then(&mut self, print: impl FnOnce()) {
        self.bar.suspend(print);
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_on_the_number_that_leaves_fewest_parts() {
        assert_eq!(fold(&["web1", "web2", "web3", "db"]), "web[1-3],db");
        assert_eq!(fold(&["n01", "n02", "n05", "n03"]), "n[01-03,05]");
        assert_eq!(fold(&["a1.lab", "a2.lab", "b7"]), "a[1-2].lab,b7");
        assert_eq!(fold(&["only9"]), "only9");
        assert_eq!(
            fold(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
            "127.0.0.[2-4]"
        );
        assert_eq!(
            fold(&[
                "127.0.0.1:22",
                "127.0.0.2:22",
                "127.0.0.1:23",
                "127.0.0.2:23"
            ]),
            "127.0.0.1:[22-23],127.0.0.2:[22-23]"
        );
        assert_eq!(fold(&["a", "b"]), "a,b");
    }
}
