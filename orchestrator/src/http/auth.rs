//! Who may call the API: static bearer tokens, each with a scope.
//!
//! | scope | may |
//! |---|---|
//! | `read` | `GET /sagas`, `GET /sagas/{id}`, the event streams, `GET /saga-types` |
//! | `start` | the above, and `POST /sagas/{type}`, `POST /orders` |
//! | `operator` | the above, and `POST /sagas/{id}/cancel`, `POST /sagas/{id}/retry`, `/dead-letters` |
//!
//! The probes, `/metrics`, `/asyncapi.json` and `/openapi.json` need no token (probes, scrapers
//! and client generators rarely carry one; they reveal no customer data), nor do the web view's
//! files and `/docs` (the page asks for a token when the API answers 401). Tokens come from
//! `API_TOKENS` (`scope:token,scope:token`) and/or `API_TOKENS_FILE` (one `scope token` per
//! line, `#` comments), so they can live in a secret mount rather than the environment. They are compared in constant time and never logged.
//!
//! `API_AUTH=auto` (the default) turns authentication on when the API listens beyond loopback
//! and refuses to start without tokens then; `cargo run` (127.0.0.1) needs none. `on` and `off`
//! force it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;

/// What a token allows; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Start,
    Operator,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "start" => Some(Scope::Start),
            "operator" => Some(Scope::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Start => "start",
            Scope::Operator => "operator",
        }
    }
}

/// The tokens the API accepts, or none needed.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    Off,
    Tokens(Arc<Vec<(Vec<u8>, Scope)>>),
}

impl std::fmt::Debug for Auth {
    /// Counts, never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Off => write!(f, "Auth::Off"),
            Auth::Tokens(t) => write!(f, "Auth::Tokens({} tokens)", t.len()),
        }
    }
}

impl Auth {
    /// Whether requests must carry a token.
    pub fn is_on(&self) -> bool {
        matches!(self, Auth::Tokens(_))
    }

    /// Parses `scope:token` pairs (as in `API_TOKENS`) and `scope token` lines (as in a file).
    pub fn tokens(entries: &[(String, String)]) -> Result<Auth, String> {
        let mut tokens = Vec::with_capacity(entries.len());
        for (scope, token) in entries {
            // The unknown "scope" is not echoed: written the wrong way round (`token:scope`), it
            // is the token, and the error reaches the logs.
            let scope = Scope::parse(scope.trim()).ok_or_else(|| {
                "an entry has an unknown scope (expected read, start or operator; entries are \
                 scope:token, and the entry is not shown)"
                    .to_string()
            })?;
            let token = token.trim();
            if token.len() < 16 {
                return Err(format!(
                    "a {} token is shorter than 16 characters; use a long random one",
                    scope.as_str()
                ));
            }
            tokens.push((token.as_bytes().to_vec(), scope));
        }
        Ok(Auth::Tokens(Arc::new(tokens)))
    }

    /// The scope of `token`, comparing with every known token in constant time.
    fn scope_of(tokens: &[(Vec<u8>, Scope)], token: &[u8]) -> Option<Scope> {
        let mut found = None;
        for (known, scope) in tokens {
            if bool::from(known.as_slice().ct_eq(token)) {
                found = Some(*scope);
            }
        }
        found
    }
}

/// `API_AUTH`: when authentication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// On when listening beyond loopback.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// `auto` (on unless the API listens on loopback only), `on` or `off`.
    #[arg(long, env = "API_AUTH", value_enum, default_value = "auto")]
    pub api_auth: AuthMode,
    /// Bearer tokens as `scope:token,scope:token` (scopes: read, start, operator).
    #[arg(long, env = "API_TOKENS", hide_env_values = true, default_value = "")]
    pub api_tokens: String,
    /// A file of `scope token` lines (`#` starts a comment).
    #[arg(long, env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The authentication of an API listening on `listen`.
    pub fn auth(&self, listen: SocketAddr) -> Result<Auth, String> {
        let mut entries = Vec::new();
        for pair in self.api_tokens.split(',').filter(|p| !p.trim().is_empty()) {
            let (scope, token) = pair
                .split_once(':')
                .ok_or("API_TOKENS: each entry is scope:token")?;
            entries.push((scope.to_string(), token.to_string()));
        }
        if let Some(path) = &self.api_tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("API_TOKENS_FILE {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                // A comment is a line that starts with `#`, or what follows ` #`: a `#` inside
                // a token is part of it (cutting there accepted a shorter prefix).
                let line = line.trim();
                let line = if line.starts_with('#') {
                    ""
                } else {
                    line.split(" #")
                        .next()
                        .and_then(|l| l.split("\t#").next())
                        .unwrap_or("")
                        .trim()
                };
                if line.is_empty() {
                    continue;
                }
                let (scope, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
                    format!(
                        "API_TOKENS_FILE {} line {}: expected `scope token`",
                        path.display(),
                        n + 1
                    )
                })?;
                entries.push((scope.to_string(), token.to_string()));
            }
        }
        let on = match self.api_auth {
            AuthMode::Off => false,
            AuthMode::On => true,
            AuthMode::Auto => !listen.ip().is_loopback() || !entries.is_empty(),
        };
        if !on {
            return Ok(Auth::Off);
        }
        if entries.is_empty() {
            return Err(format!(
                "API_AUTH: the API listens on {listen}, beyond loopback, and no API_TOKENS or \
                 API_TOKENS_FILE is set; give tokens, or set API_AUTH=off to run it open"
            ));
        }
        Auth::tokens(&entries).map_err(|e| format!("API_TOKENS: {e}"))
    }
}

/// Who may call a route, declared with it (see [`Routes`]): a route cannot be added without
/// saying, so none is open because nobody listed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: the probes, `/metrics` and the message contract, which platforms and scrapers
    /// call without one and which show no customer data.
    Open,
    /// A token of this scope or a larger one.
    Needs(Scope),
}

/// A route as declared: its method, path and who may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub method: Method,
    pub path: String,
    pub access: Access,
}

/// A router whose every route is added with its [`Access`]; the only way routes reach the API.
#[derive(Clone, Default)]
pub struct Routes {
    router: axum::Router<super::AppState>,
    declared: Vec<Declared>,
}

impl Routes {
    pub fn get<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: axum::handler::Handler<T, super::AppState>,
        T: 'static,
    {
        self.add(Method::GET, path, access, axum::routing::get(handler))
    }

    pub fn post<H, T>(self, path: &str, access: Access, handler: H) -> Self
    where
        H: axum::handler::Handler<T, super::AppState>,
        T: 'static,
    {
        self.add(Method::POST, path, access, axum::routing::post(handler))
    }

    fn add(
        mut self,
        method: Method,
        path: &str,
        access: Access,
        route: axum::routing::MethodRouter<super::AppState>,
    ) -> Self {
        let route = match access {
            Access::Open => route,
            Access::Needs(scope) => {
                route.route_layer(axum::middleware::from_fn_with_state(scope, require))
            }
        };
        self.router = self.router.route(path, route);
        self.declared.push(Declared {
            method,
            path: path.to_string(),
            access,
        });
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.declared.extend(other.declared);
        self
    }

    /// `other`'s routes under `prefix` as well.
    pub fn nest(mut self, prefix: &str, other: Routes) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.declared
            .extend(other.declared.into_iter().map(|d| Declared {
                path: format!("{prefix}{}", d.path),
                ..d
            }));
        self
    }

    /// Every route, with who may call it.
    pub fn declared(&self) -> &[Declared] {
        &self.declared
    }

    /// The router, checking each guarded route's token against `auth`.
    pub fn into_router(self, auth: Auth) -> axum::Router<super::AppState> {
        self.router.layer(axum::Extension(auth))
    }
}

/// Checks the bearer token of a request to a route that needs `needed`: 401 without a valid
/// one, 403 when its scope is too small. The tokens come with the request (see
/// [`Routes::into_router`]); without them the route is refused, never opened.
async fn require(State(needed): State<Scope>, req: Request, next: Next) -> Response {
    let tokens = match req.extensions().get::<Auth>() {
        Some(Auth::Off) => return next.run(req).await,
        Some(Auth::Tokens(tokens)) => tokens.clone(),
        None => {
            tracing::error!("a guarded route was served without the API's tokens");
            return ApiError::Unauthorized("a bearer token is required (Authorization: Bearer …)")
                .into_response();
        }
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 7235): `Bearer`, `bearer`, `BEARER`.
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = presented else {
        return ApiError::Unauthorized("a bearer token is required (Authorization: Bearer …)")
            .into_response();
    };
    match Auth::scope_of(&tokens, token.as_bytes()) {
        None => ApiError::Unauthorized("the bearer token is not valid").into_response(),
        Some(scope) if scope < needed => ApiError::Forbidden(format!(
            "this token has the {} scope; this request needs {}",
            scope.as_str(),
            needed.as_str()
        ))
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: AuthMode, tokens: &str) -> AuthArgs {
        AuthArgs {
            api_auth: mode,
            api_tokens: tokens.into(),
            api_tokens_file: None,
        }
    }

    #[test]
    fn off_on_loopback_on_beyond_it_and_refused_without_tokens() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            args(AuthMode::Auto, "").auth(local),
            Ok(Auth::Off)
        ));
        let err = args(AuthMode::Auto, "").auth(any).unwrap_err();
        assert!(
            err.contains("API_TOKENS") && err.contains("0.0.0.0:8080"),
            "{err}"
        );
        assert!(matches!(args(AuthMode::Off, "").auth(any), Ok(Auth::Off)));
        assert!(args(AuthMode::On, "").auth(local).is_err());
        let on = args(
            AuthMode::Auto,
            "read:aaaaaaaaaaaaaaaa,operator:bbbbbbbbbbbbbbbb",
        )
        .auth(any)
        .unwrap();
        let Auth::Tokens(t) = &on else { panic!("off") };
        assert_eq!(Auth::scope_of(t, b"aaaaaaaaaaaaaaaa"), Some(Scope::Read));
        assert_eq!(
            Auth::scope_of(t, b"bbbbbbbbbbbbbbbb"),
            Some(Scope::Operator)
        );
        assert_eq!(Auth::scope_of(t, b"bbbbbbbbbbbbbbb"), None);
        assert!(!format!("{on:?}").contains("aaaa"), "tokens never printed");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        for (bad, why) in [
            ("admin:aaaaaaaaaaaaaaaa", "unknown scope"),
            ("read:short", "shorter than 16"),
            ("aaaaaaaaaaaaaaaa", "scope:token"),
            // The wrong way round: the token is where the scope goes, and must not be printed.
            ("aaaaaaaaaaaaaaaa:read", "unknown scope"),
        ] {
            let err = args(AuthMode::On, bad).auth(any).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("aaaaaaaa"), "{err}");
        }
    }

    #[test]
    fn a_hash_inside_a_token_in_the_file_is_part_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# the operators\noperator abcdefgh#ijklmnopqrst  # rotated in May\nread\tqrstuvwxyz0123456789\n",
        )
        .unwrap();
        let args = AuthArgs {
            api_auth: AuthMode::On,
            api_tokens: String::new(),
            api_tokens_file: Some(file),
        };
        let auth = args.auth("0.0.0.0:8080".parse().unwrap()).unwrap();
        let Auth::Tokens(t) = &auth else {
            panic!("off")
        };
        assert_eq!(
            Auth::scope_of(t, b"abcdefgh#ijklmnopqrst"),
            Some(Scope::Operator)
        );
        assert_eq!(
            Auth::scope_of(t, b"abcdefgh"),
            None,
            "not the prefix before #"
        );
        assert_eq!(
            Auth::scope_of(t, b"qrstuvwxyz0123456789"),
            Some(Scope::Read)
        );
    }

    #[test]
    fn each_route_of_the_api_declares_its_scope() {
        let topics = platform::Topics::load(None).unwrap();
        let registry = crate::saga::SagasSource::BuiltIn
            .load(&topics, platform::Contract::built_in())
            .unwrap();
        let routes = crate::http::routes(&registry);
        let access = |method: Method, path: &str| {
            routes
                .declared()
                .iter()
                .find(|d| d.method == method && d.path == path)
                .map(|d| d.access)
                .unwrap_or_else(|| panic!("{method} {path} is not a route"))
        };
        use Access::*;
        assert_eq!(access(Method::POST, "/orders"), Needs(Scope::Start));
        assert_eq!(access(Method::POST, "/api/orders"), Needs(Scope::Start));
        assert_eq!(access(Method::GET, "/sagas"), Needs(Scope::Read));
        assert_eq!(
            access(Method::GET, "/api/sagas/{saga_id}"),
            Needs(Scope::Read)
        );
        assert_eq!(
            access(Method::POST, "/sagas/{saga_id}"),
            Needs(Scope::Start)
        );
        assert_eq!(
            access(Method::POST, "/sagas/{saga_id}/cancel"),
            Needs(Scope::Operator)
        );
        assert_eq!(access(Method::GET, "/dead-letters"), Needs(Scope::Operator));
        // Open: only what probes, scrapers, participants' tooling and API clients' generators
        // call (the documents show no customer data).
        let open: Vec<&str> = routes
            .declared()
            .iter()
            .filter(|d| d.access == Open)
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(
            open,
            [
                "/health",
                "/livez",
                "/readyz",
                "/metrics",
                "/asyncapi.json",
                "/openapi.json"
            ]
        );
        assert!(Scope::Read < Scope::Start && Scope::Start < Scope::Operator);
    }
}
