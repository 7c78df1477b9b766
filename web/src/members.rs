//! The glue of the members pages: an organization's members and invitations, and the link
//! an invited user opens to join. Every rule (who may manage members, never above one's own
//! role, the last owner kept) is the core's; a refusal comes back beside the control used.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use trellis_control::{NewInvite, Problem};
use trellis_model::{Action, Role};

use crate::pages::members::{MembersControls, MembersForm};
use crate::{Console, CsrfOnly, PageError, Viewer, pages};

pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/orgs/{org}/members", get(members_page).post(invite))
        .route("/orgs/{org}/members/{user}", post(change_role))
        .route("/orgs/{org}/members/{user}/remove", post(remove))
        .route("/orgs/{org}/invites/{id}/revoke", post(revoke))
        .route("/invites/{token}", get(accept_page).post(accept))
}

async fn members_page(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    render(&c, &v, &org, &MembersForm::default()).await
}

/// The page with `form`'s values and errors; invitations only for those who manage members
/// (listing them is theirs alone).
async fn render(c: &Console, v: &Viewer, org: &str, form: &MembersForm) -> Result<Markup, PageError> {
    let manage = v.may(org, Action::ManageMembers);
    let scope = c.control.open(&v.request, org).await?;
    let members = c.control.list_members(scope).await?;
    let invites = if manage {
        let scope = c.control.open(&v.request, org).await?;
        c.control.list_invites(scope).await?
    } else {
        Vec::new()
    };
    let orgs = v.org_list();
    Ok(pages::members::members(
        &v.chrome(Some(org), &orgs),
        org,
        &members,
        &invites,
        MembersControls { manage },
        form,
    ))
}

/// The status of a refusal the page shows beside the control used rather than as an error
/// page: what the person can correct there. A manager refused (a role above their own) is
/// told so beside the control; anyone else gets the error page.
fn beside_the_control(v: &Viewer, org: &str, p: Problem) -> Option<StatusCode> {
    match p {
        Problem::Invalid => Some(StatusCode::UNPROCESSABLE_ENTITY),
        Problem::Conflict => Some(StatusCode::CONFLICT),
        Problem::Forbidden if v.may(org, Action::ManageMembers) => Some(StatusCode::FORBIDDEN),
        _ => None,
    }
}

#[derive(Deserialize)]
struct InviteForm {
    #[serde(default)]
    csrf: String,
    email: String,
    role: Role,
}

/// Invites by email; the link is shown this once, above the list.
async fn invite(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Form(form): Form<InviteForm>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    let req = NewInvite { email: form.email.clone(), role: form.role, expires_in_hours: None };
    match c.control.create_invite(scope, req).await {
        Ok((invite, token)) => {
            let created = Some((invite.email, format!("{}/invites/{token}", c.public_url)));
            Ok(render(&c, &v, &org, &MembersForm { created, ..Default::default() }).await?.into_response())
        }
        Err(e) => match beside_the_control(&v, &org, e.problem) {
            Some(status) => {
                let mut invite_errors = pages::field_errors(&e, &[("email", "email"), ("role", "role")]);
                // The rank rule is about the role asked for.
                if e.problem == Problem::Forbidden {
                    invite_errors = [("role", e.detail.clone())].into();
                }
                let values = MembersForm {
                    email: form.email,
                    role: Some(form.role),
                    invite_errors,
                    ..Default::default()
                };
                Ok((status, render(&c, &v, &org, &values).await?).into_response())
            }
            None => Err(e.into()),
        },
    }
}

#[derive(Deserialize)]
struct RoleForm {
    #[serde(default)]
    csrf: String,
    role: Role,
}

/// The members page again with a refusal in `user`'s row, or back to the list.
async fn after_member_change(
    c: &Console,
    v: &Viewer,
    org: &str,
    user: &str,
    outcome: Result<(), trellis_control::AppError>,
) -> Result<Response, PageError> {
    match outcome {
        Ok(()) => Ok(Redirect::to(&format!("/orgs/{org}/members")).into_response()),
        Err(e) => match (beside_the_control(v, org, e.problem), user.parse()) {
            (Some(status), Ok(id)) => {
                let form = MembersForm { member_error: Some((id, e.detail.clone())), ..Default::default() };
                Ok((status, render(c, v, org, &form).await?).into_response())
            }
            _ => Err(e.into()),
        },
    }
}

/// Changes a member's role.
async fn change_role(
    State(c): State<Console>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<RoleForm>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    let outcome = c.control.update_member(scope, &user, form.role).await.map(|_| ());
    after_member_change(&c, &v, &org, &user, outcome).await
}

/// Removes a member from the organization.
async fn remove(
    State(c): State<Console>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    let outcome = c.control.remove_member(scope, &user).await;
    after_member_change(&c, &v, &org, &user, outcome).await
}

/// Revokes a pending invitation: its link no longer works.
async fn revoke(
    State(c): State<Console>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    c.control.revoke_invite(scope, &id).await?;
    Ok(Redirect::to(&format!("/orgs/{org}/members")).into_response())
}

/// The invitation link: a signed-in user confirms with a form (a link alone never joins,
/// so that a prefetch or a crawler cannot use the invitation).
async fn accept_page(
    State(c): State<Console>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = match Viewer::of(&c, &headers).await {
        Ok(v) => v,
        Err(PageError::SignIn) => return Ok(pages::members::sign_in_first(c.oidc)),
        Err(e) => return Err(e),
    };
    let orgs = v.org_list();
    Ok(pages::members::accept(&v.chrome(None, &orgs), &token, v.email.as_deref()))
}

/// Accepts the invitation and opens the organization joined.
async fn accept(
    State(c): State<Console>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let joined = c.control.accept_invite(&v.request, &token).await?;
    Ok(Redirect::to(&format!("/orgs/{}/members", joined.org.slug.as_str())).into_response())
}
