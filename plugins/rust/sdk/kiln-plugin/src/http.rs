//! A small blocking HTTP client over `wasi:http`, for plugins the operator
//! granted outbound access (`[grants] outbound` in the plugin's manifest;
//! docs/PLUGINS.md).
//!
//! ```ignore
//! let response = kiln_plugin::http::get("https://api.example.com/v1/items/42")?;
//! if response.status == 200 {
//!     let text = response.text();
//! }
//! ```
//!
//! A request no grant covers fails with [`Error::Denied`]. Redirects are
//! never followed: a 3xx is returned as it is, and following it is another
//! request, checked against the grants again. The job's budgets apply: a
//! body past `max_response_bytes` fails with [`Error::Body`] after the
//! bytes the budget allowed.

use std::fmt;

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit-http",
        world: "kiln:sdk-http/client",
        generate_all,
    });
}

use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use bindings::wasi::io::streams::StreamError;

/// A request to send with [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body (empty: none).
    pub body: Vec<u8>,
}

impl Request {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            ..Self::new("POST", url)
        }
    }

    /// A request with `method` and no header or body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no (whole) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The URL is not `http(s)://host[:port][/path]`, or a header is invalid.
    Invalid(String),
    /// The host refused the request: no outbound grant covers it, it
    /// resolves to a private address, or the job's request budget is spent.
    Denied,
    /// The request failed on the way: the `wasi:http` error code, e.g.
    /// `ConnectionRefused`, `HttpResponseTimeout`.
    Failed(String),
    /// The body failed after `read` bytes: cut at the job's
    /// `max_response_bytes`, or timed out.
    Body {
        /// Bytes read before the failure.
        read: usize,
        /// The `wasi:http` error code.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid request: {why}"),
            Error::Denied => f.write_str("HTTP request denied"),
            Error::Failed(code) => write!(f, "HTTP request failed: {code}"),
            Error::Body { read, message } => {
                write!(f, "HTTP response body failed after {read} bytes: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::internal(e.to_string())
    }
}

fn failed(code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error::Denied,
        other => Error::Failed(format!("{other:?}")),
    }
}

/// `GET`s `url`.
pub fn get(url: &str) -> Result<Response, Error> {
    send(&Request::get(url))
}

/// Sends `request` and reads the whole response.
pub fn send(request: &Request) -> Result<Response, Error> {
    let (scheme, rest) = if let Some(rest) = request.url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = request.url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::Invalid(format!(
            "{}: not an http(s) URL",
            request.url
        )));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let fields: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    let headers = Fields::from_list(&fields).map_err(|e| Error::Invalid(format!("{e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    let invalid = |what: &str| Error::Invalid(format!("{}: bad {what}", request.url));
    outgoing
        .set_method(&method)
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("host"))?;
    outgoing
        .set_path_with_query(Some(path.as_str()))
        .map_err(|()| invalid("path"))?;
    let body = outgoing.body().map_err(|()| invalid("body"))?;
    let future = outgoing_handler::handle(outgoing, None).map_err(failed)?;
    if !request.body.is_empty() {
        let stream = body.write().map_err(|()| invalid("body"))?;
        for chunk in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("writing the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(failed)?;

    let response = loop {
        match future.get() {
            Some(result) => break result,
            None => future.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| Error::Failed("response taken twice".to_owned()))?
        .map_err(failed)?;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error::Failed("body taken twice".to_owned()))?;
    let body = read_body(&incoming)?;
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_body(incoming: &IncomingBody) -> Result<Vec<u8>, Error> {
    let stream = incoming
        .stream()
        .map_err(|()| Error::Failed("body stream taken twice".to_owned()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(e)) => {
                let message = match http_error_code(&e) {
                    Some(code) => format!("{code:?}"),
                    None => e.to_debug_string(),
                };
                return Err(Error::Body {
                    read: body.len(),
                    message,
                });
            }
        }
    }
}
