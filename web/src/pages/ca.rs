//! The mesh page's certificate-authority forms: bring your own intermediate (a CSR to
//! download, the chain signed with your root to upload) and the lifetime of workload
//! certificates, each with the server's refusal beside its field.

use maud::{Markup, html};
use trellis_control::MeshOverview;

use crate::layout::{Chrome, csrf_field};

/// The CA forms' values and what the server said about them.
#[derive(Default)]
pub struct CaForm {
    /// The chain as last pasted, and why it was refused.
    pub chain: String,
    pub chain_error: Option<String>,
    /// The SVID lifetime as last typed (seconds), and why it was refused.
    pub svid_ttl: Option<String>,
    pub svid_ttl_error: Option<String>,
}

/// Bring your own intermediate and the SVID lifetime, for those who manage the CA.
pub fn forms(chrome: &Chrome<'_>, org: &str, o: &MeshOverview, form: &CaForm) -> Markup {
    let ca_url = format!("/orgs/{org}/meshes/{}/ca", o.fleet.mesh.name.as_str());
    let pending = o.ca.cas.iter().find(|c| c.state == "pending");
    let ttl = form.svid_ttl.clone().unwrap_or_else(|| o.ca.svid_ttl_seconds.to_string());
    html! {
        h3 { "Bring your own intermediate" }
        @match pending {
            None if o.ca.phase == "stable" => {
                form method="post" action={ (ca_url) "/intermediate" } {
                    (csrf_field(chrome.csrf))
                    p { "Trellis makes a new intermediate key, which never leaves it, and a certificate signing request "
                        "for you to sign with your own root. Once you upload the signed chain, the intermediate is "
                        "prepared like a new root: activate it to sign workload certificates." }
                    button type="submit" { "Create an intermediate CSR" }
                }
            }
            None => p.muted { "A rotation is under way: finish it before bringing your own intermediate." },
            Some(ca) => {
                div #byo-pending {
                    p { "1. " a #download-csr href={ (ca_url) "/authorities/" (ca.id) "/csr" } download { "Download the CSR" }
                        " and sign it with your root as a CA certificate (basic constraints CA:TRUE, key usage keyCertSign, "
                        "URI SAN " code { "spiffe://" (o.ca.trust_domain) } ")." }
                    form method="post" action={ (ca_url) "/authorities/" (ca.id) "/chain" } {
                        (csrf_field(chrome.csrf))
                        label for="ca-chain" { "2. The signed chain, PEM: the intermediate first, your root last" }
                        textarea #ca-chain name="chain" required spellcheck="false" aria-describedby="ca-chain-error" { (form.chain) }
                        @if let Some(e) = &form.chain_error {
                            p.field-error #ca-chain-error role="alert" { (e) }
                        }
                        p { button type="submit" { "Upload the chain" } }
                    }
                    form method="post" action={ (ca_url) "/authorities/" (ca.id) "/discard" } {
                        (csrf_field(chrome.csrf))
                        button.secondary type="submit" { "Discard the CSR" }
                    }
                }
            }
        }
        h3 { "Workload certificate lifetime" }
        form method="post" action={ (ca_url) "/settings" } {
            (csrf_field(chrome.csrf))
            label for="svid-ttl" { "Lifetime of new workload certificates, in seconds (1 hour to 7 days)" }
            input #svid-ttl type="text" inputmode="numeric" name="svid_ttl_seconds" value=(ttl) required
                aria-describedby="svid-ttl-error";
            @if let Some(e) = &form.svid_ttl_error {
                p.field-error #svid-ttl-error role="alert" { (e) }
            }
            p { button type="submit" { "Set the lifetime" } }
        }
    }
}
