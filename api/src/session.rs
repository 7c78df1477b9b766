//! Console sessions: the cookies, their secrets, and the CSRF rule.
//!
//! The session cookie holds 256 random bits; the database holds only their SHA-256. The
//! CSRF token is HMAC-SHA256 of a fixed label keyed with the session secret: each session
//! has its own, nothing about it is stored, and it cannot be computed without the cookie,
//! which another origin can neither read nor (thanks to the `__Host-` prefix) set.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::error::ApiError;

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-trellis_session";
/// The short-lived cookie that ties an IdP callback to the browser that started the login.
pub const LOGIN_COOKIE: &str = "__Host-trellis_login";
/// The header that must carry the CSRF token on every cookie-authenticated write.
pub static CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");

const CSRF_LABEL: &[u8] = b"trellis csrf token v1";

pub use trellis_control::random_secret;

/// The CSRF token of the session whose cookie holds `secret`.
pub fn csrf_token(secret: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, CSRF_LABEL).as_ref())
}

/// Whether `presented` is the CSRF token of the session whose cookie holds `secret`, compared
/// in constant time.
pub fn csrf_matches(secret: &str, presented: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(presented) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, CSRF_LABEL, &tag).is_ok()
}

/// The value of the cookie `name`, if the request carries exactly one well-formed one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    // Two cookies of one name: someone is playing games; trust neither.
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found.filter(|v| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The session secret from the request's cookie.
pub fn session_secret(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// A `Set-Cookie` value with the flags every Trellis cookie carries.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}"
    ))
    .expect("cookie values are URL-safe base64")
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

/// Refuses cookie-authenticated writes that do not carry the session's CSRF token, before
/// any handler runs. Requests with an Authorization header are not cookie-authenticated
/// (the cookie is ignored for them), and a browser never adds that header across origins.
pub async fn csrf_guard(req: Request, next: Next) -> Result<Response, ApiError> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let headers = req.headers();
    if !safe
        && !headers.contains_key(header::AUTHORIZATION)
        && let Some(secret) = session_secret(headers)
    {
        let presented = headers.get(&CSRF_HEADER).and_then(|v| v.to_str().ok());
        match presented {
            None => {
                return Err(ApiError::forbidden(
                    "a write with the session cookie needs the session's CSRF token in the x-csrf-token header \
                     (GET /api/v1/me shows it)",
                ));
            }
            Some(p) if !csrf_matches(secret, p) => {
                return Err(ApiError::forbidden("the x-csrf-token header does not match this session"));
            }
            Some(_) => {}
        }
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(csrf_matches(&a, &csrf_token(&a)));
        assert!(!csrf_matches(&b, &csrf_token(&a)));
        assert!(!csrf_matches(&a, "not base64 !"));
        assert!(!csrf_matches(&a, ""));
        assert_ne!(csrf_token(&a), a);
    }

    #[test]
    fn cookies_parse_strictly() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; __Host-trellis_session=abc_DEF-1"));
        assert_eq!(session_secret(&h), Some("abc_DEF-1"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-trellis_session=other"));
        assert_eq!(session_secret(&h), None, "two cookies of one name are refused");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("__Host-trellis_session=a%20b"));
        assert_eq!(session_secret(&h), None);
        let v = set_cookie(SESSION_COOKIE, "x", 60);
        assert_eq!(v, "__Host-trellis_session=x; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60");
    }
}
