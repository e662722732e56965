//! Delivery accounting: per subscriber (seen sequence numbers, duplicates, order, latency), and
//! totals that merge across subscribers and processes.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer, V2Serializer},
};
use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch (publisher and subscribers share the machine's clock).
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds, 1 µs to 120 s, 2 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("histogram bounds")
}

/// The number after `"key":` in a JSON text, found without parsing the whole frame (every
/// transport's envelope carries the load generator's `{"seq":..,"t":..}` somewhere in it).
pub(crate) fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// What one subscriber saw of its channel.
#[derive(Debug)]
pub(crate) struct Tally {
    seen: Vec<bool>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    last: u64,
    latency: Histogram<u64>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            seen: Vec::new(),
            received: 0,
            duplicates: 0,
            reordered: 0,
            last: 0,
            latency: histogram(),
        }
    }

    /// Records a message text (whatever the envelope); false if it carried no stamp.
    pub(crate) fn record_text(&mut self, text: &[u8]) -> bool {
        let (Some(seq), Some(sent)) = (
            number_after(text, b"\"seq\":"),
            number_after(text, b"\"t\":"),
        ) else {
            return false;
        };
        self.record(seq, sent);
        true
    }

    fn record(&mut self, seq: u64, sent_nanos: u64) {
        let _ = self
            .latency
            .record((now_nanos().saturating_sub(sent_nanos) / 1000).max(1));
        let index = seq as usize;
        if self.seen.len() <= index {
            self.seen.resize(index + 1, false);
        }
        if self.seen[index] {
            self.duplicates += 1;
            return;
        }
        self.seen[index] = true;
        self.received += 1;
        if seq < self.last {
            self.reordered += 1;
        }
        self.last = self.last.max(seq);
    }
}

/// Totals over many subscribers, as sent from a worker process to the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Totals {
    pub(crate) subscribers: u64,
    pub(crate) disconnected: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    /// V2-serialized latency histogram, base64.
    latency: String,
}

impl Totals {
    pub(crate) fn empty() -> Totals {
        Totals {
            subscribers: 0,
            disconnected: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            latency: encode_histogram(&histogram()),
        }
    }

    /// Adds one subscriber that should have received `expected` messages.
    pub(crate) fn add(&mut self, tally: &Tally, expected: u64, disconnected: bool) {
        self.subscribers += 1;
        self.disconnected += u64::from(disconnected);
        self.expected += expected;
        self.delivered += tally.received;
        self.lost += expected.saturating_sub(tally.received);
        self.duplicates += tally.duplicates;
        self.reordered += tally.reordered;
        let mut latency = self.latency();
        let _ = latency.add(&tally.latency);
        self.latency = encode_histogram(&latency);
    }

    /// Adds another worker's totals.
    pub(crate) fn merge(&mut self, other: &Totals) {
        self.subscribers += other.subscribers;
        self.disconnected += other.disconnected;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        let mut latency = self.latency();
        let _ = latency.add(other.latency());
        self.latency = encode_histogram(&latency);
    }

    /// The merged latency histogram.
    pub(crate) fn latency(&self) -> Histogram<u64> {
        decode_histogram(&self.latency)
    }
}

pub(crate) fn encode_histogram(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    let _ = V2Serializer::new().serialize(histogram, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn decode_histogram(text: &str) -> Histogram<u64> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| Deserializer::new().deserialize(&mut bytes.as_slice()).ok())
        .unwrap_or_else(histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_every_envelope() {
        let frames: [&[u8]; 4] = [
            br#"{"type":"message","channel":"lg-1","data":{"seq":5,"t":123},"cursor":"9.ab"}"#,
            br#"{"channel":"lg-1","data":{"seq":5,"t":123}}"#,
            br#"{"seq":5,"t":123}"#,
            b"Content-Type: application/json\n\n{\"seq\":5,\"t\":123}",
        ];
        for frame in frames {
            assert_eq!(number_after(frame, b"\"seq\":"), Some(5));
            assert_eq!(number_after(frame, b"\"t\":"), Some(123));
        }
    }

    #[test]
    fn duplicates_and_reordering_are_counted() {
        let mut tally = Tally::new();
        for seq in [1, 2, 2, 4, 3] {
            tally.record(seq, now_nanos());
        }
        assert_eq!(
            (tally.received, tally.duplicates, tally.reordered),
            (4, 1, 1)
        );
        let mut totals = Totals::empty();
        totals.add(&tally, 5, false);
        assert_eq!(totals.lost, 1);
        let mut merged = Totals::empty();
        merged.merge(&totals);
        assert_eq!(merged.latency().len(), 5);
    }
}
