//! A write's conditions on the stored version (`If-Match`, `If-None-Match: *` over REST):
//! checked against the version read in the writing transaction, and again by the statement
//! that writes (`store::Precondition`).

use trellis_store::Precondition;
use uuid::Uuid;

use crate::AppError;

/// Which versions a write may replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// Any: the object must exist.
    Any,
    /// One of these versions must be current.
    Versions(Vec<Uuid>),
}

impl IfMatch {
    /// The version to write against, given the current one (None when absent).
    pub fn expect(&self, current: Option<Uuid>) -> Result<Uuid, AppError> {
        let fail = || {
            AppError::precondition_failed(
                "If-Match does not name the current version; read the resource again and retry",
            )
        };
        let current = current.ok_or_else(fail)?;
        match self {
            IfMatch::Any => Ok(current),
            IfMatch::Versions(v) if v.contains(&current) => Ok(current),
            IfMatch::Versions(_) => Err(fail()),
        }
    }
}

/// The conditions a client put on a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub if_match: Option<IfMatch>,
    /// Create only: the object must not exist.
    pub create_only: bool,
}

impl Condition {
    /// The store's precondition given the version stored now (None when absent); one that
    /// already fails is refused here.
    pub(crate) fn against(&self, current: Option<Uuid>) -> Result<Precondition, AppError> {
        match (&self.if_match, self.create_only) {
            (Some(_), true) => Err(AppError::bad_request(
                "If-Match and If-None-Match: * contradict each other; send one of them",
            )),
            (Some(im), false) => Ok(Precondition::Version(im.expect(current)?)),
            (None, true) if current.is_some() => Err(AppError::already_exists()),
            (None, true) => Ok(Precondition::Absent),
            (None, false) => Ok(Precondition::Unconditional),
        }
    }
}
