//! Acks and requeues of one consume channel, sent by one task: in order,
//! each delivery settled at most once, and acks coalesced into `multiple`
//! acks where the delivery tags allow.
//!
//! A job's task hands its verdict to the [`Settler`] and ends; it does not
//! wait for the ack frame. The settler task takes whatever verdicts have
//! queued up since its last round and plans the frames with a [`Ledger`]:
//! the acks that extend the contiguous run of settled tags from the bottom
//! go out as one `basic.ack` with `multiple`. Jobs finish a little out of
//! order, so an ack above a gap (a job still running) is held back for at
//! most [`HOLD`], in case the gap closes and it can join a `multiple` ack;
//! then it goes out on its own, so a slow job never holds later deliveries
//! unacked for long (they count against the prefetch window).
//!
//! Why not lapin's `Acker`: each `Acker::ack` hops through lapin's internal
//! RPC task and a task spawned per ack before the frame is queued, and the
//! job waits for all of it. On two cores those wake-ups are a measurable
//! share of a tiny job (docs/BENCHMARKS.md).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::stats::WorkerStats;

/// The longest an ack above a gap waits for the gap to close.
pub(crate) const HOLD: Duration = Duration::from_millis(1);

/// The most verdicts the settler takes in one round.
const ROUND: usize = 4096;

/// What becomes of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done: its reply (or retry, or dead letter) is confirmed.
    Ack,
    /// Put it back on the queue (not started, unfinished, or its reply was
    /// not confirmed).
    Requeue,
}

/// One frame to send on the consume channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `basic.ack` of `tag`; with `multiple`, of every outstanding tag up to
    /// it, `count` deliveries in all.
    Ack {
        tag: u64,
        multiple: bool,
        count: u64,
    },
    /// `basic.nack` of `tag` alone, requeued.
    Requeue { tag: u64 },
}

/// Which delivery tags of a channel are settled, and which acks wait.
///
/// The broker numbers a channel's deliveries 1, 2, 3, …; every tag up to
/// `floor` is settled, `above` holds the settled tags past the first gap,
/// and `held` the acks past it that are not sent yet. All stay small: at
/// most the prefetch count of tags is unsettled.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    floor: u64,
    above: BTreeSet<u64>,
    held: BTreeSet<u64>,
}

impl Ledger {
    /// Settled, or its ack decided.
    fn decided(&self, tag: u64) -> bool {
        tag <= self.floor || self.above.contains(&tag) || self.held.contains(&tag)
    }

    /// Whether acks are held back, waiting for a gap below them to close.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The frames that carry out `verdicts`, in the order they must be sent.
    ///
    /// The first verdict on a tag wins; a later one (a drain racing a job
    /// that just finished) is dropped: settling a tag twice is a channel
    /// error. Requeues go out first, so that a `multiple` ack never covers a
    /// delivery meant to be requeued. Acks above a gap stay held unless
    /// `release` is set.
    pub(crate) fn plan(
        &mut self,
        verdicts: impl IntoIterator<Item = (u64, Verdict)>,
        release: bool,
    ) -> Vec<Frame> {
        let mut requeues = BTreeSet::new();
        for (tag, verdict) in verdicts {
            if tag == 0 || self.decided(tag) || requeues.contains(&tag) {
                continue;
            }
            match verdict {
                Verdict::Ack => self.held.insert(tag),
                Verdict::Requeue => requeues.insert(tag),
            };
        }
        let mut frames: Vec<Frame> = requeues.iter().map(|&tag| Frame::Requeue { tag }).collect();
        self.above.extend(requeues);

        // Advance the floor through everything settled now or before.
        let mut floor = self.floor;
        while self.held.contains(&(floor + 1)) || self.above.contains(&(floor + 1)) {
            floor += 1;
        }
        let still_held = self.held.split_off(&(floor + 1));
        let covered = std::mem::replace(&mut self.held, still_held);
        if let Some(&top) = covered.last() {
            frames.push(Frame::Ack {
                tag: top,
                multiple: covered.len() > 1,
                count: covered.len() as u64,
            });
        }
        if release {
            frames.extend(self.held.iter().map(|&tag| Frame::Ack {
                tag,
                multiple: false,
                count: 1,
            }));
            self.above.append(&mut self.held);
        }
        self.floor = floor;
        self.above = self.above.split_off(&(floor + 1));
        frames
    }
}

/// Hands verdicts to the settler task of one consume channel.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    verdicts: mpsc::UnboundedSender<(u64, Verdict)>,
}

impl Settler {
    /// Starts the settler task for `channel`; it ends when every `Settler`
    /// handle is gone and the verdicts queued before are sent.
    pub(crate) fn start(channel: Channel, stats: Arc<WorkerStats>) -> (Self, JoinHandle<()>) {
        let (verdicts, queued) = mpsc::unbounded_channel();
        let task = tokio::spawn(settle(channel, queued, stats));
        (Self { verdicts }, task)
    }

    /// Requeues delivery `tag`.
    pub(crate) fn requeue(&self, tag: u64) {
        self.settle(tag, Verdict::Requeue);
    }

    /// Settles delivery `tag` as `verdict` says.
    pub(crate) fn settle(&self, tag: u64, verdict: Verdict) {
        if self.verdicts.send((tag, verdict)).is_err() {
            // The session is over; the broker requeues what its channel had
            // not settled.
            tracing::debug!(
                delivery_tag = tag,
                ?verdict,
                "settler gone; the broker will redeliver"
            );
        }
    }
}

/// The settler task: plans each round's verdicts and sends the frames.
async fn settle(
    channel: Channel,
    mut queued: mpsc::UnboundedReceiver<(u64, Verdict)>,
    stats: Arc<WorkerStats>,
) {
    let mut ledger = Ledger::default();
    let mut round = Vec::new();
    let (mut deliveries, mut frames) = (0_u64, 0_u64);
    // When the acks held now must go, whatever happens to the gap.
    let mut release_at: Option<tokio::time::Instant> = None;
    loop {
        let next = queued.recv_many(&mut round, ROUND);
        let (open, release) = match release_at {
            None => (next.await > 0, false),
            Some(at) => match tokio::time::timeout_at(at, next).await {
                Ok(n) => (n > 0, tokio::time::Instant::now() >= at),
                Err(_) => (true, true),
            },
        };
        // Closed: the session is ending, so nothing waits any more.
        let plan = ledger.plan(round.drain(..), release || !open);
        release_at = match release_at {
            Some(at) if ledger.holding() && !release => Some(at),
            _ if ledger.holding() => Some(tokio::time::Instant::now() + HOLD),
            _ => None,
        };
        for frame in plan {
            frames += 1;
            match frame {
                Frame::Ack {
                    tag,
                    multiple,
                    count,
                } => match channel.basic_ack(tag, BasicAckOptions { multiple }).await {
                    Ok(()) => {
                        deliveries += count;
                        stats.acked.fetch_add(count, Relaxed);
                    }
                    Err(error) => {
                        tracing::warn!(delivery_tag = tag, multiple, count, %error, "ack not sent; the broker will redeliver");
                    }
                },
                Frame::Requeue { tag } => {
                    deliveries += 1;
                    let options = BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    };
                    if let Err(error) = channel.basic_nack(tag, options).await {
                        tracing::warn!(delivery_tag = tag, %error, "requeue not sent; the broker will requeue when the channel closes");
                    }
                }
            }
        }
        if !open {
            break;
        }
    }
    tracing::debug!(deliveries, frames, "settler done");
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Ack, Requeue};

    fn ack(tag: u64, multiple: bool, count: u64) -> Frame {
        Frame::Ack {
            tag,
            multiple,
            count,
        }
    }

    #[test]
    fn a_contiguous_run_is_one_multiple_ack() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.plan([(2, Ack), (1, Ack), (3, Ack)], false),
            [ack(3, true, 3)]
        );
        assert_eq!(ledger.plan([(4, Ack)], false), [ack(4, false, 1)]);
        assert!(!ledger.holding());
    }

    #[test]
    fn acks_above_a_gap_wait_for_it_to_close() {
        let mut ledger = Ledger::default();
        // 1 is still running: 2 and 3 wait for it...
        assert_eq!(ledger.plan([(2, Ack), (3, Ack)], false), []);
        assert!(ledger.holding());
        // ...and go out with it in one frame when it finishes.
        assert_eq!(ledger.plan([(1, Ack)], false), [ack(3, true, 3)]);
        assert!(!ledger.holding());
    }

    #[test]
    fn released_acks_above_a_gap_go_alone_and_the_gap_closes_later() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.plan([(2, Ack), (3, Ack)], false), []);
        // The hold is over and 1 still runs: 2 and 3 go on their own.
        assert_eq!(ledger.plan([], true), [ack(2, false, 1), ack(3, false, 1)]);
        assert!(!ledger.holding());
        // 1 closes the gap; 2 and 3 are settled, so the ack of 1 covers 1 only.
        assert_eq!(ledger.plan([(1, Ack), (5, Ack)], false), [ack(1, false, 1)]);
        assert_eq!(ledger.plan([(4, Ack), (6, Ack)], false), [ack(6, true, 3)]);
    }

    #[test]
    fn requeues_go_first_and_are_never_covered_by_a_multiple_ack() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.plan([(1, Ack), (2, Requeue), (3, Ack)], false),
            [Frame::Requeue { tag: 2 }, ack(3, true, 2)]
        );
        // A held ack is not covered by a later requeue's frame either.
        assert_eq!(ledger.plan([(5, Ack)], false), []);
        assert_eq!(
            ledger.plan([(6, Requeue), (4, Ack)], false),
            [Frame::Requeue { tag: 6 }, ack(5, true, 2)]
        );
    }

    #[test]
    fn the_first_verdict_on_a_tag_wins() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.plan([(1, Ack), (1, Requeue)], false),
            [ack(1, false, 1)]
        );
        assert_eq!(ledger.plan([(1, Requeue), (3, Ack)], false), []);
        assert_eq!(
            ledger.plan([(3, Requeue), (0, Ack)], true),
            [ack(3, false, 1)]
        );
        assert_eq!(
            ledger.plan([(3, Ack), (2, Requeue)], false),
            [Frame::Requeue { tag: 2 }]
        );
        assert!(!ledger.holding());
    }

    #[test]
    fn the_ledger_stays_small() {
        let mut ledger = Ledger::default();
        for tag in (1..=10_000).rev() {
            ledger.plan([(tag, Ack)], tag % 100 == 0);
        }
        assert_eq!(ledger.floor, 10_000);
        assert!(ledger.above.is_empty());
        assert!(!ledger.holding());
    }
}
