//! A progress bar on stderr, redrawn from counters the work keeps as it goes (`reach cp`,
//! `reach pull`), cleared however its task ends: finished, aborted or interrupted.

use std::time::Duration;

/// What the bar shows at one moment.
pub struct Sample {
    /// Bytes in all.
    pub total: u64,
    /// Bytes done so far.
    pub done: u64,
    /// The template's `{msg}` (files or layers done, say).
    pub message: String,
}

/// Draws a bar in `template` (indicatif's syntax) from `sample`, five times a second, until
/// the task is aborted.
pub async fn draw(template: &str, sample: impl Fn() -> Sample) {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = Clear(bar);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let now = sample();
        bar.0.set_length(now.total);
        bar.0.set_position(now.done);
        bar.0.set_message(now.message);
    }
}
