//! The seam between the hub and PostgreSQL: the LISTEN set the hub keeps, as a trait, so the
//! hub can be tested in-process with a fake.

use pgpush_pg::Listener;
use tokio::sync::oneshot;

/// The channels a node LISTENs to.
pub trait ListenSet: Send + Sync + std::fmt::Debug + 'static {
    /// Asks to LISTEN to `channel`; the receiver completes once PostgreSQL confirmed it.
    fn listen(&self, channel: &str) -> oneshot::Receiver<()>;
    /// Asks to UNLISTEN `channel`.
    fn unlisten(&self, channel: &str);
    /// True while the LISTEN connection is up.
    fn is_up(&self) -> bool;
    /// Channels currently wanted from PostgreSQL.
    fn listened_channels(&self) -> usize;
}

impl ListenSet for Listener {
    fn listen(&self, channel: &str) -> oneshot::Receiver<()> {
        Listener::listen(self, channel)
    }

    fn unlisten(&self, channel: &str) {
        Listener::unlisten(self, channel);
    }

    fn is_up(&self) -> bool {
        self.state().borrow().is_up()
    }

    fn listened_channels(&self) -> usize {
        Listener::listened_channels(self)
    }
}

/// A LISTEN set without PostgreSQL, for tests: every LISTEN is confirmed at once, and what was
/// asked is counted.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeListenSet {
    /// LISTENs asked, per channel.
    listens: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Channels LISTENed and not UNLISTENed since.
    listened: std::sync::Mutex<std::collections::HashSet<String>>,
    unlistens: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl FakeListenSet {
    /// How many times `channel` was LISTENed.
    pub(crate) fn listens(&self, channel: &str) -> usize {
        let listens = self.listens.lock().unwrap();
        listens.get(channel).copied().unwrap_or(0)
    }

    /// How many UNLISTENs were asked.
    pub(crate) fn unlistens(&self) -> usize {
        self.unlistens.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
impl ListenSet for FakeListenSet {
    fn listen(&self, channel: &str) -> oneshot::Receiver<()> {
        *self
            .listens
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default() += 1;
        self.listened.lock().unwrap().insert(channel.to_owned());
        let (confirm, confirmed) = oneshot::channel();
        let _ = confirm.send(());
        confirmed
    }

    fn unlisten(&self, channel: &str) {
        self.listened.lock().unwrap().remove(channel);
        self.unlistens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_up(&self) -> bool {
        true
    }

    fn listened_channels(&self) -> usize {
        self.listened.lock().unwrap().len()
    }
}
