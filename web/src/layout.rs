//! The page shell every console page shares: the top bar with the organization switcher,
//! who is signed in and sign-out, and the main column.

use maud::{DOCTYPE, Markup, html};

/// The stylesheet's URL (served by [`crate::assets`]).
pub const STYLESHEET: &str = "/static/console.css";

/// Who is signed in, for the top bar.
pub struct Chrome<'a> {
    pub user: &'a str,
    /// The organizations the user can switch to, as (slug, name), and the current one.
    pub orgs: &'a [(String, String)],
    pub current_org: Option<&'a str>,
    /// The session's CSRF token, carried by every form.
    pub csrf: &'a str,
}

/// A whole page: `title`, the top bar (when someone is signed in) and `body`.
pub fn page(title: &str, chrome: Option<&Chrome<'_>>, body: Markup) -> Markup {
    shell(title, chrome, body, None)
}

/// A page that loads itself again every `seconds` (a meta refresh: no script needed), for
/// a state that is still changing.
pub fn page_refreshing(title: &str, chrome: Option<&Chrome<'_>>, body: Markup, seconds: u32) -> Markup {
    shell(title, chrome, body, Some(seconds))
}

fn shell(title: &str, chrome: Option<&Chrome<'_>>, body: Markup, refresh: Option<u32>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · Trellis" }
                link rel="stylesheet" href=(STYLESHEET);
            }
            body {
                header.top {
                    a.brand href="/" { "Trellis" }
                    @if let Some(c) = chrome {
                        nav aria-label="Organizations" {
                            @for (slug, name) in c.orgs {
                                @if c.current_org == Some(slug.as_str()) {
                                    a href={ "/orgs/" (slug) } aria-current="page" { strong { (name) } }
                                } @else {
                                    a href={ "/orgs/" (slug) } { (name) }
                                }
                            }
                        }
                        span.muted { (c.user) }
                        form method="post" action="/sign-out" {
                            (csrf_field(c.csrf))
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field that carries the session's CSRF token in a form.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(crate::CSRF_FIELD) value=(token); }
}
