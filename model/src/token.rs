//! The text form of Trellis tokens: `trls_<kind>_<payload><checksum>`.
//!
//! The payload is base62 of the organization id (16 bytes) and a secret (20 bytes, 160
//! bits); the checksum (CRC-32 of everything before it, 6 base62 digits) lets clients and
//! secret scanners reject a mistyped or truncated token without a database round trip. The
//! organization id in the clear lets the server look the token up within that tenant's rows
//! only; it is not a secret. Only the SHA-256 of the whole token is stored.

use std::fmt;

use crate::OrgId;

/// What a token may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Personal or automation access to the REST API.
    Pat,
    /// A workload joining a mesh: CSR signing only.
    Join,
    /// A single-use invitation into an organization.
    Invite,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Pat => "trls_pat_",
            TokenKind::Join => "trls_join_",
            TokenKind::Invite => "trls_inv_",
        }
    }
}

/// Bytes of secret randomness in a token.
pub const SECRET_LEN: usize = 20;
const PAYLOAD_LEN: usize = 16 + SECRET_LEN;
/// Base62 digits for 36 bytes: ceil(288 / log2(62)).
const PAYLOAD_DIGITS: usize = 49;
const CHECKSUM_DIGITS: usize = 6;

/// A token's parts; `Display` gives the text form, which is the only secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub org: OrgId,
    secret: [u8; SECRET_LEN],
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Trellis token of the expected kind")]
    WrongKind,
    #[error("the token has the wrong length")]
    Length,
    #[error("the token contains characters outside base62")]
    Alphabet,
    #[error("the token's checksum does not match: it was mistyped or truncated")]
    Checksum,
}

impl Token {
    /// A token for `org` from caller-supplied randomness (model code does no I/O).
    pub fn new(kind: TokenKind, org: OrgId, secret: [u8; SECRET_LEN]) -> Self {
        Token { kind, org, secret }
    }

    /// Parses a token of the given kind.
    pub fn parse(kind: TokenKind, s: &str) -> Result<Self, TokenError> {
        let body = s.strip_prefix(kind.prefix()).ok_or(TokenError::WrongKind)?;
        if body.len() != PAYLOAD_DIGITS + CHECKSUM_DIGITS {
            return Err(TokenError::Length);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::Alphabet);
        }
        let (payload, checksum) = body.split_at(PAYLOAD_DIGITS);
        let expected = checksum_digits(&s[..s.len() - CHECKSUM_DIGITS]);
        if checksum != expected {
            return Err(TokenError::Checksum);
        }
        let bytes: [u8; PAYLOAD_LEN] = base62_decode(payload).ok_or(TokenError::Length)?;
        let mut org = [0u8; 16];
        org.copy_from_slice(&bytes[..16]);
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&bytes[16..]);
        Ok(Token { kind, org: OrgId::from_uuid(uuid::Uuid::from_bytes(org)), secret })
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; PAYLOAD_LEN];
        bytes[..16].copy_from_slice(self.org.as_uuid().as_bytes());
        bytes[16..].copy_from_slice(&self.secret);
        let head = format!("{}{}", self.kind.prefix(), base62_encode(&bytes, PAYLOAD_DIGITS));
        write!(f, "{head}{}", checksum_digits(&head))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("kind", &self.kind).field("org", &self.org).finish_non_exhaustive()
    }
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Big-endian base62 of `bytes`, left-padded with '0' to `digits`.
fn base62_encode(bytes: &[u8], digits: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; digits];
    for slot in out.iter_mut().rev() {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    String::from_utf8(out).expect("ascii")
}

fn base62_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for c in s.bytes() {
        let d = ALPHABET.iter().position(|&a| a == c)? as u32;
        let mut carry = d;
        for b in out.iter_mut().rev() {
            let acc = u32::from(*b) * 62 + carry;
            *b = acc as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out)
}

fn checksum_digits(s: &str) -> String {
    base62_encode(&crc32(s.as_bytes()).to_be_bytes(), CHECKSUM_DIGITS)
}

/// CRC-32 (IEEE), bitwise: tokens are short and rare.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// SHA-256 of a token's text: what is stored and looked up, for every kind of token.
pub fn token_sha256(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_itself() {
        let org = OrgId::new();
        let t = Token::new(TokenKind::Pat, org, [7; SECRET_LEN]);
        let s = t.to_string();
        assert!(s.starts_with("trls_pat_"), "{s}");
        assert_eq!(s.len(), 9 + PAYLOAD_DIGITS + CHECKSUM_DIGITS);
        assert_eq!(Token::parse(TokenKind::Pat, &s), Ok(t.clone()));
        assert_eq!(Token::parse(TokenKind::Join, &s), Err(TokenError::WrongKind));
        // One changed character anywhere is caught by the checksum.
        for i in 9..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(b).unwrap();
            assert!(Token::parse(TokenKind::Pat, &bad).is_err(), "accepted {bad}");
        }
        assert_eq!(Token::parse(TokenKind::Pat, &s[..s.len() - 1]), Err(TokenError::Length));
        assert!(!format!("{t:?}").contains(&s[9..20]));
    }

    #[test]
    fn extreme_payloads_round_trip() {
        for fill in [0u8, 0xff] {
            let org = OrgId::from_uuid(uuid::Uuid::from_bytes([fill; 16]));
            let t = Token::new(TokenKind::Join, org, [fill; SECRET_LEN]);
            assert_eq!(Token::parse(TokenKind::Join, &t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
