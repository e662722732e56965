//! A cache of table rows kept coherent by `pgpush.watch_table`: it follows the table's channel
//! over a pgpush WebSocket, resuming with its cursor, and drops each row the moment its change
//! arrives.
//!
//! Coherence rules: rows are cached only while the invalidation stream is live (a reconnect
//! replays what was missed after the cursor; a `reset` or a `truncate` clears everything), and a
//! row whose invalidation arrives while it is being loaded is not stored.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Rows by primary key (the `key` JSON of the change messages), coherent with the database.
#[derive(Debug)]
pub struct InvalidatingCache<V> {
    state: Mutex<State<V>>,
    live: watch::Sender<bool>,
}

#[derive(Debug)]
struct State<V> {
    entries: HashMap<String, Slot<V>>,
    invalidations: u64,
}

#[derive(Debug)]
enum Slot<V> {
    /// Being loaded; `stale` once an invalidation arrived meanwhile.
    Loading {
        stale: bool,
    },
    Ready(Arc<V>),
}

impl<V: Send + Sync + 'static> InvalidatingCache<V> {
    /// An empty cache; nothing is cached until [`InvalidatingCache::follow`] is live.
    pub fn new() -> Arc<InvalidatingCache<V>> {
        Arc::new(InvalidatingCache {
            state: Mutex::new(State {
                entries: HashMap::new(),
                invalidations: 0,
            }),
            live: watch::channel(false).0,
        })
    }

    /// Follows `channel` on the pgpush node at `base_url` (`ws://host:port`) until `shutdown`,
    /// reconnecting with the last cursor.
    pub fn follow(
        self: &Arc<Self>,
        base_url: &str,
        channel: &str,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        let endpoint = format!(
            "{}/v1/ws?{}",
            base_url.trim_end_matches('/'),
            form_urlencoded::Serializer::new(String::new())
                .append_pair("channel", channel)
                .finish()
        );
        tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            let mut backoff = Duration::from_millis(250);
            while !shutdown.is_cancelled() {
                let url = match &cursor {
                    Some(cursor) => format!(
                        "{endpoint}&{}",
                        form_urlencoded::Serializer::new(String::new())
                            .append_pair("since", cursor)
                            .finish()
                    ),
                    None => endpoint.clone(),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    result = cache.stream(&url, &mut cursor) => match result {
                        Ok(()) => backoff = Duration::from_millis(250),
                        Err(error) => warn!(%error, "invalidation stream failed"),
                    }
                }
                cache.live.send_replace(false);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        })
    }

    /// Reads one connection's frames until it ends. Ok when it was live at some point.
    async fn stream(
        &self,
        url: &str,
        cursor: &mut Option<String>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        let mut was_live = false;
        while let Some(message) = socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match frame["type"].as_str() {
                Some("message") => {
                    self.apply(&frame["data"]);
                    if let Some(position) = frame["cursor"].as_str() {
                        *cursor = Some(position.to_owned());
                    }
                }
                Some("subscribed") => {
                    if let Some(position) = frame["cursor"].as_str() {
                        *cursor = Some(position.to_owned());
                    }
                    was_live = true;
                    self.live.send_replace(true);
                }
                Some("reset") => self.clear(),
                _ => debug!(%text, "frame ignored"),
            }
        }
        if was_live {
            Ok(())
        } else {
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)
        }
    }

    /// Applies one change message `{"op","table","key"}`.
    fn apply(&self, change: &Value) {
        match change["op"].as_str() {
            Some("truncate") => self.clear(),
            Some(_) => self.invalidate(&change["key"]),
            None => debug!(%change, "not a change message"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the row with primary key `key`.
    pub fn invalidate(&self, key: &Value) {
        let mut state = self.lock();
        state.invalidations += 1;
        let key = key.to_string();
        if let Some(Slot::Loading { stale }) = state.entries.get_mut(&key) {
            *stale = true;
        } else {
            state.entries.remove(&key);
        }
    }

    /// Drops every row.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.invalidations += 1;
        state.entries.retain(|_, slot| match slot {
            Slot::Loading { stale } => {
                *stale = true;
                true
            }
            Slot::Ready(_) => false,
        });
    }

    /// True while the invalidation stream is live (rows are cached only then).
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// Waits until the invalidation stream is live; false after `timeout`.
    pub async fn wait_live(&self, timeout: Duration) -> bool {
        let mut live = self.live.subscribe();
        tokio::time::timeout(timeout, live.wait_for(|live| *live))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// The cached row, without loading.
    pub fn cached(&self, key: &Value) -> Option<Arc<V>> {
        match self.lock().entries.get(&key.to_string()) {
            Some(Slot::Ready(value)) => Some(value.clone()),
            _ => None,
        }
    }

    /// Invalidation messages applied so far.
    pub fn invalidations(&self) -> u64 {
        self.lock().invalidations
    }

    /// The row with primary key `key`: from the cache, or from `load` (then cached, if the
    /// stream is live and no invalidation for it arrived meanwhile). `None` rows are not cached.
    pub async fn get<F, Fut, E>(&self, key: &Value, load: F) -> Result<Option<Arc<V>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let key_text = key.to_string();
        // While the stream is down a change could be on its way: the cache is not trusted.
        let caching = self.is_live() && {
            let mut state = self.lock();
            match state.entries.get(&key_text) {
                Some(Slot::Ready(value)) => return Ok(Some(value.clone())),
                Some(Slot::Loading { .. }) => false,
                None => {
                    state
                        .entries
                        .insert(key_text.clone(), Slot::Loading { stale: false });
                    true
                }
            }
        };
        let loaded = load().await;
        if !caching {
            return loaded.map(|row| row.map(Arc::new));
        }
        let mut state = self.lock();
        let fresh = matches!(
            state.entries.remove(&key_text),
            Some(Slot::Loading { stale: false })
        );
        let row = match loaded {
            Ok(row) => row.map(Arc::new),
            Err(error) => return Err(error),
        };
        if let (true, Some(row)) = (fresh, &row) {
            state.entries.insert(key_text, Slot::Ready(row.clone()));
        }
        Ok(row)
    }
}
