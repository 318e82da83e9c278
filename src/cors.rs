//! Cross-origin requests from browsers (a trigger's `cors` table).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on a trigger
//! with a `cors` table is answered by the gateway right after routing, before the method
//! filter and authentication: it never reaches the function and needs no credentials
//! (browsers send none). An allowed preflight is 204 with the `Access-Control-Allow-*`
//! headers; a refused one is 403 `AccessDenied` saying why. Every other response to a request
//! whose `Origin` the trigger allows, the gateway's own errors included (so a page can read a
//! 401 or a 429), carries `Access-Control-Allow-Origin` and the exposed headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{ResponseBody, full};
pub use crate::config::CorsConfig;

impl CorsConfig {
    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    fn allowed_origin(&self, origin: &str) -> Option<HeaderValue> {
        if self.any_origin && !self.allow_credentials {
            return Some(HeaderValue::from_static("*"));
        }
        let lower = origin.to_ascii_lowercase();
        if self.any_origin || self.allow_origins.contains(&lower) {
            return HeaderValue::from_str(origin).ok();
        }
        None
    }

    /// Whether a request is a preflight this table answers.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight: 204 with the allowances, or the reason it is refused.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<ResponseBody>, String> {
        let origin = text(headers, header::ORIGIN).unwrap_or_default();
        let allow_origin = self
            .allowed_origin(&origin)
            .ok_or_else(|| format!("CORS: origin '{origin}' is not allowed"))?;
        let method = text(headers, header::ACCESS_CONTROL_REQUEST_METHOD).unwrap_or_default();
        if !self
            .allow_methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(method.trim()))
        {
            return Err(format!("CORS: method '{method}' is not allowed"));
        }
        let requested: Vec<String> = text(headers, header::ACCESS_CONTROL_REQUEST_HEADERS)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if !self.any_header
            && let Some(h) = requested.iter().find(|h| !self.allow_headers.contains(h))
        {
            return Err(format!("CORS: header '{h}' is not allowed"));
        }
        let mut response = Response::new(full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        let methods: Vec<&str> = self.allow_methods.iter().map(Method::as_str).collect();
        put(h, header::ACCESS_CONTROL_ALLOW_METHODS, &methods.join(", "));
        let allowed_headers = if self.any_header {
            requested.join(", ")
        } else {
            self.allow_headers.join(", ")
        };
        if !allowed_headers.is_empty() {
            put(h, header::ACCESS_CONTROL_ALLOW_HEADERS, &allowed_headers);
        }
        if let Some(age) = self.max_age_s {
            put(h, header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
        }
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        Ok(response)
    }

    /// Adds the CORS headers to a response to a request from an allowed `Origin`.
    pub fn decorate(&self, request_origin: Option<&str>, response: &mut Response<ResponseBody>) {
        let Some(origin) = request_origin else {
            return;
        };
        let h = response.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(allow) = self.allowed_origin(origin) else {
            return;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !self.expose_headers.is_empty() {
            put(
                h,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                &self.expose_headers.join(", "),
            );
        }
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn put(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(credentials: bool, origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            any_origin: origins.is_empty(),
            allow_methods: vec![Method::GET, Method::PUT],
            allow_headers: vec!["content-type".into(), "x-token".into()],
            any_header: false,
            expose_headers: vec!["X-Fc-Request-Id".into()],
            allow_credentials: credentials,
            max_age_s: Some(600),
        }
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn allowed_preflights_get_every_allowance() {
        let c = cors(true, &["https://app.example"]);
        let r = c
            .preflight(&preflight(
                "https://app.example",
                "PUT",
                "X-Token, content-type",
            ))
            .unwrap();
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-token");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], "Origin");
    }

    #[test]
    fn refused_preflights_say_why() {
        let c = cors(false, &["https://app.example"]);
        for (origin, method, headers, why) in [
            (
                "https://evil.example",
                "GET",
                "",
                "origin 'https://evil.example'",
            ),
            ("https://app.example", "DELETE", "", "method 'DELETE'"),
            (
                "https://app.example",
                "GET",
                "x-secret",
                "header 'x-secret'",
            ),
        ] {
            let e = c
                .preflight(&preflight(origin, method, headers))
                .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn responses_to_allowed_origins_are_readable() {
        let c = cors(false, &[]);
        let mut r = Response::new(full(bytes::Bytes::new()));
        c.decorate(Some("https://any.example"), &mut r);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            r.headers()["access-control-expose-headers"],
            "X-Fc-Request-Id"
        );
        let c = cors(true, &["https://app.example"]);
        let mut r = Response::new(full(bytes::Bytes::new()));
        c.decorate(Some("https://other.example"), &mut r);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert_eq!(r.headers()["vary"], "Origin");
    }
}
