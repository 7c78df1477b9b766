//! How long a write may wait for its propagation (`?wait=` on a write, `trellis apply
//! --wait --timeout`): one bound for the API that waits and the client that asks.

use std::time::Duration;

/// A wait for every proxy a write configures to apply it: more than nothing, at most
/// [`PropagationWait::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PropagationWait(Duration);

impl PropagationWait {
    /// Longest wait: a request is never held longer than this beyond the server's own limit.
    pub const MAX: Duration = Duration::from_secs(300);
    /// What a wrong value is told, by every front end.
    pub const RULE: &'static str = "must be a duration such as 500ms, 30s or 2m: more than 0, at most 5m";

    /// Checks the bounds.
    pub fn new(d: Duration) -> Result<Self, WaitError> {
        if d.is_zero() || d > Self::MAX {
            return Err(WaitError);
        }
        Ok(Self(d))
    }

    /// Parses `<n>ms`, `<n>s` or `<n>m`.
    pub fn parse(s: &str) -> Result<Self, WaitError> {
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(WaitError)?;
        let (n, unit) = s.split_at(split);
        // At most 6 digits: no overflow, and 300000ms is the longest sensible spelling.
        let n: u64 = n.parse().ok().filter(|_| n.len() <= 6).ok_or(WaitError)?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            _ => return Err(WaitError),
        };
        Self::new(d)
    }

    /// The wait.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The wait as [`PropagationWait::parse`] reads it back, in the largest whole unit.
impl std::fmt::Display for PropagationWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1_000) => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// A wait that is not a duration within the bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", PropagationWait::RULE)]
pub struct WaitError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_within_bounds() {
        let secs = |s: &str| PropagationWait::parse(s).map(|w| w.get());
        assert_eq!(secs("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(secs("5m"), Ok(PropagationWait::MAX));
        for bad in ["", "0s", "6m", "301s", "30", "s", "-1s", "1.5s", "1h", "9999999999ms", "30 s"] {
            assert_eq!(PropagationWait::parse(bad), Err(WaitError), "{bad:?}");
        }
        for text in ["2m", "90s", "1500ms"] {
            let w = PropagationWait::parse(text).unwrap();
            assert_eq!(w.to_string(), text);
            assert_eq!(PropagationWait::parse(&w.to_string()), Ok(w));
        }
    }
}
