//! The lifetime of a workload certificate (X.509-SVID), bounded: one definition for the API that
//! stores a mesh's setting, the CA service that reads it back and the CA that signs with it.

use std::time::Duration;

/// The lifetime of an X.509-SVID: 1 hour to 7 days, 24 hours unless the mesh says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvidTtl(Duration);

impl SvidTtl {
    /// Shortest accepted lifetime: rotation at half-life must stay far from the clock skew.
    pub const MIN: Duration = Duration::from_secs(60 * 60);
    /// Longest accepted lifetime: a stolen key is useful for at most this long.
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// [`SvidTtl::MIN`] in seconds, as the API and the database write it.
    pub const MIN_SECS: i64 = Self::MIN.as_secs() as i64;
    /// [`SvidTtl::MAX`] in seconds, as the API and the database write it.
    pub const MAX_SECS: i64 = Self::MAX.as_secs() as i64;
    /// The lifetime when a mesh configures none.
    pub const DEFAULT: SvidTtl = SvidTtl(Duration::from_secs(24 * 60 * 60));

    /// Checks the bounds.
    pub fn new(ttl: Duration) -> Result<Self, TtlError> {
        if ttl < Self::MIN || ttl > Self::MAX {
            return Err(TtlError { secs: ttl.as_secs() });
        }
        Ok(Self(ttl))
    }

    /// Shortest lifetime an installation-wide override may set (`trellis serve
    /// --svid-ttl-override`): short enough to watch renewals happen, far longer than a renewal.
    pub const MIN_OVERRIDE: Duration = Duration::from_secs(10);

    /// The lifetime an installation imposes on every mesh, for demonstrations and tests of
    /// renewal: from [`SvidTtl::MIN_OVERRIDE`] to [`SvidTtl::MAX`]. Meshes cannot set it.
    pub fn installation_override(ttl: Duration) -> Result<Self, String> {
        if ttl < Self::MIN_OVERRIDE || ttl > Self::MAX {
            return Err(format!("must be from 10s to 7 days, got {} s", ttl.as_secs()));
        }
        Ok(Self(ttl))
    }

    /// Parses a number of seconds (a request's, or a stored setting's).
    pub fn from_secs(secs: i64) -> Result<Self, TtlError> {
        match u64::try_from(secs) {
            Ok(s) => Self::new(Duration::from_secs(s)),
            // Negative: reported as 0, below the minimum either way.
            Err(_) => Err(TtlError { secs: 0 }),
        }
    }

    /// The lifetime.
    pub fn get(self) -> Duration {
        self.0
    }

    /// The lifetime in whole seconds (at most 7 days, so it fits).
    pub fn as_secs_i32(self) -> i32 {
        i32::try_from(self.0.as_secs()).expect("at most 7 days of seconds")
    }
}

impl Default for SvidTtl {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An SVID lifetime out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate lifetime must be between 1 hour and 7 days, got {secs} s")]
pub struct TtlError {
    pub secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert_eq!(SvidTtl::default().get(), Duration::from_secs(86_400));
        assert!(SvidTtl::new(Duration::from_secs(3_600)).is_ok());
        assert!(SvidTtl::new(Duration::from_secs(7 * 86_400)).is_ok());
        assert_eq!(SvidTtl::new(Duration::from_secs(3_599)), Err(TtlError { secs: 3_599 }));
        assert_eq!(SvidTtl::new(Duration::from_secs(7 * 86_400 + 1)), Err(TtlError { secs: 604_801 }));
    }

    #[test]
    fn an_installation_may_impose_shorter_lifetimes_than_a_mesh_can_set() {
        assert_eq!(SvidTtl::installation_override(Duration::from_secs(30)).unwrap().get().as_secs(), 30);
        assert!(SvidTtl::installation_override(Duration::from_secs(9)).is_err());
        assert!(SvidTtl::installation_override(Duration::from_secs(7 * 86_400 + 1)).is_err());
    }

    #[test]
    fn seconds_parse_within_the_same_bounds() {
        assert_eq!((SvidTtl::MIN_SECS, SvidTtl::MAX_SECS), (3_600, 604_800));
        assert_eq!(SvidTtl::from_secs(7_200).unwrap().as_secs_i32(), 7_200);
        assert_eq!(SvidTtl::from_secs(60), Err(TtlError { secs: 60 }));
        assert_eq!(SvidTtl::from_secs(-1), Err(TtlError { secs: 0 }));
        assert_eq!(SvidTtl::from_secs(i64::MAX), Err(TtlError { secs: i64::MAX as u64 }));
    }
}
