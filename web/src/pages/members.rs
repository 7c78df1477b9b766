//! An organization's members and invitations, and the page where an invited user accepts.

use std::collections::BTreeMap;

use chrono::Utc;
use maud::{Markup, html};
use trellis_model::Role;
use trellis_store::{Invite, Member};
use uuid::Uuid;

use crate::layout::{Chrome, csrf_field, page};

/// What the members page shows besides the lists: the forms' values and what the server
/// said about them.
#[derive(Default)]
pub struct MembersForm {
    /// The invitation form's values.
    pub email: String,
    pub role: Option<Role>,
    /// By form field (`email`, `role`, or `""` for the whole form): the server's refusal.
    pub invite_errors: BTreeMap<&'static str, String>,
    /// A refused change to one member: whose, and why (shown in that member's row).
    pub member_error: Option<(Uuid, String)>,
    /// An invitation just created: its address and its link, shown this once.
    pub created: Option<(String, String)>,
}

/// Who may do what on the members page (the core decides; the page only hides what it
/// would refuse).
pub struct MembersControls {
    /// Change roles, remove members, invite, list and revoke invitations.
    pub manage: bool,
}

fn invite_state(i: &Invite) -> (&'static str, &'static str) {
    if i.accepted_at.is_some() {
        ("accepted", "ok")
    } else if i.revoked_at.is_some() {
        ("revoked", "muted")
    } else if i.expires_at <= Utc::now() {
        ("expired", "muted")
    } else {
        ("pending", "warn")
    }
}

/// The organization's members with their roles, its invitations, and (for those who may)
/// the forms that change a role, remove a member, invite and revoke an invitation.
pub fn members(
    chrome: &Chrome<'_>,
    org: &str,
    members: &[Member],
    invites: &[Invite],
    may: MembersControls,
    form: &MembersForm,
) -> Markup {
    let base = format!("/orgs/{org}/members");
    page(
        "Members",
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) } { "Organization" } " / members" }
            h1 { "Members" }
            @if let Some((email, link)) = &form.created {
                div.notice role="status" {
                    p { "Invitation for " strong { (email) } " created. Send them this link; it is shown this once. "
                        "They open it signed in with that email address to join." }
                    p { code #invite-link { (link) } }
                }
            }
            table #members {
                thead { tr { th { "Member" } th { "Email" } th { "Role" } th { "Joined" }
                    @if may.manage { th { span.visually-hidden { "Actions" } } } } }
                tbody {
                    @for m in members {
                        @let who = m.display_name.as_deref().or(m.email.as_deref()).unwrap_or("(no name)");
                        @let row_error = form.member_error.as_ref().filter(|(id, _)| *id == m.user_id).map(|(_, e)| e);
                        tr {
                            td { (who) }
                            td { (m.email.as_deref().unwrap_or("")) }
                            td.role { (m.role.as_str()) }
                            td { (m.created_at.format("%Y-%m-%d")) }
                            @if may.manage {
                                td {
                                    @let select_id = format!("role-{}", m.user_id);
                                    @let error_id = format!("member-{}-error", m.user_id);
                                    form.inline method="post" action={ (base) "/" (m.user_id) } {
                                        (csrf_field(chrome.csrf))
                                        label.visually-hidden for=(select_id) { "Role of " (who) }
                                        select id=(select_id) name="role" aria-describedby=(error_id) {
                                            @for r in Role::ALL {
                                                option value=(r.as_str()) selected[r == m.role] { (r.as_str()) }
                                            }
                                        }
                                        button.secondary type="submit" aria-label={ "Change the role of " (who) } { "Change role" }
                                    }
                                    form.inline method="post" action={ (base) "/" (m.user_id) "/remove" } {
                                        (csrf_field(chrome.csrf))
                                        button.secondary type="submit" aria-label={ "Remove " (who) } { "Remove" }
                                    }
                                    @if let Some(e) = row_error {
                                        p.field-error id=(error_id) role="alert" { (e) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if may.manage {
                h2 { "Invitations" }
                @if invites.is_empty() {
                    p.muted { "No invitations yet." }
                } @else {
                    table #invites {
                        thead { tr { th { "Email" } th { "Role" } th { "State" } th { "Expires" } th { span.visually-hidden { "Actions" } } } }
                        tbody {
                            @for i in invites {
                                @let (state, class) = invite_state(i);
                                tr {
                                    td { (i.email) }
                                    td { (i.role.as_str()) }
                                    td class=(class) { (state) }
                                    td { (i.expires_at.format("%Y-%m-%d %H:%M UTC")) }
                                    td {
                                        @if state == "pending" {
                                            form method="post" action={ "/orgs/" (org) "/invites/" (i.id) "/revoke" } {
                                                (csrf_field(chrome.csrf))
                                                button.secondary type="submit" aria-label={ "Revoke the invitation of " (i.email) } { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Invite someone" }
                form.panel method="post" action=(base) {
                    (csrf_field(chrome.csrf))
                    @if let Some(e) = form.invite_errors.get("") {
                        p.notice.error role="alert" { (e) }
                    }
                    label for="invite-email" { "Email address" }
                    input #invite-email type="email" name="email" value=(form.email) required maxlength="320"
                        aria-describedby="invite-email-error";
                    @if let Some(e) = form.invite_errors.get("email") {
                        p.field-error #invite-email-error role="alert" { (e) }
                    }
                    label for="invite-role" { "Role (at most your own)" }
                    select #invite-role name="role" aria-describedby="invite-role-error" {
                        @for r in Role::ALL {
                            option value=(r.as_str()) selected[Some(r) == form.role.or(Some(Role::Viewer))] { (r.as_str()) }
                        }
                    }
                    @if let Some(e) = form.invite_errors.get("role") {
                        p.field-error #invite-role-error role="alert" { (e) }
                    }
                    p { button type="submit" { "Invite" } }
                }
            }
        },
    )
}

/// An invitation link opened by someone not signed in: sign in first (a first sign-in makes
/// the account), then open the link again.
pub fn sign_in_first(oidc: bool) -> Markup {
    page(
        "Sign in to accept an invitation",
        None,
        html! {
            h1 { "Sign in to accept an invitation" }
            div.panel {
                p { "Sign in with the email address the invitation was sent to, then open the invitation link again." }
                @if oidc {
                    p { a.button href="/auth/login" { "Sign in" } }
                }
            }
        },
    )
}

/// An invitation link opened by a signed-in user: the button that accepts it.
pub fn accept(chrome: &Chrome<'_>, token: &str, email: Option<&str>) -> Markup {
    page(
        "Accept an invitation",
        Some(chrome),
        html! {
            h1 { "Accept an invitation" }
            div.panel {
                p { "You were invited to join an organization on Trellis. The invitation must have been sent to "
                    @if let Some(e) = email { "the address you signed in with, " strong { (e) } "." } @else { "the address you signed in with." } }
                form method="post" action={ "/invites/" (token) } {
                    (csrf_field(chrome.csrf))
                    button type="submit" { "Join the organization" }
                }
            }
        },
    )
}
