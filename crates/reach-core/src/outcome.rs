//! An outcome published once (a command's exit, a write's close): the first word wins, so
//! that a time limit's `Timeout` is not overwritten by the exit of the kill it caused. Every
//! backend whose commands end by a message (SSH, the agent, plugins) publishes through this.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Error, ErrorKind, ExitStatus, Result};

/// Where an outcome is published, once; its receivers wait for it.
pub type OutcomeSlot<T> = watch::Sender<Option<Result<T>>>;

/// Publishes `outcome` unless there already is one.
pub fn publish<T>(slot: &OutcomeSlot<T>, outcome: Result<T>) {
    slot.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(outcome);
            true
        } else {
            false
        }
    });
}

/// Enforces a command's time limit: unless its outcome is in `slot` within `limit`, a
/// `Timeout` saying `what` "ran longer than its limit ... and was killed" is published and
/// `kill` runs (it kills the command's whole tree).
pub fn spawn_time_limit<K>(
    limit: Duration,
    slot: Arc<OutcomeSlot<ExitStatus>>,
    what: String,
    kill: K,
) where
    K: Future<Output = ()> + Send + 'static,
{
    let mut finished = slot.subscribe();
    tokio::spawn(async move {
        let done = tokio::time::timeout(limit, finished.wait_for(Option::is_some))
            .await
            .is_ok();
        if done {
            return;
        }
        publish(
            &slot,
            Err(Error::new(
                ErrorKind::Timeout,
                format!("{what} ran longer than its limit of {limit:?} and was killed"),
            )),
        );
        kill.await;
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_first_word_wins() {
        let (slot, rx) = watch::channel(None);
        publish(&slot, Ok(ExitStatus::Code(3)));
        publish(&slot, Ok(ExitStatus::Code(0)));
        assert_eq!(rx.borrow().clone().unwrap().unwrap(), ExitStatus::Code(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_limit_publishes_timeout_and_kills() {
        let slot = Arc::new(watch::channel(None).0);
        let mut rx = slot.subscribe();
        let (killed_tx, killed) = tokio::sync::oneshot::channel();
        spawn_time_limit(
            Duration::from_secs(5),
            slot.clone(),
            "the command".into(),
            async move {
                let _ = killed_tx.send(());
            },
        );
        let outcome = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert_eq!(outcome.unwrap_err().kind(), ErrorKind::Timeout);
        killed.await.unwrap();

        // An outcome in time: no timeout, no kill.
        let slot = Arc::new(watch::channel(None).0);
        let (killed_tx, mut killed) = tokio::sync::oneshot::channel::<()>();
        spawn_time_limit(
            Duration::from_secs(5),
            slot.clone(),
            "the command".into(),
            async move {
                let _ = killed_tx.send(());
            },
        );
        publish(&slot, Ok(ExitStatus::Code(0)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(killed.try_recv().is_err());
        assert_eq!(slot.borrow().clone().unwrap().unwrap(), ExitStatus::Code(0));
    }
}
