//! Which channels web clients may touch: everything but the reserved `pgpush*` names.

use pgpush_protocol::{Channel, ErrorCode};

use crate::http::ApiError;

/// Validates a channel name from a client and checks that clients may use it.
pub(crate) fn client_channel(name: &str) -> Result<Channel, ApiError> {
    let channel = Channel::new(name)
        .map_err(|error| ApiError::new(ErrorCode::BadChannel, format!("{name:?}: {error}")))?;
    check_client_access(&channel)?;
    Ok(channel)
}

/// Refuses reserved channels: they carry pgpush's own signals and are never reachable from clients.
pub(crate) fn check_client_access(channel: &Channel) -> Result<(), ApiError> {
    if channel.is_reserved() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "{:?}: channels starting with \"pgpush\" are reserved",
                channel.as_str()
            ),
        ));
    }
    Ok(())
}
