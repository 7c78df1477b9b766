//! Time: conversions between the clock the caller passes in and certificate times, and the
//! expiry guardrails. Nothing here reads the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::cert::{self, CertError};

/// How far NotBefore is set back from `now`, so that a peer whose clock runs a little behind
/// still accepts a fresh certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const DAY: i64 = 24 * 60 * 60;

/// Unix seconds of `t` (negative before 1970), truncated to the second as X.509 times are.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The `SystemTime` of Unix seconds `secs`.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Unix seconds as the `time` crate's type, which rcgen takes.
pub(crate) fn to_offset(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `now` as webpki wants it.
pub(crate) fn unix_time(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(unix_secs(now).max(0).unsigned_abs()))
}

/// Whole days from `now` until the certificate's NotAfter; negative once it has expired.
pub fn days_until_expiry(cert: &CertificateDer<'_>, now: SystemTime) -> Result<i64, CertError> {
    let c = cert::parse(cert)?;
    let (_, not_after) = cert::validity_secs(&c);
    Ok(days_between(unix_secs(now), not_after))
}

pub(crate) fn days_between(now: i64, not_after: i64) -> i64 {
    (not_after - now).div_euclid(DAY)
}

/// Why a CA was refused by the expiry guardrail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error("the certificate is not valid yet (valid from {not_before_unix} Unix time)")]
    NotYetValid { not_before_unix: i64 },
    #[error("the certificate has expired ({days_ago} whole day(s) ago)")]
    Expired { days_ago: i64 },
    #[error("the certificate expires in {left} day(s); at least {min} are required")]
    TooFewDays { left: i64, min: u32 },
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Refuses a CA certificate that is not valid at `now` (give or take [`CLOCK_SKEW`] for its
/// start) or has fewer than `min_days` left.
pub fn ensure_min_days(cert: &CertificateDer<'_>, now: SystemTime, min_days: u32) -> Result<(), ExpiryError> {
    let c = cert::parse(cert)?;
    let (not_before, not_after) = cert::validity_secs(&c);
    check_window(not_before, not_after, unix_secs(now), min_days, skew_secs())
}

/// [`CLOCK_SKEW`] in seconds.
pub(crate) fn skew_secs() -> i64 {
    i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(0)
}

/// The validity checks; `skew` tolerates a certificate that starts a little after `now`
/// (its signer's clock ran ahead of ours).
pub(crate) fn check_window(
    not_before: i64,
    not_after: i64,
    now: i64,
    min_days: u32,
    skew: i64,
) -> Result<(), ExpiryError> {
    if now + skew < not_before {
        return Err(ExpiryError::NotYetValid { not_before_unix: not_before });
    }
    let left = days_between(now, not_after);
    if now > not_after {
        return Err(ExpiryError::Expired { days_ago: (now - not_after).div_euclid(DAY) });
    }
    if left < i64::from(min_days) {
        return Err(ExpiryError::TooFewDays { left, min: min_days });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_down_and_go_negative() {
        assert_eq!(days_between(0, DAY), 1);
        assert_eq!(days_between(0, DAY - 1), 0);
        assert_eq!(days_between(0, -1), -1);
        assert_eq!(days_between(0, -DAY - 1), -2);
    }

    #[test]
    fn window_checks() {
        let now = 1_000 * DAY;
        assert_eq!(check_window(now - DAY, now + 40 * DAY, now, 30, 0), Ok(()));
        assert_eq!(
            check_window(now - DAY, now + 10 * DAY, now, 30, 0),
            Err(ExpiryError::TooFewDays { left: 10, min: 30 })
        );
        assert_eq!(
            check_window(now - 9 * DAY, now - 2 * DAY, now, 0, 0),
            Err(ExpiryError::Expired { days_ago: 2 })
        );
        assert_eq!(
            check_window(now + 1, now + 9 * DAY, now, 0, 0),
            Err(ExpiryError::NotYetValid { not_before_unix: now + 1 })
        );
        assert_eq!(check_window(now + 60, now + 9 * DAY, now, 0, 300), Ok(()));
        assert_eq!(check_window(0, now - 1, now, 0, 0), Err(ExpiryError::Expired { days_ago: 0 }));
    }

    #[test]
    fn unix_conversions_round_trip() {
        for s in [-5, 0, 1_700_000_000] {
            assert_eq!(unix_secs(from_unix(s)), s);
        }
        assert_eq!(to_offset(86_400).unix_timestamp(), 86_400);
    }
}
