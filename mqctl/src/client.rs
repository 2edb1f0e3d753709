//! The HTTP side: one blocking request per call to the admin API under `<url>/mq/api/`, the
//! bearer token on every request, and each non-2xx answer turned into an [`Error`] by status.

use std::time::Duration;

use reqwest::blocking::Client as Http;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::api::ErrorDocument;
use crate::error::Error;

/// How long one request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one application's admin API.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: Http,
}

/// A 2xx answer (or a 503 that the caller accepted, see [`Client::get_accepting`]).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The URL asked.
    pub url: String,
    /// The HTTP status.
    pub status: u16,
    /// The body as received.
    pub body: String,
}

impl Answer {
    /// The body read as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.body).map_err(|e| Error::BadResponse {
            url: self.url.clone(),
            cause: e.to_string(),
        })
    }
}

impl Client {
    /// A client of the application at `url` (`http://127.0.0.1:8080`; a path prefix is kept),
    /// sending `token` as `Authorization: Bearer` when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, Error> {
        let bad = |cause: &str| Error::BadUrl {
            url: url.to_owned(),
            cause: cause.to_owned(),
        };
        let base = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("mqctl speaks http and https"));
        }
        let http = Http::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("mqctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unreachable {
                url: url.to_owned(),
                cause: causes(&e),
            })?;
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The URL of an API route: `segments` under `/mq/api/`, each percent-encoded (group and
    /// topic names hold `%`), then `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["mq", "api"]).extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// `GET` a route.
    pub fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer, Error> {
        self.send(Method::GET, self.url(segments, query), None, &[])
    }

    /// `GET` a route whose `accept` statuses carry the route's document too (health's 503).
    pub fn get_accepting(&self, segments: &[&str], accept: &[u16]) -> Result<Answer, Error> {
        self.send(Method::GET, self.url(segments, &[]), None, accept)
    }

    /// `POST` to a route, with a JSON body or none.
    pub fn post(
        &self,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<Answer, Error> {
        self.send(Method::POST, self.url(segments, &[]), body, &[])
    }

    /// `DELETE` a route.
    pub fn delete(&self, segments: &[&str]) -> Result<Answer, Error> {
        self.send(Method::DELETE, self.url(segments, &[]), None, &[])
    }

    fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        accept: &[u16],
    ) -> Result<Answer, Error> {
        let shown = url.to_string();
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let unreachable = |e: reqwest::Error| Error::Unreachable {
            url: self.base.to_string(),
            cause: causes(&e),
        };
        let response = request.send().map_err(unreachable)?;
        let status = response.status();
        let body = response.text().map_err(unreachable)?;
        if status.is_success() || accept.contains(&status.as_u16()) {
            return Ok(Answer {
                url: shown,
                status: status.as_u16(),
                body,
            });
        }
        Err(failure(status, &body))
    }
}

/// The error of a non-2xx answer, by status; the API's message when the body is its error
/// document, else the status line.
pub fn failure(status: StatusCode, body: &str) -> Error {
    let (code, message) = match serde_json::from_str::<ErrorDocument>(body) {
        Ok(doc) => (doc.error.code, doc.error.message),
        Err(_) => {
            let reason = status.canonical_reason().unwrap_or("no reason");
            (
                format!("http_{}", status.as_u16()),
                format!("{} {reason}", status.as_u16()),
            )
        }
    };
    let status_code = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { message },
        StatusCode::NOT_FOUND => Error::NotFound { message },
        s if s.is_server_error() => Error::Server {
            status: status_code,
            code,
            message,
        },
        _ => Error::Rejected {
            status: status_code,
            code,
            message,
        },
    }
}

/// An error's sources, outermost first: reqwest's own text ("error sending request for url
/// …") repeats the URL and says little; the causes ("Connection refused") are what the
/// operator needs.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut parts = vec![first.to_string()];
    let mut source = first.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Client {
        Client::new(url, None).unwrap()
    }

    #[test]
    fn routes_are_under_mq_api_with_encoded_segments() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["topics", "%RETRY%g%t"], &[]).as_str(),
            "http://127.0.0.1:8080/mq/api/topics/%25RETRY%25g%25t"
        );
        assert_eq!(
            c.url(
                &["messages"],
                &[("key", "a b&c".into()), ("limit", "5".into())]
            )
            .as_str(),
            "http://127.0.0.1:8080/mq/api/messages?key=a+b%26c&limit=5"
        );
    }

    #[test]
    fn a_path_prefix_is_kept() {
        let c = client("https://ops.example/shop/");
        assert_eq!(
            c.url(&["health"], &[]).as_str(),
            "https://ops.example/shop/mq/api/health"
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for bad in ["127.0.0.1:8080", "ftp://host", "not a url"] {
            assert!(
                matches!(Client::new(bad, None), Err(Error::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn failures_are_told_apart_by_status() {
        let doc = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"no group g"}}}}"#);
        assert!(matches!(
            failure(StatusCode::UNAUTHORIZED, &doc("unauthorized")),
            Error::Unauthorized { .. }
        ));
        match failure(StatusCode::NOT_FOUND, &doc("not_found")) {
            Error::NotFound { message } => assert_eq!(message, "no group g"),
            other => panic!("{other:?}"),
        }
        match failure(StatusCode::UNPROCESSABLE_ENTITY, &doc("invalid")) {
            Error::Rejected { status, code, .. } => {
                assert_eq!((status, code.as_str()), (422, "invalid"))
            }
            other => panic!("{other:?}"),
        }
        match failure(StatusCode::BAD_GATEWAY, "<html>proxy</html>") {
            Error::Server {
                status, message, ..
            } => {
                assert_eq!(status, 502);
                assert_eq!(message, "502 Bad Gateway");
            }
            other => panic!("{other:?}"),
        }
    }
}
