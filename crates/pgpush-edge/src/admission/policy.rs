//! Which channels a client may touch: the node's allow-lists, its token's claims, and the
//! reserved `pgpush*` names that no client ever reaches.

use std::{sync::Arc, time::SystemTime};

use pgpush_protocol::{Channel, ErrorCode};

use crate::error::ClientError;

/// A channel pattern: an exact name, `prefix*`, or `*` (every channel that is not reserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `*`
    Any,
    /// `prefix*`
    Prefix(String),
    /// A channel name.
    Exact(String),
}

impl Pattern {
    /// Parses one pattern (surrounding spaces ignored); `None` for an empty one.
    pub(crate) fn parse(text: &str) -> Option<Pattern> {
        let text = text.trim();
        match text.strip_suffix('*') {
            _ if text.is_empty() => None,
            Some("") => Some(Pattern::Any),
            Some(prefix) => Some(Pattern::Prefix(prefix.to_owned())),
            None => Some(Pattern::Exact(text.to_owned())),
        }
    }

    /// Parses a list, skipping empty entries.
    pub(crate) fn parse_all<S: AsRef<str>>(texts: &[S]) -> Vec<Pattern> {
        texts
            .iter()
            .filter_map(|t| Pattern::parse(t.as_ref()))
            .collect()
    }

    fn matches(&self, channel: &Channel) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => channel.as_str().starts_with(prefix.as_str()),
            Pattern::Exact(name) => channel.as_str() == name,
        }
    }
}

/// What a client asks to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Receive its messages.
    Subscribe,
    /// Publish to it.
    Publish,
}

/// The node's allow-lists: what any client may touch at all.
#[derive(Debug)]
pub(crate) struct AllowLists {
    pub(crate) subscribe: Vec<Pattern>,
    pub(crate) publish: Vec<Pattern>,
}

/// A token's permissions.
#[derive(Debug, Clone)]
pub(crate) struct TokenGrant {
    /// `sub`: the user, for logs, presence and `pgpush.disconnect`.
    pub(crate) subject: Option<String>,
    /// `jti`, for `pgpush.revoke_token`.
    pub(crate) jti: Option<String>,
    /// `info`, a JSON object shown with the client's presence.
    pub(crate) info: Option<Arc<serde_json::value::RawValue>>,
    pub(crate) subscribe: Vec<Pattern>,
    pub(crate) publish: Vec<Pattern>,
    /// `exp`.
    pub(crate) expires: SystemTime,
}

/// What one client (one request or connection) may do: the node's allow-lists, narrowed by its
/// token when tokens are on.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    lists: Arc<AllowLists>,
    token: Option<Arc<TokenGrant>>,
}

impl Grant {
    pub(crate) fn new(lists: Arc<AllowLists>, token: Option<TokenGrant>) -> Grant {
        Grant {
            lists,
            token: token.map(Arc::new),
        }
    }

    /// When the token runs out (`None` without tokens).
    pub(crate) fn expires(&self) -> Option<SystemTime> {
        self.token.as_ref().map(|t| t.expires)
    }

    /// The token's subject, if any.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.subject.as_deref())
    }

    /// The token's `jti`, if any.
    pub(crate) fn jti(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.jti.as_deref())
    }

    /// The token's `info` object, if any.
    pub(crate) fn info(&self) -> Option<&Arc<serde_json::value::RawValue>> {
        self.token.as_ref().and_then(|t| t.info.as_ref())
    }

    /// `forbidden` unless this client may do `action` on `channel`.
    pub(crate) fn check(&self, action: Action, channel: &Channel) -> Result<(), ClientError> {
        check_client_access(channel)?;
        let (lists, claims) = match action {
            Action::Subscribe => (
                &self.lists.subscribe,
                self.token.as_ref().map(|t| &t.subscribe),
            ),
            Action::Publish => (&self.lists.publish, self.token.as_ref().map(|t| &t.publish)),
        };
        let verb = match action {
            Action::Subscribe => "subscribe to",
            Action::Publish => "publish to",
        };
        if !lists.iter().any(|p| p.matches(channel)) {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!(
                    "clients may not {verb} {:?} on this server",
                    channel.as_str()
                ),
            ));
        }
        if let Some(claims) = claims
            && !claims.iter().any(|p| p.matches(channel))
        {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!(
                    "the token does not allow you to {verb} {:?}",
                    channel.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Validates a channel name from a client and checks `action` on it.
    pub(crate) fn channel(&self, action: Action, name: &str) -> Result<Channel, ClientError> {
        let channel = Channel::new(name).map_err(|error| {
            ClientError::new(ErrorCode::BadChannel, format!("{name:?}: {error}"))
        })?;
        self.check(action, &channel)?;
        Ok(channel)
    }
}

/// Refuses reserved channels: they carry pgpush's own signals and are never reachable from
/// clients, in any letter case.
fn check_client_access(channel: &Channel) -> Result<(), ClientError> {
    if channel.is_reserved() {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            format!(
                "{:?}: channels starting with \"pgpush\" are reserved",
                channel.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subscribe: &[&str], token: Option<&[&str]>) -> Grant {
        let lists = Arc::new(AllowLists {
            subscribe: Pattern::parse_all(subscribe),
            publish: Pattern::parse_all(&["*"]),
        });
        let token = token.map(|patterns| TokenGrant {
            subject: None,
            jti: None,
            info: None,
            subscribe: Pattern::parse_all(patterns),
            publish: Vec::new(),
            expires: SystemTime::now(),
        });
        Grant::new(lists, token)
    }

    #[test]
    fn patterns_match_exact_prefix_and_any_but_never_reserved() {
        let open = grant(&["*"], None);
        assert!(open.channel(Action::Subscribe, "chat").is_ok());
        for reserved in ["pgpush_wake", "PGPUSH_wake", "PgPush", "pgpush"] {
            let error = open.channel(Action::Subscribe, reserved).unwrap_err();
            assert_eq!(error.code, ErrorCode::Forbidden, "{reserved}");
        }
        let listed = grant(&["chat", "room.*"], None);
        assert!(listed.channel(Action::Subscribe, "chat").is_ok());
        assert!(listed.channel(Action::Subscribe, "room.7").is_ok());
        assert!(listed.channel(Action::Subscribe, "chat2").is_err());
        assert!(listed.channel(Action::Subscribe, "Chat").is_err());
        assert!(listed.channel(Action::Subscribe, "room").is_err());
        assert_eq!(Pattern::parse(" "), None);
        assert_eq!(
            Pattern::parse("pgpush*"),
            Some(Pattern::Prefix("pgpush".into()))
        );
        assert!(
            grant(&["pgpush*"], None)
                .channel(Action::Subscribe, "pgpush_x")
                .is_err()
        );
    }

    #[test]
    fn a_token_narrows_the_node_lists() {
        let token = grant(&["*"], Some(&["chat"]));
        assert!(token.channel(Action::Subscribe, "chat").is_ok());
        assert_eq!(
            token
                .channel(Action::Subscribe, "person_updated")
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        // Nothing to publish in the token: nothing may be published.
        assert!(token.channel(Action::Publish, "chat").is_err());
        // A bad name is a bad name before it is a permission question.
        assert_eq!(
            token
                .channel(Action::Subscribe, &"x".repeat(64))
                .unwrap_err()
                .code,
            ErrorCode::BadChannel
        );
    }
}
