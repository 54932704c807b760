//! Sending a delivery round again: the one way a delivery waits without holding a prefetch
//! slot, whether it arrived early, another copy of it is being sent, it is over Teams' limits,
//! or Teams failed it for now. A wait of a second or more is parked in Redis until due
//! ([`herald_shared::timers`]); a shorter one goes straight back to the dispatch queue, and
//! the `not_before` bookkeeping makes the next handler wait out the rest.
//!
//! The body and the AMQP `type` go round unchanged; the bookkeeping headers say what the
//! delivery has been through ([`Again::next`]), and the trace context rides along.

use std::time::Duration;

use herald_shared::amqp::{
    DispatchMessage,
    headers::{self, Bookkeeping},
};
use time::OffsetDateTime;

use super::{Handler, Incoming, Interrupted};

/// Why a delivery goes round again; it decides what the delivery's bookkeeping says when it
/// is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Early, or another copy is being sent: back after the wait, as it was.
    AsItWas,
    /// Over Teams' limits: back when its pacing turn is due, presenting the turn.
    ForTurn(u64),
    /// A transient failure: back for another try, `attempts` calls to Teams made so far.
    Retry { attempts: u32 },
}

impl Again {
    /// The bookkeeping a delivery carries round, given what it carries now and when it is
    /// due back.
    pub fn next(self, now: Bookkeeping, back_at: OffsetDateTime) -> Bookkeeping {
        match self {
            Again::AsItWas => now,
            Again::ForTurn(turn) => Bookkeeping {
                not_before: Some(back_at),
                pace_turn: Some(turn),
                ..now
            },
            // A retry queues anew for pacing when it is back: its old turn has long passed.
            Again::Retry { attempts } => Bookkeeping {
                attempts,
                not_before: Some(back_at),
                pace_turn: None,
            },
        }
    }
}

impl Handler {
    /// Sends `incoming` round again to come back `wait` from now. Done once the copy is
    /// parked in Redis or confirmed by the broker, so the original can be acked.
    pub(super) async fn requeue(
        &self,
        incoming: &Incoming<'_>,
        wait: Duration,
        again: Again,
    ) -> Result<(), Interrupted> {
        let delivery = incoming.delivery;
        let back_at = OffsetDateTime::now_utc() + wait;
        // The legacy operation marker is dropped: the copy carries the change's own type.
        let mut kept = headers::carried_over_except(
            delivery.properties.headers().as_ref(),
            &[headers::LEGACY_OPERATION],
        );
        again.next(incoming.bookkeeping, back_at).write(&mut kept);
        let message = DispatchMessage {
            id: delivery
                .properties
                .message_id()
                .as_ref()
                .map_or(incoming.id, |m| m.as_str())
                .to_owned(),
            amqp_type: incoming.amqp_type.to_owned(),
            headers: kept,
            body: delivery.data.clone(),
        };
        self.until_done("queue again", || self.queue.send(&message, wait))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried() -> Bookkeeping {
        Bookkeeping {
            attempts: 2,
            not_before: Some(OffsetDateTime::UNIX_EPOCH),
            pace_turn: Some(41),
        }
    }

    #[test]
    fn an_early_or_busy_delivery_goes_round_as_it_was() {
        let back_at = OffsetDateTime::now_utc();
        assert_eq!(Again::AsItWas.next(carried(), back_at), carried());
    }

    #[test]
    fn a_paced_out_delivery_keeps_its_attempts_and_comes_back_for_its_turn() {
        let back_at = OffsetDateTime::now_utc();
        assert_eq!(
            Again::ForTurn(42).next(carried(), back_at),
            Bookkeeping {
                attempts: 2,
                not_before: Some(back_at),
                pace_turn: Some(42),
            }
        );
    }

    #[test]
    fn a_retry_counts_its_attempts_and_queues_anew_for_pacing() {
        let back_at = OffsetDateTime::now_utc();
        assert_eq!(
            Again::Retry { attempts: 3 }.next(carried(), back_at),
            Bookkeeping {
                attempts: 3,
                not_before: Some(back_at),
                pace_turn: None,
            }
        );
    }
}
