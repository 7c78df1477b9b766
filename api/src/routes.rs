//! The documented API: every operation, added with its handler from the handler's
//! `#[utoipa::path]`, so the router and the OpenAPI document are one list. A handler's
//! annotation is the only description of its operation: its path, parameters, body,
//! responses and security. Handlers that share a path go in one `routes!`.
//!
//! Paths with `{kind}` are served for every resource kind and described once as a template;
//! `openapi::document` writes one path per kind from it.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::Shared;
use crate::{
    accounts, bootstrap, ca, config, dataplanes, members, observe, orgs, telemetry_status, traffic_events,
};

/// The API's routes and, from their annotations, the document's operations.
pub(crate) fn api() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        // Accounts and organizations.
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::callback))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::local_login))
        .routes(routes!(orgs::me))
        .routes(routes!(orgs::list_orgs))
        .routes(routes!(members::accept_invite))
        .routes(routes!(orgs::get_org, orgs::patch_org, orgs::delete_org))
        .routes(routes!(members::list_members))
        .routes(routes!(members::update_member, members::remove_member))
        .routes(routes!(members::list_invites, members::create_invite))
        .routes(routes!(members::revoke_invite))
        .routes(routes!(orgs::list_tokens, orgs::create_token))
        .routes(routes!(orgs::revoke_token))
        .routes(routes!(orgs::audit_events))
        // Meshes and their configuration.
        .routes(routes!(config::list_meshes))
        .routes(routes!(config::get_mesh, config::put_mesh, config::delete_mesh))
        .routes(routes!(config::effective))
        .routes(routes!(config::impact_preview))
        .routes(routes!(config::list_resources, config::create_resource))
        .routes(routes!(config::get_resource, config::put_resource, config::delete_resource))
        // Proxies and what they report.
        .routes(routes!(dataplanes::list))
        .routes(routes!(dataplanes::config))
        .routes(routes!(observe::topology))
        .routes(routes!(observe::service))
        .routes(routes!(observe::health))
        .routes(routes!(observe::access_log))
        .routes(routes!(observe::why))
        .routes(routes!(observe::prometheus))
        .routes(routes!(telemetry_status::status))
        .routes(routes!(traffic_events::list))
        .routes(routes!(traffic_events::draft))
        // The certificate authority, join tokens, SVIDs and bootstraps.
        .routes(routes!(ca::status))
        .routes(routes!(ca::bundle))
        .routes(routes!(ca::put_settings))
        .routes(routes!(ca::prepare))
        .routes(routes!(ca::activate))
        .routes(routes!(ca::discard))
        .routes(routes!(ca::retire))
        .routes(routes!(ca::upload_chain))
        .routes(routes!(ca::intermediate_csr))
        .routes(routes!(ca::upload_ca))
        .routes(routes!(ca::list_join_tokens, ca::create_join_token))
        .routes(routes!(ca::revoke_join_token))
        .routes(routes!(ca::issue_svid))
        .routes(routes!(bootstrap::grpc))
        .routes(routes!(bootstrap::envoy))
        .routes(routes!(bootstrap::platform_root))
}
