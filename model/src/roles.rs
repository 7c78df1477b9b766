//! Organization roles and the one permission matrix, enforced in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A member's or a token's role in an organization, from most to least powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Editor,
    Viewer,
}

/// Everything a caller can ask to do within an organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read the organization, its meshes and their configuration.
    Read,
    /// Create, change or delete meshes and mesh configuration.
    WriteConfig,
    /// Read the audit log.
    ReadAudit,
    /// Invite, change and remove members.
    ManageMembers,
    /// Create, list and revoke API tokens and join tokens.
    ManageTokens,
    /// Operate the mesh certificate authorities (rotation, intermediates).
    ManageCa,
    /// Change the organization's name and slug.
    ManageOrg,
    /// Delete the organization.
    DeleteOrg,
}

impl Action {
    /// Every action, for exhaustive tests and documentation.
    pub const ALL: [Action; 8] = [
        Action::Read,
        Action::WriteConfig,
        Action::ReadAudit,
        Action::ManageMembers,
        Action::ManageTokens,
        Action::ManageCa,
        Action::ManageOrg,
        Action::DeleteOrg,
    ];
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Editor, Role::Viewer];

    /// The permission matrix: viewer reads; editor writes mesh configuration; admin manages
    /// members, tokens, the CA and the audit log; owner also deletes the organization.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Owner => true,
            Role::Admin => !matches!(action, DeleteOrg),
            Role::Editor => matches!(action, Read | WriteConfig),
            Role::Viewer => matches!(action, Read),
        }
    }

    /// The role's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected owner, admin, editor or viewer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn the_matrix_cell_by_cell() {
        // (action, owner, admin, editor, viewer)
        let matrix = [
            (Read, true, true, true, true),
            (WriteConfig, true, true, true, false),
            (ReadAudit, true, true, false, false),
            (ManageMembers, true, true, false, false),
            (ManageTokens, true, true, false, false),
            (ManageCa, true, true, false, false),
            (ManageOrg, true, true, false, false),
            (DeleteOrg, true, false, false, false),
        ];
        assert_eq!(matrix.len(), Action::ALL.len());
        for (action, owner, admin, editor, viewer) in matrix {
            assert_eq!(Role::Owner.allows(action), owner, "owner {action:?}");
            assert_eq!(Role::Admin.allows(action), admin, "admin {action:?}");
            assert_eq!(Role::Editor.allows(action), editor, "editor {action:?}");
            assert_eq!(Role::Viewer.allows(action), viewer, "viewer {action:?}");
        }
    }

    #[test]
    fn roles_parse_by_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
