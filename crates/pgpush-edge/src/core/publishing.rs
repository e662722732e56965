//! Publishing from clients, whatever the wire: durable events into the events table, ephemeral
//! ones with NOTIFY; every subscriber, this node's included, receives them through PostgreSQL.

use std::sync::Arc;

use pgpush_pg::Publisher;
use pgpush_protocol::{Channel, ErrorCode, MAX_NOTIFY_PAYLOAD_BYTES, PublishMode};
use tracing::Instrument;

use crate::{core::durable::Durable, error::ClientError, ops::telemetry};

/// The node's publishing side.
#[derive(Debug)]
pub(crate) struct Publishing {
    publisher: Publisher,
    durable: Arc<Durable>,
}

impl Publishing {
    pub(crate) fn new(publisher: Publisher, durable: Arc<Durable>) -> Publishing {
        Publishing { publisher, durable }
    }

    /// The publish pool.
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes `payload` on `channel`; returns the cursor of a durable publish (`None` when
    /// the sequencer has not positioned it in time). `idempotency_key` applies to durable
    /// publishes; a durable event carries the trace context of this publish (a child of
    /// `parent` when given), so the fan-out that delivers it links back to the producer.
    pub(crate) async fn publish(
        &self,
        channel: &Channel,
        payload: &str,
        mode: PublishMode,
        idempotency_key: Option<&str>,
        parent: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let span = tracing::debug_span!(
            "publish",
            channel = channel.as_str(),
            mode = ?mode,
            bytes = payload.len()
        );
        telemetry::set_remote_parent(&span, parent);
        let traceparent = telemetry::traceparent(&span).or_else(|| parent.map(str::to_owned));
        self.publish_in(channel, payload, mode, idempotency_key, traceparent)
            .instrument(span)
            .await
    }

    async fn publish_in(
        &self,
        channel: &Channel,
        payload: &str,
        mode: PublishMode,
        idempotency_key: Option<&str>,
        traceparent: Option<String>,
    ) -> Result<Option<String>, ClientError> {
        if payload.contains('\0') {
            return Err(ClientError::new(
                ErrorCode::BadPayload,
                "payload must not contain NUL",
            ));
        }
        match mode {
            PublishMode::Durable => {
                self.durable
                    .publish(channel, payload, traceparent.as_deref(), idempotency_key)
                    .await
            }
            PublishMode::Ephemeral => {
                if payload.len() > MAX_NOTIFY_PAYLOAD_BYTES {
                    return Err(ClientError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "ephemeral payload is {} bytes; NOTIFY carries at most {MAX_NOTIFY_PAYLOAD_BYTES}",
                            payload.len()
                        ),
                    ));
                }
                self.publisher
                    .notify(channel.as_str(), payload)
                    .await
                    .map_err(ClientError::database)?;
                Ok(None)
            }
        }
    }
}
