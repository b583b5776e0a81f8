//! Sending one admitted request: resolve, check every address, connect to a
//! checked one (TLS with SNI for `https`), send over HTTP/1.1, and hand the
//! guest a body that stops at the job's byte budget and at the request's
//! time limit.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tracing::Instrument;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use super::grant::{OutboundGrant, RequestHost, Scheme, is_private};
use super::{HttpRequest, Ledger, Response};
use crate::audit::{Audit, Capability, Denial};

/// Where an admitted request goes.
pub(super) struct Target {
    pub(super) scheme: Scheme,
    pub(super) host: RequestHost,
    pub(super) port: u16,
    pub(super) allow_private: bool,
    /// The grant it matched.
    pub(super) grant: OutboundGrant,
}

impl Target {
    fn host_str(&self) -> String {
        match &self.host {
            RequestHost::Name(n) => n.clone(),
            RequestHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            RequestHost::Ip(ip) => ip.to_string(),
        }
    }

    /// The addresses to connect to, every one checked: a name resolving to
    /// any private address is refused as a whole.
    async fn addresses(&self) -> Result<Vec<SocketAddr>, Refusal> {
        let addrs: Vec<SocketAddr> = match &self.host {
            RequestHost::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            RequestHost::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await
                .map_err(|e| {
                    Refusal::Failed(Error::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    })
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(Refusal::Failed(Error::DestinationNotFound));
        }
        for addr in &addrs {
            let ip = addr.ip();
            if is_private(ip) && !self.allow_private && !self.grant.names_ip(ip) {
                return Err(Refusal::Denied(format!(
                    "{}://{}:{} resolves to the private address {ip}",
                    self.scheme.as_str(),
                    self.host_str(),
                    self.port
                )));
            }
        }
        Ok(addrs)
    }
}

/// Why a request did not get a response.
enum Refusal {
    /// The policy refused it: audited, `HTTP-request-denied`.
    Denied(String),
    /// It failed on the way.
    Failed(Error),
}

/// The job's response byte budget.
pub(super) struct BodyBudget {
    pub(super) ledger: Arc<Ledger>,
    pub(super) limit: usize,
}

/// Sends `request` to `target`, by `until`, in a client span under
/// `parent`.
pub(super) async fn send(
    mut request: http::Request<WasiBody>,
    parent: tracing::Span,
    target: Target,
    until: tokio::time::Instant,
    budget: BodyBudget,
    audit: Audit,
    ledger: Arc<Ledger>,
) -> Result<Response, Error> {
    let started = Instant::now();
    let method = request.method().clone();
    let span = tracing::info_span!(
        target: "kiln::http",
        parent: &parent,
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        http.request.method = %method,
        server.address = %target.host_str(),
        server.port = target.port,
        url.scheme = target.scheme.as_str(),
        url.path = request.uri().path(),
        kiln.grant = %target.grant,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let grant: Arc<str> = Arc::from(target.grant.to_string());
    for (name, value) in super::trace_headers(&span) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    let sent = tokio::time::timeout_at(until, exchange(request, &target, until, budget))
        .instrument(span.clone())
        .await
        .unwrap_or(Err(Refusal::Failed(Error::HttpResponseTimeout)));
    let status = sent.as_ref().ok().map(|(r, _)| r.status().as_u16());
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    match sent {
        Ok(response) => {
            ledger.record(HttpRequest {
                grant,
                status,
                duration: started.elapsed(),
            });
            Ok(response)
        }
        Err(Refusal::Denied(detail)) => {
            span.record("error.type", "denied");
            audit.deny(Denial::new(Capability::Http, &detail));
            Err(Error::HttpRequestDenied)
        }
        Err(Refusal::Failed(error)) => {
            span.record("error.type", tracing::field::display(&error));
            tracing::debug!(target: "kiln::http", parent: &span, %error, "request failed");
            ledger.record(HttpRequest {
                grant,
                status: None,
                duration: started.elapsed(),
            });
            Err(error)
        }
    }
}

async fn exchange(
    mut request: http::Request<WasiBody>,
    target: &Target,
    until: tokio::time::Instant,
    budget: BodyBudget,
) -> Result<Response, Refusal> {
    let addrs = target.addresses().await?;
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = match (tcp, last) {
        (Some(tcp), _) => tcp,
        (None, Some(e)) => return Err(Refusal::Failed(Error::Connect(e))),
        (None, None) => return Err(Refusal::Failed(Error::DestinationNotFound)),
    };
    // `set_nodelay` failing only costs latency.
    let _ = tcp.set_nodelay(true);
    // The request line carries only the path: no proxy is involved.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| Refusal::Failed(Error::HttpRequestUriInvalid))?;
    *request.uri_mut() = path;
    let driver = match target.scheme {
        Scheme::Http => handshake(TokioIo::new(tcp)).await,
        Scheme::Https => {
            let config = tls_config().map_err(Refusal::Failed)?;
            let name = match &target.host {
                RequestHost::Name(n) => rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|_| Refusal::Failed(Error::HttpRequestUriInvalid))?,
                RequestHost::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Refusal::Failed(Error::Tls(e)))?;
            handshake(TokioIo::new(tls)).await
        }
    };
    let (mut sender, conn) = driver.map_err(|e| Refusal::Failed(Error::Hyper(e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Refusal::Failed(Error::Hyper(e)))?;
    let response = response.map(|incoming| {
        Limited {
            incoming,
            budget,
            timeout: Box::pin(tokio::time::sleep_until(until)),
            cut: false,
            done: false,
        }
        .boxed_unsync()
    });
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        conn.await;
        Ok(())
    });
    Ok((response, io))
}

/// The HTTP/1.1 handshake, with the connection driven by its own task
/// (aborted when the connection's guard is dropped).
async fn handshake<T>(
    io: TokioIo<T>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<WasiBody>,
        AbortOnDrop,
    ),
    hyper::Error,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    Ok((sender, AbortOnDrop(tokio::spawn(conn))))
}

/// The connection task; aborted with the response that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Future for AbortOnDrop {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The process's TLS client config: the system's roots, rustls on `ring`.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store cannot parse is skipped, as
                // rustls-native-certs advises.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("no system root certificates: {:?}", found.errors));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::InternalError(Some(e)))
}

/// A response body that stops at the job's byte budget (the frame that
/// passes it is cut there, then `HTTP-response-body-size`) and at the
/// request's time limit.
struct Limited {
    incoming: hyper::body::Incoming,
    budget: BodyBudget,
    timeout: Pin<Box<tokio::time::Sleep>>,
    cut: bool,
    done: bool,
}

impl Body for Limited {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cut {
            self.done = true;
            return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                self.budget.limit as u64,
            )))));
        }
        if self.timeout.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = match ready!(Pin::new(&mut self.incoming).poll_frame(cx)) {
            None => {
                self.done = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                self.done = true;
                return Poll::Ready(Some(Err(Error::Hyper(e))));
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
        };
        let limit = self.budget.limit;
        let before = self
            .budget
            .ledger
            .read
            .fetch_add(data.len(), Ordering::Relaxed);
        let room = limit.saturating_sub(before);
        if data.len() > room {
            self.budget.ledger.read.store(limit, Ordering::Relaxed);
            data.truncate(room);
            self.cut = true;
            if data.is_empty() {
                return self.poll_frame(cx);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}
