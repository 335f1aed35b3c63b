//! The auth token a client sends with every call, as etcd's clients send
//! it (gRPC metadata `token`), and how the client gets one.
//!
//! A client made with credentials ([`crate::ClientConfig::with_credentials`])
//! calls `Authenticate` before its first call and keeps the token; when a
//! member answers a call with "invalid auth token" or "revision of auth
//! store is old" (both mean the request was refused before it took effect:
//! the first before it was proposed, the second when it was applied), the
//! client authenticates again and sends that call once more, as etcd's Go
//! client does. Credentials given while auth is disabled are not used: an
//! Authenticate answered "authentication is not enabled" leaves the client
//! sending no token, as etcd's client ignores that answer. A client made
//! with [`crate::Client::with_token`] sends a
//! token it was given and never authenticates itself (a member acting for
//! its caller, as the lock and election services do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use keel_api::etcdserverpb::auth_client::AuthClient;
use keel_api::etcdserverpb::AuthenticateRequest;
use keel_api::{WireError, TOKEN_METADATA_KEY};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::ClientError;

/// A channel whose every request carries the client's token (if any).
pub type ClientChannel = InterceptedService<Channel, TokenInterceptor>;

/// A user name and password to authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

type Token = MetadataValue<Ascii>;

/// The token one client (and its clones) sends, and how it is renewed.
pub(crate) struct CallerToken {
    credentials: Option<Credentials>,
    current: RwLock<Option<Token>>,
    /// Authenticate answered that auth is disabled: send no token.
    auth_disabled: AtomicBool,
    /// Held while authenticating, so concurrent calls authenticate once.
    renewing: tokio::sync::Mutex<()>,
}

impl CallerToken {
    pub(crate) fn from_credentials(credentials: Option<Credentials>) -> Arc<CallerToken> {
        Arc::new(CallerToken {
            credentials,
            current: RwLock::new(None),
            auth_disabled: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(()),
        })
    }

    /// A fixed token, never renewed.
    pub(crate) fn given(token: &str) -> Result<Arc<CallerToken>, ClientError> {
        let token = Token::try_from(token).map_err(|_| ClientError::InvalidToken)?;
        Ok(Arc::new(CallerToken {
            credentials: None,
            current: RwLock::new(Some(token)),
            auth_disabled: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(()),
        }))
    }

    fn current(&self) -> Option<Token> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, token: Token) {
        match self.current.write() {
            Ok(mut current) => *current = Some(token),
            Err(poisoned) => *poisoned.into_inner() = Some(token),
        }
    }

    /// Authenticates if this client has credentials and no token yet.
    pub(crate) async fn ensure(&self, channel: &Channel) -> Result<(), ClientError> {
        if self.credentials.is_none()
            || self.current().is_some()
            || self.auth_disabled.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        self.renew(channel, None).await
    }

    /// Whether `error` is a refusal that a new token may cure, for a client
    /// that can get one. Both refusals mean the request had no effect.
    pub(crate) fn may_renew_after(&self, error: &ClientError) -> bool {
        self.credentials.is_some()
            && matches!(
                error.wire_error(),
                Some(WireError::InvalidAuthToken | WireError::AuthOldRevision)
            )
    }

    /// Authenticates again unless another call already replaced `refused`
    /// (the token a refused call carried; `None`: there was none).
    pub(crate) async fn renew(&self, channel: &Channel, refused: Option<&Token>) -> Result<(), ClientError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let _one_at_a_time = self.renewing.lock().await;
        let current = self.current();
        if current.is_some() && current.as_ref() != refused {
            return Ok(());
        }
        let answered = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: credentials.user.clone(),
                password: credentials.password.clone(),
            })
            .await;
        let answer = match answered {
            Ok(answer) => answer.into_inner(),
            Err(status) if WireError::from_status(&status) == Some(WireError::AuthNotEnabled) => {
                tracing::debug!(user = %credentials.user, "auth is disabled; sending no token");
                self.auth_disabled.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Err(status) => return Err(status.into()),
        };
        let token = Token::try_from(answer.token.as_str()).map_err(|_| ClientError::InvalidToken)?;
        tracing::debug!(user = %credentials.user, "authenticated");
        self.replace(token);
        Ok(())
    }

    pub(crate) fn sent_token(&self) -> Option<Token> {
        self.current()
    }
}

/// Puts the client's current token into each request's metadata.
#[derive(Clone)]
pub struct TokenInterceptor {
    token: Arc<CallerToken>,
}

impl TokenInterceptor {
    pub(crate) fn new(token: Arc<CallerToken>) -> Self {
        TokenInterceptor { token }
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.token.current() {
            request.metadata_mut().insert(TOKEN_METADATA_KEY, token);
        }
        Ok(request)
    }
}
