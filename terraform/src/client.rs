//! The REST API client: one organization, one token.

use serde_json::Value as Json;

/// An error the API (or the way to it) gave.
#[derive(Debug)]
pub struct ApiError {
    pub status: Option<u16>,
    pub detail: String,
    /// `(field path, message)` from a problem document's `errors`.
    pub fields: Vec<(String, String)>,
}

impl ApiError {
    fn transport(e: reqwest::Error) -> ApiError {
        ApiError {
            status: None,
            detail: format!("the Trellis server could not be reached: {e}"),
            fields: Vec::new(),
        }
    }
}

/// How a write may proceed.
pub enum Precondition<'a> {
    /// Only when nothing of that name exists (`If-None-Match: *`).
    Create,
    /// Only when the object is still the one Terraform last read (`If-Match`).
    Unchanged(&'a str),
}

/// A document and its ETag.
pub struct Document {
    pub body: Json,
    pub etag: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pub org: String,
}

impl Client {
    pub fn new(server: &str, token: &str, org: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("terraform-provider-trellis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            org: org.to_owned(),
        })
    }

    /// The organization the token belongs to (`GET /api/v1/me`).
    pub async fn token_org(&self) -> Result<String, ApiError> {
        let url = format!("{}/api/v1/me", self.base);
        let doc = self.send(self.http.get(url)).await?;
        doc.body["org"]["slug"].as_str().map(str::to_owned).ok_or_else(|| ApiError {
            status: None,
            detail: "the token names no organization: set `organization` in the provider block".into(),
            fields: Vec::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/orgs/{}{path}", self.base, self.org)
    }

    /// `None` when the object does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Document>, ApiError> {
        match self.send(self.http.get(self.url(path))).await {
            Ok(doc) => Ok(Some(doc)),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Json,
        precondition: Precondition<'_>,
    ) -> Result<Document, ApiError> {
        let req = self.http.put(self.url(path)).json(body);
        let req = match precondition {
            Precondition::Create => req.header("if-none-match", "*"),
            Precondition::Unchanged(etag) => req.header("if-match", etag),
        };
        self.send(req).await
    }

    /// A text document and one header of it; `None` when it does not exist.
    pub async fn get_text(
        &self,
        path: &str,
        header: &str,
    ) -> Result<Option<(String, Option<String>)>, ApiError> {
        let res = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(ApiError::transport)?;
        match res.status().as_u16() {
            404 => return Ok(None),
            s if s >= 400 => {
                let detail = res.text().await.unwrap_or_default();
                return Err(ApiError { status: Some(s), detail, fields: Vec::new() });
            }
            _ => {}
        }
        let value = res.headers().get(header).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Some((res.text().await.map_err(ApiError::transport)?, value)))
    }

    /// POST creates (tokens).
    pub async fn post(&self, path: &str, body: &Json) -> Result<Document, ApiError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// Deleting what is already gone succeeds.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        match self.send(self.http.delete(self.url(path))).await {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Document, ApiError> {
        let res = req.bearer_auth(&self.token).send().await.map_err(ApiError::transport)?;
        let status = res.status();
        let etag = res.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = res.text().await.map_err(ApiError::transport)?;
        let body: Json =
            if text.is_empty() { Json::Null } else { serde_json::from_str(&text).unwrap_or(Json::Null) };
        if status.is_success() {
            return Ok(Document { body, etag });
        }
        let detail = body["detail"]
            .as_str()
            .or(body["title"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{status}: {}", text.chars().take(200).collect::<String>()));
        let fields = body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        (
                            e["field"].as_str().unwrap_or_default().to_owned(),
                            e["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Err(ApiError { status: Some(status.as_u16()), detail, fields })
    }
}
