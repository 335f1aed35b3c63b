//! etcd's JWT tokens (`--auth-token jwt,pub-key=FILE,priv-key=FILE,
//! sign-method=ES256,ttl=5m`): a token is a signed claim of a user name and
//! the auth revision it was issued at, with an expiry. Any member holding
//! the public key verifies it with no shared state, so a JWT outlives a
//! member's restart (a simple token does not).
//!
//! Invariant: a token issued before the auth store last changed is refused
//! ("revision of auth store is old", as etcd refuses it), so no token
//! outlives a change to its user's rights; the client authenticates again.
//! A member given only the public key verifies tokens but cannot issue
//! them ("etcdserver: ..."), as in etcd.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default `ttl` for JWT tokens.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("--auth-token jwt: unknown option {0:?} (known: pub-key, priv-key, sign-method, ttl)")]
    UnknownOption(String),
    #[error("--auth-token jwt: {0} is required")]
    MissingOption(&'static str),
    #[error("--auth-token jwt: sign-method {0:?} is not served (RS256/384/512, PS256/384/512, ES256/384)")]
    UnknownSignMethod(String),
    #[error("--auth-token jwt: ttl {0:?}: {1}")]
    BadTtl(String, String),
    #[error("--auth-token jwt: reading {path}: {source}")]
    ReadKey { path: PathBuf, source: std::io::Error },
    #[error("--auth-token jwt: the key in {path} does not suit {method}: {source}")]
    Key {
        path: PathBuf,
        method: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("signing a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("this member has no private key (priv-key) to issue tokens with")]
    CannotIssue,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub user: String,
    /// The auth revision the token was issued at.
    pub revision: u64,
}

/// etcd's claim names.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The keys and settings of `--auth-token jwt,...`.
pub struct JwtTokens {
    algorithm: Algorithm,
    issuing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("issues", &self.issuing.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::ReadKey {
        path: path.to_path_buf(),
        source,
    })
}

impl JwtTokens {
    /// From the options after `jwt,` (`pub-key=...,priv-key=...,
    /// sign-method=...,ttl=...`); `parse_ttl` reads a Go duration.
    pub fn from_options(
        options: &str,
        parse_ttl: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<JwtTokens, JwtError> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_JWT_TTL);
        for option in options.split(',').filter(|option| !option.is_empty()) {
            match option.split_once('=') {
                Some(("pub-key", path)) => public = Some(PathBuf::from(path)),
                Some(("priv-key", path)) => private = Some(PathBuf::from(path)),
                Some(("sign-method", name)) => method = Some(name.to_string()),
                Some(("ttl", text)) => {
                    ttl = parse_ttl(text).map_err(|reason| JwtError::BadTtl(text.to_string(), reason))?
                }
                _ => return Err(JwtError::UnknownOption(option.to_string())),
            }
        }
        let method = method.ok_or(JwtError::MissingOption("sign-method"))?;
        let public = public.ok_or(JwtError::MissingOption("pub-key"))?;
        JwtTokens::new(&method, &public, private.as_deref(), ttl)
    }

    /// Tokens signed with `sign_method`, verified with the PEM public key
    /// in `public_key`, issued with the PEM private key in `private_key`
    /// (none: this member verifies only).
    pub fn new(
        sign_method: &str,
        public_key: &Path,
        private_key: Option<&Path>,
        ttl: Duration,
    ) -> Result<JwtTokens, JwtError> {
        use Algorithm::*;
        let algorithm = match sign_method {
            "RS256" => RS256,
            "RS384" => RS384,
            "RS512" => RS512,
            "PS256" => PS256,
            "PS384" => PS384,
            "PS512" => PS512,
            "ES256" => ES256,
            "ES384" => ES384,
            other => return Err(JwtError::UnknownSignMethod(other.to_string())),
        };
        let elliptic = matches!(algorithm, ES256 | ES384);
        let key_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JwtError::Key {
                path,
                method: sign_method.to_string(),
                source,
            }
        };
        let public_pem = read_key(public_key)?;
        let verifying = if elliptic {
            DecodingKey::from_ec_pem(&public_pem)
        } else {
            DecodingKey::from_rsa_pem(&public_pem)
        }
        .map_err(key_error(public_key))?;
        let issuing = match private_key {
            None => None,
            Some(path) => {
                let pem = read_key(path)?;
                Some(
                    if elliptic {
                        EncodingKey::from_ec_pem(&pem)
                    } else {
                        EncodingKey::from_rsa_pem(&pem)
                    }
                    .map_err(key_error(path))?,
                )
            }
        };
        Ok(JwtTokens {
            algorithm,
            issuing,
            verifying,
            ttl,
        })
    }

    /// A token for `user`, issued at auth revision `revision`.
    pub fn issue(&self, user: &str, revision: u64) -> Result<String, JwtError> {
        let key = self.issuing.as_ref().ok_or(JwtError::CannotIssue)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: (now + self.ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(JwtError::Sign)
    }

    /// What `token` claims, if its signature is good and it has not
    /// expired (with no leeway).
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation)
            .ok()?
            .claims;
        Some(TokenClaims {
            user: claims.username,
            revision: claims.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path) -> (PathBuf, PathBuf) {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let (public, private) = (dir.join("jwt.pub"), dir.join("jwt.key"));
        std::fs::write(&public, pair.public_key_pem()).expect("write");
        std::fs::write(&private, pair.serialize_pem()).expect("write");
        (public, private)
    }

    fn no_durations(text: &str) -> Result<Duration, String> {
        Err(format!("not parsed: {text}"))
    }

    #[test]
    fn a_token_names_its_user_and_revision_and_only_its_signer_is_believed() {
        let dir = tempfile_dir();
        let (public, private) = keys(dir.path());
        let options = format!(
            "pub-key={},priv-key={},sign-method=ES256",
            public.display(),
            private.display()
        );
        let tokens = JwtTokens::from_options(&options, no_durations).expect("options");
        let token = tokens.issue("alice", 7).expect("issue");
        assert_eq!(token.split('.').count(), 3, "{token}");
        assert_eq!(
            tokens.verify(&token),
            Some(TokenClaims {
                user: "alice".into(),
                revision: 7
            })
        );
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert_eq!(tokens.verify(&tampered), None);

        let (other_public, other_private) = keys(&dir.path().join("other"));
        let other = JwtTokens::new("ES256", &other_public, Some(&other_private), DEFAULT_JWT_TTL)
            .expect("other keys");
        assert_eq!(other.verify(&token), None, "another key's signer");
        let verify_only = JwtTokens::new("ES256", &public, None, DEFAULT_JWT_TTL).expect("public only");
        assert!(verify_only.verify(&token).is_some());
        assert!(matches!(
            verify_only.issue("alice", 1),
            Err(JwtError::CannotIssue)
        ));
    }

    #[test]
    fn an_expired_token_and_bad_options_are_refused() {
        let dir = tempfile_dir();
        let (public, private) = keys(dir.path());
        let tokens = JwtTokens::new("ES256", &public, Some(&private), Duration::ZERO).expect("keys");
        let token = tokens.issue("alice", 1).expect("issue");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(tokens.verify(&token), None, "expired");
        for bad in [
            "pub-key=x,sign-method=ES256,color=blue",
            "priv-key=x,sign-method=ES256",
            "pub-key=x",
            "pub-key=x,sign-method=HS999",
        ] {
            assert!(JwtTokens::from_options(bad, no_durations).is_err(), "{bad}");
        }
        assert!(matches!(
            JwtTokens::new("RS256", &public, None, DEFAULT_JWT_TTL),
            Err(JwtError::Key { .. })
        ));
    }

    fn tempfile_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("other")).expect("temp dir");
        dir
    }
}
