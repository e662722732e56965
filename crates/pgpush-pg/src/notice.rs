//! The sequencer's batch notifications on `pgpush_wake`: the events of a range of positions.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::EventRow;

/// What one `pgpush_wake` notification says (see migration 6 for the wire form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeNotice {
    /// Every event in (`after`, `upto`] of `epoch`, or the news that they must be read from the
    /// table (`events` is `None`: one of them is too large for a notification).
    Batch {
        /// The epoch the positions belong to.
        epoch: i64,
        /// The range starts after this position.
        after: i64,
        /// The range ends at this position, included.
        upto: i64,
        /// The events, in position order; `None` when they must be read from the table.
        events: Option<Vec<EventRow>>,
    },
    /// Something changed (a new epoch, an older sequencer's high-water mark): read the table.
    Wake,
}

/// One event as a notification carries it: position, id, channel, payload, traceparent, and
/// `created_at` in microseconds since 1970.
type WireEvent = (i64, i64, String, String, Option<String>, i64);

#[derive(Deserialize)]
struct WireBatch {
    epoch: i64,
    after: i64,
    upto: i64,
    #[serde(default)]
    events: Option<Vec<WireEvent>>,
}

impl WakeNotice {
    /// Reads a notification payload; anything that is not a batch is a plain wake-up.
    pub fn parse(payload: &str) -> WakeNotice {
        if !payload.starts_with('{') {
            return WakeNotice::Wake;
        }
        let Ok(batch) = serde_json::from_str::<WireBatch>(payload) else {
            return WakeNotice::Wake;
        };
        let events = batch.events.map(|events| {
            events
                .into_iter()
                .map(
                    |(position, id, channel, payload, traceparent, created_us)| EventRow {
                        id,
                        position,
                        channel,
                        payload,
                        traceparent,
                        created_at: SystemTime::UNIX_EPOCH
                            + Duration::from_micros(u64::try_from(created_us).unwrap_or(0)),
                    },
                )
                .collect()
        });
        WakeNotice::Batch {
            epoch: batch.epoch,
            after: batch.after,
            upto: batch.upto,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WakeNotice;

    #[test]
    fn batches_fetches_and_bare_wakes() {
        let notice = WakeNotice::parse(
            r#"{"epoch":7,"after":10,"upto":12,"events":[[11,101,"a","x\"y",null,1000000],[12,99,"b","{}","00-ab-cd-01",2]]}"#,
        );
        let WakeNotice::Batch {
            epoch,
            after,
            upto,
            events: Some(events),
        } = notice
        else {
            panic!("not a batch: {notice:?}");
        };
        assert_eq!((epoch, after, upto), (7, 10, 12));
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].position, events[0].id), (11, 101));
        assert_eq!(events[0].payload, "x\"y");
        assert_eq!(events[1].traceparent.as_deref(), Some("00-ab-cd-01"));
        assert_eq!(
            events[0].created_at,
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)
        );
        assert_eq!(
            WakeNotice::parse(r#"{"epoch":7,"after":12,"upto":13,"fetch":true}"#),
            WakeNotice::Batch {
                epoch: 7,
                after: 12,
                upto: 13,
                events: None
            }
        );
        for wake in ["42", "", "{not json", r#"{"epoch":1}"#] {
            assert_eq!(WakeNotice::parse(wake), WakeNotice::Wake, "{wake}");
        }
    }
}
