//! Password hashing with bcrypt, as etcd stores passwords. Hashing is slow
//! on purpose: the member that takes a request hashes BEFORE proposing, and
//! verifies on Authenticate before proposing; applying never hashes.

use crate::AuthError;

/// etcd's default bcrypt cost (`--bcrypt-cost`).
pub const DEFAULT_COST: u32 = bcrypt::DEFAULT_COST;

/// The bcrypt hash of `password` at `cost`.
pub fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    bcrypt::hash(password, cost).map_err(|_| AuthError::BadPasswordHash)
}

/// True when `password` matches the bcrypt `hash`; a malformed hash never
/// matches.
pub fn verify(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Checks that a client-supplied hash (etcd 3.5's `hashedPassword`) is a
/// bcrypt hash keel can verify against later.
pub fn check_hash(hash: &str) -> Result<(), AuthError> {
    hash.parse::<bcrypt::HashParts>()
        .map(|_| ())
        .map_err(|_| AuthError::BadPasswordHash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hashed = hash("s3cret", 4).unwrap();
        assert!(hashed.starts_with("$2"), "a bcrypt hash: {hashed}");
        assert!(verify("s3cret", &hashed));
        assert!(!verify("S3cret", &hashed));
        assert!(!verify("s3cret", "not a hash"));
        assert!(check_hash(&hashed).is_ok());
        assert_eq!(check_hash("plain"), Err(AuthError::BadPasswordHash));
    }
}
