//! `/v1/ws`: the native WebSocket protocol (subscribe, unsubscribe, publish, ping frames).

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, ClientFrame, ErrorCode, Message, PublishMode, ServerFrame, parse_client_frame,
    raw_reference,
};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{
    admission::{
        limits::Bucket,
        policy::{Action, Grant},
    },
    core::{
        replay::{self, ReplayBatch, Start},
        session::Session,
    },
    error::ClientError,
    http::{
        Body, ConnInfo, client_address, query_channels, query_filter, query_history, query_pairs,
        query_presence, query_value,
    },
    ops::stats::{PublishVia, Transport},
    services::{Services, control::Registration},
    transport::{
        be_present,
        ends::Ends,
        websocket::{self, Beats, End, WsIo, WsProtocol},
    },
};

/// Answers the WebSocket handshake; channels in the query are validated first (errors are plain
/// HTTP) and subscribed once the socket is handed over.
pub(crate) fn upgrade(
    services: Arc<Services>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
    grant: Grant,
) -> Result<Response<Body>, ClientError> {
    let accept = websocket::accept_key(request.headers())?;
    let pairs = query_pairs(&request);
    let channels = query_channels(&services.limits, &pairs, &grant)?;
    let address = client_address(
        conn.peer.ip(),
        request.headers(),
        &services.lifetimes.settings.trusted_proxies,
    );
    let since = query_value(&pairs, "since");
    if let Some(since) = &since {
        services.durable.check_cursor(since)?;
    }
    let start = Start {
        since,
        history: query_history(&pairs)?,
        presence: query_presence(&pairs)?,
        filter: query_filter(&pairs)?,
    };
    drop(pairs);
    let task_services = services.clone();
    let client = Client { grant, address };
    Ok(websocket::upgrade(
        &services,
        conn.clone(),
        &mut request,
        accept,
        move |io| run(task_services, conn, io, channels, start, client),
    ))
}

/// Who is on the other end of a connection: what it may do, and from where.
struct Client {
    grant: Grant,
    address: IpAddr,
}

async fn run(
    services: Arc<Services>,
    conn: Arc<ConnInfo>,
    mut io: WsIo,
    channels: Vec<Channel>,
    start: Start,
    client: Client,
) {
    let _guard = services.stats.connection(Transport::WebSocket);
    let (outbox, mut inbox) = services.hub.outbox(Some(conn.kill.clone()));
    let control = services.control.register(&outbox, &client.grant);
    let ends = Ends::new(&services, &conn, client.grant.expires()).or_ordered(control.order());
    let mut protocol = Native {
        session: Session::new(services.hub.clone(), outbox),
        control,
        publishes: services.limits.connection_publishes(),
        services: services.clone(),
        client,
    };
    let mut end = Ok(());
    if !channels.is_empty() {
        // Boxed for the same reason as client frames: it happens once, and is large.
        end = Box::pin(protocol.subscribe(&mut io, channels, start, None, &ends)).await;
    }
    let end = match end {
        Ok(()) => {
            websocket::serve(
                &mut io,
                &mut inbox,
                &services.stats,
                &mut protocol,
                &ends,
                Beats {
                    ping: services.lifetimes.ping.subscribe(),
                    ping_interval: services.lifetimes.settings.ping_interval,
                    keepalive: None,
                },
            )
            .await
        }
        Err(end) => end,
    };
    if let End::Close(code, reason) = end {
        io.close(code, reason).await;
    }
}

struct Native {
    services: Arc<Services>,
    session: Session,
    /// Its place in server-side control (disconnect, unsubscribe, revoke).
    control: Registration,
    client: Client,
    /// This connection's publish rate.
    publishes: Bucket,
}

impl WsProtocol for Native {
    fn frame(message: &Message) -> Bytes {
        message.websocket_text().clone()
    }

    async fn on_text(&mut self, io: &mut WsIo, text: &str, ends: &Ends) -> Result<(), End> {
        let parsed = match parse_client_frame(text) {
            Ok(parsed) => parsed,
            Err(error) => {
                let reference = error.reference.as_deref();
                let refused = ClientError::new(error.code, error.reason.clone());
                return send_error(io, &refused, reference, ends).await;
            }
        };
        let reference = parsed.reference;
        match parsed.frame {
            ClientFrame::Subscribe {
                channels,
                since,
                history,
                presence,
                filter,
            } => {
                let start = Start {
                    since,
                    history,
                    presence,
                    filter: filter.map(Arc::new),
                };
                self.subscribe(io, channels, start, reference, ends).await
            }
            ClientFrame::Unsubscribe { channels } => {
                self.session.unsubscribe(&channels);
                io.send_text(
                    ServerFrame::Unsubscribed {
                        channels: &channels,
                    }
                    .encode(),
                    ends,
                )
                .await
            }
            ClientFrame::Publish {
                channel,
                data,
                mode,
            } => {
                let mode = mode.unwrap_or(PublishMode::Durable);
                let published = match self.may_publish(&channel) {
                    Ok(()) => {
                        self.services
                            .publishing
                            .publish(&channel, data, mode, None, None)
                            .await
                    }
                    Err(error) => Err(error),
                };
                self.services.stats.count_publish(
                    PublishVia::WebSocket,
                    Some(mode),
                    &published.as_ref().map_err(|e| e.code),
                );
                match published {
                    Ok(cursor) => {
                        let reference = raw_reference(reference);
                        let ack = ServerFrame::Ack {
                            reference: reference.as_deref(),
                            cursor: cursor.as_deref(),
                        };
                        io.send_text(ack.encode(), ends).await
                    }
                    Err(error) => send_error(io, &error, reference, ends).await,
                }
            }
            ClientFrame::Auth { token } => match self.reauthorize(&token) {
                Ok(()) => {
                    ends.set_expiry(self.client.grant.expires());
                    let reference = raw_reference(reference);
                    let ack = ServerFrame::Ack {
                        reference: reference.as_deref(),
                        cursor: None,
                    };
                    io.send_text(ack.encode(), ends).await
                }
                Err(error) => send_error(io, &error, reference, ends).await,
            },
            ClientFrame::Ping => {
                let reference = raw_reference(reference);
                io.send_text(
                    ServerFrame::Pong {
                        reference: reference.as_deref(),
                    }
                    .encode(),
                    ends,
                )
                .await
            }
        }
    }

    fn binary_refused(&self) -> Bytes {
        error_frame(
            &ClientError::new(
                ErrorCode::BadFrame,
                "binary frames are not supported; send JSON text frames",
            ),
            None,
        )
    }
}

impl Native {
    /// Replaces the connection's grant with a fresh token's, which must allow every channel the
    /// connection is subscribed to; on any error the old grant stays.
    fn reauthorize(&mut self, token: &str) -> Result<(), ClientError> {
        let grant = self.services.admission.reauthorize(token)?;
        for channel in self.session.channels() {
            grant.check(Action::Subscribe, channel)?;
        }
        self.control.update(&grant);
        self.client.grant = grant;
        Ok(())
    }

    /// Checks the channel against the grant, then this connection's and its address's rates.
    fn may_publish(&mut self, channel: &Channel) -> Result<(), ClientError> {
        self.client.grant.check(Action::Publish, channel)?;
        self.services.limits.publish_on(&mut self.publishes)?;
        self.services.limits.publish_from(self.client.address)
    }

    /// Subscribes (replaying after `since`, or the channels' last `history` messages), sends the
    /// replay and then `subscribed` with the connection's cursor; live messages queued meanwhile
    /// follow.
    async fn subscribe(
        &mut self,
        io: &mut WsIo,
        channels: Vec<Channel>,
        start: Start,
        reference: Option<&str>,
        ends: &Ends,
    ) -> Result<(), End> {
        let subscribed: Vec<Channel> = self.session.channels().cloned().collect();
        let allowed = channels
            .iter()
            .try_for_each(|c| self.client.grant.check(Action::Subscribe, c))
            .and_then(|()| {
                self.services.limits.check_subscriptions(
                    subscribed.len(),
                    channels.iter().filter(|c| !subscribed.contains(c)).count(),
                )
            });
        if let Err(error) = allowed {
            return send_error(io, &error, reference, ends).await;
        }
        let durable = &self.services.durable;
        let subscription =
            match replay::subscribe(durable, &mut self.session, &channels, &start).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    return send_error(io, &error, reference, ends).await;
                }
            };
        let cursor = durable.subscription_cursor(&subscription);
        let presence_id = match start.presence {
            true => be_present(
                &self.services,
                &mut self.session,
                &self.client.grant,
                &channels,
            ),
            false => None,
        };
        let batches = replay::batches(
            durable.clone(),
            channels.clone(),
            subscription.replay,
            start.filter.clone(),
        );
        let mut batches = std::pin::pin!(batches);
        while let Some(batch) = batches.next().await {
            match batch {
                Ok(ReplayBatch::Messages { messages, .. }) => {
                    io.write_texts(messages.iter().map(|m| m.websocket_text().clone()), ends)
                        .await?;
                    self.services.stats.delivered(messages.len());
                }
                Ok(ReplayBatch::Reset(reason)) => {
                    self.services.stats.count_resets(reason, 1);
                    let reset = ServerFrame::Reset {
                        reason: reason.as_str(),
                        cursor: None,
                    };
                    io.send_text(reset.encode(), ends).await?;
                }
                Err(error) => {
                    // Live messages after the replay are queued already: continuing would leave
                    // a gap. Tell the client, and let it come back with its last cursor.
                    send_error(io, &error, reference, ends).await?;
                    return Err(End::Close(
                        CloseCode::Again,
                        "replay failed; reconnect with your cursor",
                    ));
                }
            }
        }
        let subscribed = ServerFrame::Subscribed {
            channels: &channels,
            cursor: cursor.as_deref(),
            presence_id: presence_id.as_deref(),
        };
        io.send_text(subscribed.encode(), ends).await
    }
}

/// The error frame: how an error reaches a native WebSocket client.
fn error_frame(error: &ClientError, reference: Option<&str>) -> Bytes {
    let reference = raw_reference(reference);
    ServerFrame::Error {
        code: error.code.as_str(),
        reason: &error.reason,
        reference: reference.as_deref(),
    }
    .encode()
}

async fn send_error(
    io: &mut WsIo,
    error: &ClientError,
    reference: Option<&str>,
    ends: &Ends,
) -> Result<(), End> {
    io.send_text(error_frame(error, reference), ends).await
}
