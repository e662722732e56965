//! Per-node and per-address limits: open connections (a guard per connection) and publish
//! rates (token buckets per connection and per address).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pgpush_protocol::ErrorCode;

use crate::{error::ClientError, settings::LimitSettings};

/// Address entries kept before idle ones are forgotten.
const ADDRESSES_BEFORE_SWEEP: usize = 10_000;

/// A token bucket: `rate` tokens a second, holding at most `rate` (one second of burst).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: f64) -> Bucket {
        Bucket {
            tokens: rate,
            updated: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// How many of something each client address holds (connections, Hippie queues), bounded;
/// an address that holds none has no entry.
#[derive(Debug, Default)]
pub(crate) struct PerAddress(HashMap<IpAddr, usize>);

impl PerAddress {
    /// Counts one more for `address`, unless it holds `max` already.
    pub(crate) fn try_add(&mut self, address: IpAddr, max: usize) -> bool {
        if self.0.get(&address).copied().unwrap_or(0) >= max {
            return false;
        }
        *self.0.entry(address).or_insert(0) += 1;
        true
    }

    /// Counts one less for `address`.
    pub(crate) fn remove(&mut self, address: IpAddr) {
        if let Some(count) = self.0.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&address);
            }
        }
    }
}

/// The node's limits and their state.
#[derive(Debug)]
pub(crate) struct Limits {
    settings: LimitSettings,
    connections: Mutex<Connections>,
    publishes: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_address: PerAddress,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The node holds `--max-connections`.
    NodeFull,
    /// The address holds `--max-connections-per-address`.
    AddressFull,
}

impl Refused {
    pub(crate) fn error(self) -> ClientError {
        match self {
            Refused::NodeFull => ClientError::new(
                ErrorCode::Unavailable,
                "this node is at its connection limit; try another",
            ),
            Refused::AddressFull => ClientError::new(
                ErrorCode::LimitExceeded,
                "too many connections from your address",
            ),
        }
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limits: Arc<Limits>,
    address: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut connections = self.limits.lock_connections();
        connections.total -= 1;
        if let Some(address) = self.address {
            connections.per_address.remove(address);
        }
    }
}

impl Limits {
    pub(crate) fn new(settings: &LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            settings: *settings,
            connections: Mutex::new(Connections::default()),
            publishes: Mutex::new(HashMap::new()),
        })
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `address` (`None`: not counted per address, as for a trusted
    /// proxy carrying many clients).
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: Option<IpAddr>,
    ) -> Result<ConnectionPermit, Refused> {
        let mut connections = self.lock_connections();
        if connections.total >= self.settings.max_connections {
            return Err(Refused::NodeFull);
        }
        if let Some(address) = address
            && !connections
                .per_address
                .try_add(address, self.settings.max_connections_per_address)
        {
            return Err(Refused::AddressFull);
        }
        connections.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            address,
        })
    }

    /// Open client sockets (every TCP connection admitted and not yet closed).
    pub(crate) fn open_sockets(&self) -> usize {
        self.lock_connections().total
    }

    /// A full publish bucket for a new WebSocket connection.
    pub(crate) fn connection_publishes(&self) -> Bucket {
        Bucket::full(self.settings.publish_rate)
    }

    /// `limit_exceeded` when a connection holding `existing` channels would hold more than
    /// `max_subscriptions` after `new` more.
    pub(crate) fn check_subscriptions(
        &self,
        existing: usize,
        new: usize,
    ) -> Result<(), ClientError> {
        let max = self.settings.max_subscriptions;
        if existing + new > max {
            return Err(ClientError::new(
                ErrorCode::LimitExceeded,
                format!("a connection may subscribe to at most {max} channels"),
            ));
        }
        Ok(())
    }

    /// Takes one publish from a WebSocket connection's bucket.
    pub(crate) fn publish_on(&self, connection: &mut Bucket) -> Result<(), ClientError> {
        connection
            .take(self.settings.publish_rate)
            .map_err(|wait| ClientError::rate_limited(wait, "on this connection"))
    }

    /// Takes one publish from `address`'s bucket.
    pub(crate) fn publish_from(&self, address: IpAddr) -> Result<(), ClientError> {
        let rate = self.settings.publish_rate_per_address;
        let mut buckets = self.publishes.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= ADDRESSES_BEFORE_SWEEP {
            // A bucket idle for a second is full again: forgetting it changes nothing.
            let now = Instant::now();
            buckets.retain(|_, b| now.duration_since(b.updated) < Duration::from_secs(1));
        }
        buckets
            .entry(address)
            .or_insert_with(|| Bucket::full(rate))
            .take(rate)
            .map_err(|wait| ClientError::rate_limited(wait, "from your address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_node_and_per_address() {
        let limits = Limits::new(&LimitSettings {
            max_connections: 3,
            max_connections_per_address: 2,
            max_subscriptions: 10,
            publish_rate: 10.0,
            publish_rate_per_address: 10.0,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(Some(a)).unwrap();
        let _second = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.admit(Some(a)).unwrap_err(), Refused::AddressFull);
        let _third = limits.admit(Some(b)).unwrap();
        assert_eq!(limits.admit(None).unwrap_err(), Refused::NodeFull);
        drop(first);
        // Both counts went down: `a` has room again, the node has exactly one place.
        let again = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.admit(Some(b)).unwrap_err(), Refused::NodeFull);
        drop(again);
        assert_eq!(limits.lock_connections().per_address.0.get(&a), Some(&1));
    }

    #[test]
    fn a_bucket_allows_a_second_of_burst_then_the_rate() {
        let mut bucket = Bucket::full(5.0);
        for _ in 0..5 {
            assert!(bucket.take(5.0).is_ok());
        }
        let wait = bucket.take(5.0).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(ClientError::rate_limited(wait, "here").retry_after, Some(1));
    }
}
