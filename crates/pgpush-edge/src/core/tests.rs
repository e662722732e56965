//! Unit tests of the core, in-process, with a fake LISTEN set: fan-out, the queues' overflow,
//! and replay-then-live.

use std::{sync::Arc, time::Duration};

use pgpush_pg::{Epoch, History};
use pgpush_protocol::{Channel, CursorPoint, Filter, Message, Payload};
use tokio_util::sync::CancellationToken;

use crate::{
    core::{
        hub::{Hub, Replay},
        listen::FakeListenSet,
        queue::Inbox,
        session::Session,
    },
    ops::stats::Stats,
    settings::{HubSettings, QueueLimits, RecentLimits},
};

pub(crate) fn hub_with(
    queue_messages: usize,
    recent_messages: usize,
) -> (Arc<Hub>, Arc<FakeListenSet>) {
    let listener = Arc::new(FakeListenSet::default());
    let settings = HubSettings {
        queue: QueueLimits {
            messages: queue_messages,
            bytes: 1 << 20,
        },
        recent: RecentLimits {
            messages: recent_messages,
            bytes: 1 << 20,
        },
        unlisten_delay: Duration::ZERO,
        subscribe_timeout: Duration::from_secs(1),
    };
    let hub = Arc::new(Hub::new(
        listener.clone(),
        Arc::new(Stats::default()),
        &settings,
    ));
    (hub, listener)
}

fn channel(name: &str) -> Channel {
    Channel::new(name).unwrap()
}

fn ephemeral(channel: Channel, text: &str) -> Message {
    Message::ephemeral(channel, Payload::new(text))
}

fn durable(name: &str, position: i64) -> Message {
    Message::durable(
        channel(name),
        Payload::new(format!("{{\"n\":{position}}}")),
        position,
        format!("cursor-{position}"),
    )
}

/// A history of one epoch, as a fresh database has.
fn one_epoch() -> Arc<History> {
    let epoch = Epoch {
        seq: 1,
        id: 7,
        first_position: 1,
        forked_after: 0,
    };
    Arc::new(History::new(vec![epoch]).unwrap())
}

fn positions(messages: &[Arc<Message>]) -> Vec<i64> {
    messages.iter().filter_map(|m| m.position()).collect()
}

fn queued(inbox: &mut Inbox) -> Vec<Arc<Message>> {
    let mut batch = Vec::new();
    inbox.try_recv_many(&mut batch, usize::MAX);
    batch
}

#[tokio::test]
async fn each_subscriber_gets_each_message_once_and_postgres_is_asked_once_per_channel() {
    let (hub, listener) = hub_with(16, 16);
    let (first_outbox, mut first) = hub.outbox(None);
    let (second_outbox, mut second) = hub.outbox(None);
    let mut first_session = Session::new(hub.clone(), first_outbox);
    let mut second_session = Session::new(hub.clone(), second_outbox);
    let chat = channel("chat");
    first_session
        .subscribe(std::slice::from_ref(&chat), None, None)
        .await
        .unwrap();
    second_session
        .subscribe(&[chat.clone(), chat.clone(), channel("other")], None, None)
        .await
        .unwrap();
    assert_eq!(
        listener.listens("chat"),
        1,
        "one LISTEN for both subscribers"
    );

    assert!(hub.fan_out("chat", |c| ephemeral(c, "1")));
    assert!(!hub.fan_out("nobody", |c| ephemeral(c, "x")));
    assert_eq!(queued(&mut first).len(), 1);
    assert_eq!(queued(&mut second).len(), 1);

    drop(first_session);
    assert_eq!(listener.unlistens(), 0, "a subscriber is left");
    assert_eq!(hub.channels_listened(), 2);
    second_session.unsubscribe(&[chat]);
    assert_eq!(listener.unlistens(), 1, "the last one leaving UNLISTENs");
    assert_eq!(hub.channels_listened(), 1);
    assert!(!hub.fan_out("chat", |c| ephemeral(c, "2")));
}

#[tokio::test]
async fn an_overflowing_queue_cuts_its_client_alone_and_counts_what_it_dropped() {
    let (hub, _) = hub_with(2, 16);
    let kill = CancellationToken::new();
    let (slow_outbox, mut slow) = hub.outbox(Some(kill.clone()));
    let (fast_outbox, mut fast) = hub.outbox(None);
    let mut slow_session = Session::new(hub.clone(), slow_outbox.clone());
    let mut fast_session = Session::new(hub.clone(), fast_outbox);
    slow_session
        .subscribe(&[channel("feed")], None, None)
        .await
        .unwrap();
    fast_session
        .subscribe(&[channel("feed")], None, None)
        .await
        .unwrap();

    for n in 0..2 {
        hub.fan_out("feed", |c| ephemeral(c, &n.to_string()));
        assert_eq!(queued(&mut fast).len(), 1, "the fast reader keeps up");
    }
    assert!(!kill.is_cancelled());
    for n in 2..5 {
        hub.fan_out("feed", |c| ephemeral(c, &n.to_string()));
        assert_eq!(
            queued(&mut fast).len(),
            1,
            "nobody else waits for the slow one"
        );
    }
    assert!(kill.is_cancelled(), "the overflow cuts the slow client");
    assert_eq!(queued(&mut slow).len(), 2, "what fit is still there");
    assert_eq!(slow_outbox.take_overflow(), Some(3));
    assert_eq!(slow_outbox.take_overflow(), None, "reported once");
}

#[tokio::test]
async fn replay_then_live_has_no_gap_and_no_duplicate() {
    let (hub, _) = hub_with(64, 64);
    hub.start_durable(0, one_epoch());
    hub.fan_out_durable((1..=5).map(|p| durable("orders", p)).collect(), None);

    let (outbox, mut inbox) = hub.outbox(None);
    let mut session = Session::new(hub.clone(), outbox);
    let since = CursorPoint {
        epoch: None,
        position: 2,
    };
    let subscription = session
        .subscribe(&[channel("orders")], Some(since), None)
        .await
        .unwrap();
    assert_eq!(subscription.head, Some(5));
    let Replay::Memory(replayed) = subscription.replay else {
        panic!(
            "recent events replay from memory: {:?}",
            subscription.replay
        )
    };
    // Fan-out after the registration reaches the queue; an event at or below the head again
    // (a reader retrying a batch) does not.
    hub.fan_out_durable(vec![durable("orders", 5), durable("orders", 6)], None);
    hub.fan_out_durable(vec![durable("orders", 7)], Some(9));

    let mut delivered = positions(&replayed);
    delivered.extend(positions(&queued(&mut inbox)));
    assert_eq!(delivered, vec![3, 4, 5, 6, 7]);
    assert_eq!(hub.cursor_point(9).map(|p| p.position), Some(9));
}

#[tokio::test]
async fn a_cursor_older_than_memory_replays_from_the_database_and_an_unknown_epoch_resets() {
    let (hub, _) = hub_with(64, 2);
    hub.start_durable(0, one_epoch());
    hub.fan_out_durable((1..=5).map(|p| durable("orders", p)).collect(), None);
    let (outbox, _inbox) = hub.outbox(None);
    let mut session = Session::new(hub.clone(), outbox.clone());
    let old = CursorPoint {
        epoch: None,
        position: 1,
    };
    let subscription = session
        .subscribe(&[channel("orders")], Some(old), None)
        .await
        .unwrap();
    assert!(
        matches!(subscription.replay, Replay::Database { after: 1, upto: 5 }),
        "{:?}",
        subscription.replay
    );
    let mut other = Session::new(hub.clone(), hub.outbox(None).0);
    let elsewhere = CursorPoint {
        epoch: Some(99),
        position: 3,
    };
    let subscription = other
        .subscribe(&[channel("orders")], Some(elsewhere), None)
        .await
        .unwrap();
    assert!(
        matches!(subscription.replay, Replay::Lost),
        "{:?}",
        subscription.replay
    );
}

#[tokio::test]
async fn batch_notifications_go_to_the_reader_in_order_and_anything_else_wakes_it() {
    use pgpush_pg::NotificationSink;

    use crate::core::hub::WAKE_CHANNEL;

    let (hub, _listener) = hub_with(8, 8);
    let mut notices = hub.take_notices().expect("the first taker gets them");
    assert!(hub.take_notices().is_none(), "and only the first");
    let wake = hub.durable_wake();
    let batches = [
        r#"{"epoch":1,"after":0,"upto":1,"events":[]}"#,
        r#"{"epoch":1,"after":1,"upto":2,"fetch":true}"#,
    ];
    for batch in batches {
        hub.notification(WAKE_CHANNEL, batch, 1);
    }
    for batch in batches {
        assert_eq!(notices.try_recv().as_deref(), Ok(batch));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), wake.notified())
            .await
            .is_err(),
        "a batch alone does not wake the reader to query"
    );
    hub.notification(WAKE_CHANNEL, "42", 1);
    tokio::time::timeout(Duration::from_secs(1), wake.notified())
        .await
        .expect("a bare wake-up wakes it");
    // A full queue drops the notification and wakes the reader, which reads the gap.
    for _ in 0..2000 {
        hub.notification(WAKE_CHANNEL, batches[0], 1);
    }
    tokio::time::timeout(Duration::from_secs(1), wake.notified())
        .await
        .expect("a dropped batch wakes it");
}

#[tokio::test]
async fn joins_and_leaves_reach_the_watchers_only_and_a_session_leaves_what_it_joined() {
    use crate::core::presence::{Identity, Presence};
    use pgpush_pg::NotificationSink;

    let (hub, _) = hub_with(16, 16);
    let presence = Arc::new(Presence::new(None, Arc::new(Stats::default())));
    let room = channel("room");
    let (watcher_outbox, mut watcher) = hub.outbox(None);
    let (quiet_outbox, mut quiet) = hub.outbox(None);
    let mut watching = Session::new(hub.clone(), watcher_outbox);
    let mut listening = Session::new(hub.clone(), quiet_outbox);
    for session in [&mut watching, &mut listening] {
        session
            .subscribe(std::slice::from_ref(&room), None, None)
            .await
            .unwrap();
    }
    watching.be_present(&presence, &Identity::default(), std::slice::from_ref(&room));
    let id = watching.presence_id().unwrap().to_string();
    assert!(
        id.ends_with(&format!(".{}", watching.outbox().id())),
        "{id}"
    );

    let change = format!(
        r#"{{"changes":[{{"type":"join","channel":"room","client":{{"id":"{id}","user":null,"info":null}}}},{{"type":"leave","channel":"elsewhere","client":{{"id":"x"}}}}]}}"#
    );
    hub.notification(pgpush_pg::PRESENCE_CHANNEL, &change, 1);
    let got = queued(&mut watcher);
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .websocket_text()
            .starts_with(br#"{"type":"join","channel":"room""#)
    );
    assert!(queued(&mut quiet).is_empty(), "no presence asked, no joins");

    // The server unsubscribed the watcher: it no longer watches, and its session forgets it.
    hub.unsubscribe(watching.outbox().id(), [&room]);
    hub.notification(pgpush_pg::PRESENCE_CHANNEL, &change, 1);
    assert!(queued(&mut watcher).is_empty());
    assert_eq!(watching.channels().count(), 0);
    drop(watching);
    drop(listening);
}

#[tokio::test]
async fn a_filter_delivers_what_matches_is_replaced_by_a_new_subscribe_and_markers_cover_the_rest()
{
    let (hub, _) = hub_with(64, 64);
    hub.start_durable(0, one_epoch());
    let (outbox, mut filtered) = hub.outbox(None);
    let (plain_outbox, mut plain) = hub.outbox(None);
    let mut session = Session::new(hub.clone(), outbox);
    let mut plain_session = Session::new(hub.clone(), plain_outbox);
    let orders = [channel("orders")];
    let some = Arc::new(Filter::parse(r#"{"path":"n","op":"in","value":[2,4,6]}"#).unwrap());
    session.subscribe(&orders, None, Some(&some)).await.unwrap();
    plain_session.subscribe(&orders, None, None).await.unwrap();

    hub.fan_out_durable((1..=5).map(|p| durable("orders", p)).collect(), None);
    assert_eq!(positions(&queued(&mut filtered)), [2, 4]);
    assert_eq!(positions(&queued(&mut plain)), [1, 2, 3, 4, 5]);

    // The filter left 5 out after 4. Messages moved the cursor since the last round: no marker
    // yet; the next round, with nothing new, a marker brings the cursor to the head, once.
    let marker = |point: CursorPoint| {
        Message::cursor_marker(point.position, format!("cursor-{}", point.position))
    };
    hub.advance_filtered(marker);
    assert!(queued(&mut filtered).is_empty(), "its messages moved it");
    hub.advance_filtered(marker);
    let markers = queued(&mut filtered);
    assert_eq!(positions(&markers), [5]);
    assert!(markers[0].is_cursor_marker());
    hub.advance_filtered(marker);
    assert!(queued(&mut filtered).is_empty(), "at the head: no marker");
    assert!(
        queued(&mut plain).is_empty(),
        "unfiltered subscribers need none"
    );

    // A new subscribe on the channel replaces the filter for the next message.
    let above = Arc::new(Filter::parse(r#"{"path":"n","op":"gt","value":6}"#).unwrap());
    session
        .subscribe(&orders, None, Some(&above))
        .await
        .unwrap();
    hub.fan_out_durable((6..=8).map(|p| durable("orders", p)).collect(), None);
    assert_eq!(positions(&queued(&mut filtered)), [7, 8]);
    session.subscribe(&orders, None, None).await.unwrap();
    hub.fan_out_durable(vec![durable("orders", 9)], None);
    assert_eq!(positions(&queued(&mut filtered)), [9]);

    // A payload that is not JSON matches no comparison, and so matches a `not` around one.
    let text_only = Arc::new(Filter::parse(r#"{"not":{"path":"n","op":"exists"}}"#).unwrap());
    session
        .subscribe(&orders, None, Some(&text_only))
        .await
        .unwrap();
    hub.fan_out("orders", |c| ephemeral(c, "plain text"));
    hub.fan_out("orders", |c| ephemeral(c, r#"{"n":1}"#));
    let texts: Vec<String> = queued(&mut filtered)
        .iter()
        .map(|m| String::from_utf8_lossy(m.websocket_text()).into_owned())
        .collect();
    assert_eq!(
        texts,
        [r#"{"type":"message","channel":"orders","data":"plain text"}"#]
    );
}
