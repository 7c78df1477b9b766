//! OpenID Connect relying party: discovery, the authorization request (code flow with
//! PKCE S256, state and nonce) and the code exchange with full ID-token validation.
//!
//! `openidconnect` checks the signature against the provider's JWKS (a `kid` it does not
//! know fails), the algorithm against our allow-list (asymmetric only, so never `none` and
//! never an HMAC keyed with the client secret), `iss`, `aud` (only our client id), `exp`
//! and the nonce; we add `azp` (which it leaves to callers) and `at_hash` when present.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenClaims, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    Scope, SignatureVerificationError, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// How a misconfiguration is reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    #[error("TRELLIS_OIDC_ISSUER {0:?} is not a URL")]
    BadIssuer(String),
    #[error(
        "TRELLIS_OIDC_ISSUER must be https (got {0}); plain http is allowed only for a loopback issuer \
         with TRELLIS_OIDC_ALLOW_INSECURE_LOOPBACK=true, for development"
    )]
    Insecure(String),
    #[error("TRELLIS_OIDC_CLIENT_ID is required with TRELLIS_OIDC_ISSUER")]
    NoClientId,
    #[error("TRELLIS_PUBLIC_URL {0:?} must be an http(s) URL without query or fragment")]
    BadPublicUrl(String),
    #[error("building the HTTP client for the OpenID provider: {0}")]
    Client(String),
}

/// Why a login failed, in words for the log; the browser gets a generic problem.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("OpenID discovery failed: {0}")]
    Discovery(String),
    #[error("the token endpoint refused the code: {0}")]
    Exchange(String),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("the ID token is invalid: {0}")]
    IdToken(String),
}

/// The operator's OpenID Connect settings.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: IssuerUrl,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub scopes: Vec<String>,
    allow_http: bool,
}

impl OidcSettings {
    /// Checks the issuer: https, or http on a loopback address when the operator allowed it
    /// explicitly (development against a local IdP).
    pub fn new(
        issuer: &str,
        client_id: Option<String>,
        client_secret: Option<SecretString>,
        scopes: Vec<String>,
        allow_insecure_loopback: bool,
    ) -> Result<Self, OidcConfigError> {
        let url = Url::parse(issuer).map_err(|_| OidcConfigError::BadIssuer(issuer.to_owned()))?;
        let allow_http = match url.scheme() {
            "https" => false,
            "http" if allow_insecure_loopback && is_loopback(&url) => true,
            "http" => return Err(OidcConfigError::Insecure(issuer.to_owned())),
            _ => return Err(OidcConfigError::BadIssuer(issuer.to_owned())),
        };
        let client_id = client_id.filter(|c| !c.is_empty()).ok_or(OidcConfigError::NoClientId)?;
        // The issuer is compared byte for byte with the discovery document and `iss`; keep
        // it exactly as configured.
        let issuer =
            IssuerUrl::new(issuer.to_owned()).map_err(|_| OidcConfigError::BadIssuer(issuer.to_owned()))?;
        Ok(OidcSettings { issuer, client_id, client_secret, scopes, allow_http })
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// What the login route sends the browser to, and what the callback needs to finish.
pub struct AuthorizationRequest {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The verified identity from an ID token.
pub use trellis_control::Identity;

/// How long provider metadata (and its JWKS) is reused before discovery runs again (sooner
/// when an ID token names a key it does not have).
const METADATA_TTL: Duration = Duration::from_secs(300);

/// A relying party for one provider.
pub struct OidcProvider {
    settings: OidcSettings,
    redirect: RedirectUrl,
    http: reqwest::Client,
    metadata: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl OidcProvider {
    /// A provider that redirects back to `<public_url>/auth/callback`.
    pub fn new(settings: OidcSettings, public_url: &Url) -> Result<Self, OidcConfigError> {
        let redirect =
            RedirectUrl::new(format!("{}/auth/callback", public_url.as_str().trim_end_matches('/')))
                .map_err(|_| OidcConfigError::BadPublicUrl(public_url.to_string()))?;
        let http = reqwest::Client::builder()
            // A redirect from the IdP's endpoints is never followed: that would let whoever
            // controls a response steer our server's requests (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.allow_http)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcConfigError::Client(e.to_string()))?;
        Ok(OidcProvider { settings, redirect, http, metadata: Mutex::new(None) })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        self.settings.issuer.as_str()
    }

    async fn metadata(&self) -> Result<CoreProviderMetadata, LoginError> {
        if let Some((at, m)) = self.metadata.lock().expect("metadata lock").as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let m = CoreProviderMetadata::discover_async(self.settings.issuer.clone(), &self.http)
            .await
            .map_err(|e| LoginError::Discovery(chain(&e)))?;
        *self.metadata.lock().expect("metadata lock") = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    fn client(&self, metadata: CoreProviderMetadata) -> ConfiguredClient {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings.client_secret.as_ref().map(|s| ClientSecret::new(s.expose_secret().to_owned())),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// Builds the authorization request with fresh state, nonce and PKCE verifier.
    pub async fn authorization_request(&self) -> Result<AuthorizationRequest, LoginError> {
        let client = self.client(self.metadata().await?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.settings.scopes {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok(AuthorizationRequest {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code (with the PKCE verifier) and validates the ID token.
    pub async fn finish(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<Identity, LoginError> {
        let client = self.client(self.metadata().await?);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| LoginError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Exchange(chain(&e)))?;
        let id_token = response.id_token().ok_or(LoginError::NoIdToken)?;
        let expected_nonce = Nonce::new(nonce.to_owned());
        match self.verify(&client, id_token, response.access_token(), &expected_nonce) {
            // The provider may have rotated its keys since we cached its JWKS: fetch it
            // again, once, and check the same token against the fresh set.
            Err(VerifyError::UnknownKey) => {
                *self.metadata.lock().expect("metadata lock") = None;
                let fresh = self.client(self.metadata().await?);
                self.verify(&fresh, id_token, response.access_token(), &expected_nonce)
                    .map_err(VerifyError::into_login_error)
            }
            other => other.map_err(VerifyError::into_login_error),
        }
    }

    fn verify(
        &self,
        client: &ConfiguredClient,
        id_token: &CoreIdToken,
        access_token: &AccessToken,
        nonce: &Nonce,
    ) -> Result<Identity, VerifyError> {
        let verifier = client.id_token_verifier().set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            CoreJwsSigningAlgorithm::RsaSsaPssSha384,
            CoreJwsSigningAlgorithm::RsaSsaPssSha512,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            CoreJwsSigningAlgorithm::EdDsa,
        ]);
        let claims: &CoreIdTokenClaims = id_token.claims(&verifier, nonce).map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
                VerifyError::UnknownKey
            }
            other => VerifyError::Invalid(chain(&other)),
        })?;
        let invalid = |m: String| VerifyError::Invalid(m);
        // azp: required with several audiences, and when present it must be us.
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != self.settings.client_id => {
                return Err(invalid(format!("azp {:?} is not this client", azp.as_str())));
            }
            None if claims.audiences().len() > 1 => {
                return Err(invalid("several audiences and no azp".into()));
            }
            _ => {}
        }
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| invalid(e.to_string()))?;
            let key = id_token.signing_key(&verifier).map_err(|e| invalid(e.to_string()))?;
            let actual =
                AccessTokenHash::from_token(access_token, alg, key).map_err(|e| invalid(e.to_string()))?;
            if actual != *expected {
                return Err(invalid("at_hash does not match the access token".into()));
            }
        }
        let email = claims
            .email()
            // An address the IdP says it has not verified is no basis for matching invitations.
            .filter(|_| claims.email_verified() != Some(false))
            .map(|e| e.as_str().to_owned())
            .filter(|e| e.len() <= 320);
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().chars().filter(|c| !c.is_control()).take(200).collect::<String>());
        Ok(Identity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email,
            name,
        })
    }
}

/// A client built from discovered metadata, with our redirect URI.
type ConfiguredClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

enum VerifyError {
    /// Signed with a key the cached JWKS does not have.
    UnknownKey,
    Invalid(String),
}

impl VerifyError {
    fn into_login_error(self) -> LoginError {
        match self {
            VerifyError::UnknownKey => {
                LoginError::IdToken("Signature verification failed: No matching key found".into())
            }
            VerifyError::Invalid(m) => LoginError::IdToken(m),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(issuer: &str, loopback: bool) -> Result<OidcSettings, OidcConfigError> {
        OidcSettings::new(issuer, Some("trellis".into()), None, vec!["openid".into()], loopback)
    }

    #[test]
    fn issuers_must_be_https_except_an_allowed_loopback() {
        assert!(settings("https://idp.example.com", false).is_ok());
        assert!(matches!(settings("http://idp.example.com", false), Err(OidcConfigError::Insecure(_))));
        assert!(matches!(settings("http://idp.example.com", true), Err(OidcConfigError::Insecure(_))));
        assert!(matches!(settings("http://127.0.0.1:9000", false), Err(OidcConfigError::Insecure(_))));
        assert!(settings("http://127.0.0.1:9000", true).is_ok());
        assert!(settings("http://[::1]:9000", true).is_ok());
        assert!(settings("http://localhost:9000", true).is_ok());
        assert!(matches!(settings("ftp://idp", true), Err(OidcConfigError::BadIssuer(_))));
        assert!(matches!(
            OidcSettings::new("https://idp.example.com", None, None, vec![], false),
            Err(OidcConfigError::NoClientId)
        ));
    }
}
