//! etcd's simple tokens: opaque strings that name a user, kept in memory by
//! every member (lost on restart, as etcd's are). A token is assigned when
//! a replicated Authenticate is applied, so every member knows it; it
//! expires after its TTL without use, and each use restarts the TTL. A
//! user's tokens die when the user is deleted or changes its password, and
//! all tokens die when auth is disabled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

struct Assigned {
    user: String,
    expires: Instant,
}

pub struct TokenTable {
    /// The TTL in milliseconds (set once from `--auth-token-ttl`).
    ttl_millis: AtomicU64,
    tokens: Mutex<HashMap<String, Assigned>>,
}

impl Default for TokenTable {
    fn default() -> Self {
        TokenTable::new(DEFAULT_TTL)
    }
}

/// A fresh token in etcd's simple-token shape: 16 random letters and
/// digits, a dot, and a number that makes it unique.
pub fn new_simple_token(index: u64) -> String {
    format!(
        "{}.{index}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
    )
}

impl TokenTable {
    pub fn new(ttl: Duration) -> TokenTable {
        TokenTable {
            ttl_millis: AtomicU64::new(ttl.as_millis().try_into().unwrap_or(u64::MAX)),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long a token lives without use (`--auth-token-ttl`).
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_millis
            .store(ttl.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_millis.load(Ordering::Relaxed))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Assigned>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn assign(&self, token: &str, user: &str) {
        let expires = Instant::now() + self.ttl();
        let mut table = self.table();
        table.retain(|_, assigned| assigned.expires > Instant::now());
        table.insert(
            token.to_string(),
            Assigned {
                user: user.to_string(),
                expires,
            },
        );
    }

    /// The user a live token names, restarting its TTL; None for an
    /// unknown or expired token.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut table = self.table();
        match table.get_mut(token) {
            Some(assigned) if assigned.expires > now => {
                assigned.expires = now + self.ttl();
                Some(assigned.user.clone())
            }
            Some(_) => {
                table.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn revoke_user(&self, user: &str) {
        self.table().retain(|_, assigned| assigned.user != user);
    }

    pub fn revoke_all(&self) {
        self.table().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user_until_revoked_or_expired() {
        let table = TokenTable::new(Duration::from_secs(60));
        let (a, b) = (new_simple_token(1), new_simple_token(2));
        assert_ne!(a, b);
        table.assign(&a, "alice");
        table.assign(&b, "bob");
        assert_eq!(table.user_of(&a).as_deref(), Some("alice"));
        table.revoke_user("alice");
        assert_eq!(table.user_of(&a), None);
        assert_eq!(table.user_of(&b).as_deref(), Some("bob"));
        table.revoke_all();
        assert_eq!(table.user_of(&b), None);

        let short = TokenTable::new(Duration::from_millis(1));
        short.assign("t", "carol");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.user_of("t"), None, "expired");
    }
}
