//! Revoked tokens (`pgpush.revoke_token`): refused on this node until the moment given.

use std::{collections::HashMap, sync::RwLock, time::SystemTime};

/// The revoked `jti`s and until when each is refused.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    until: RwLock<HashMap<String, SystemTime>>,
}

impl Revocations {
    /// Whether the token `jti` is refused now.
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.read()
            .get(jti)
            .is_some_and(|until| *until > SystemTime::now())
    }

    /// Refuses `jti` until `until` (a later revocation of the same token extends it), and
    /// forgets revocations that ran out.
    pub(crate) fn revoke(&self, jti: &str, until: SystemTime) {
        let mut map = self.until.write().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        map.retain(|_, at| *at > now);
        let at = map.entry(jti.to_owned()).or_insert(until);
        *at = (*at).max(until);
    }

    /// Adds the stored revocations (read after the LISTEN connection came up, so none is missed).
    pub(crate) fn load(&self, stored: Vec<(String, SystemTime)>) {
        for (jti, until) in stored {
            self.revoke(&jti, until);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SystemTime>> {
        self.until.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refused_until_the_moment_and_extended_never_shortened() {
        let revocations = Revocations::default();
        let now = SystemTime::now();
        revocations.revoke("a", now + Duration::from_secs(60));
        revocations.revoke("a", now + Duration::from_secs(1));
        revocations.load(vec![("b".into(), now - Duration::from_secs(1))]);
        assert!(revocations.is_revoked("a"));
        assert!(!revocations.is_revoked("b"), "ran out");
        assert!(!revocations.is_revoked("c"));
        assert_eq!(revocations.read()["a"], now + Duration::from_secs(60));
    }
}
