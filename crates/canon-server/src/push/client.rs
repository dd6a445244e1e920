//! The HTTP client of calls to subscribers and Dapr apps: connections to one host, kept open
//! between requests. Over HTTP/1.1 each request in flight has a connection of its own and a
//! finished one goes back to an idle list; over h2c every request shares one HTTP/2 connection.
//! A push worker keeps one for its deliveries; each configured Dapr app has one, made at start-up,
//! for its discovery and its job ticks.
//!
//! Built on hyper's connection API rather than on reqwest: a push worker sends many small
//! requests to one host, and reqwest's general-purpose pool (checkout, connector, per-request
//! URL and header handling) halved the request rate of a plain loop against the same local
//! subscriber (BENCHMARKS.md, "Push without reqwest").

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::subs::PushProtocol;

/// The largest answer read from a subscriber: answers are a status, or one per batch entry.
const MAX_ANSWER: usize = 1 << 20;

/// Idle HTTP/1.1 connections kept at most (a worker never has more requests in flight than its
/// concurrency, so it never has more connections than that either).
const MAX_IDLE: usize = 1024;

type Body = Full<Bytes>;

/// A subscriber's answer, read in full.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Connections to one subscriber: one `http://` host and port.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// For `connect`: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// The `Host` header (HTTP/1.1) or the `:authority` (HTTP/2).
    authority: HeaderValue,
    protocol: PushProtocol,
    timeout: Duration,
    /// HTTP/1.1: connections with nothing in flight, the most recently used last.
    idle: Mutex<Vec<http1::SendRequest<Body>>>,
    /// h2c: the connection every request shares, once dialled.
    shared: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

impl Subscriber {
    /// The client of the subscriber at `url` (its scheme, host and port; the path is the
    /// caller's). Fails for a URL without a host.
    pub(crate) fn new(
        url: &url::Url,
        protocol: PushProtocol,
        timeout: Duration,
    ) -> Result<Subscriber, String> {
        // An IPv6 address comes in brackets, as the URL and the Host header write it.
        let Some(host) = url.host_str() else {
            return Err(format!("{url} has no host"));
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let authority = HeaderValue::try_from(authority).map_err(|e| format!("{url}: {e}"))?;
        Ok(Subscriber {
            host: name,
            port,
            authority,
            protocol,
            timeout,
            idle: Mutex::new(Vec::new()),
            shared: tokio::sync::Mutex::new(None),
        })
    }

    /// POSTs `body` to `target` (origin form: `/path?query`) and reads the answer, all within
    /// the timeout. An error is a message for the delivery's record.
    pub(crate) async fn post(
        &self,
        target: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        self.request(Method::POST, target, headers, body).await
    }

    /// `post` with another method.
    pub(crate) async fn request(
        &self,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let send = async {
            let uri = match self.protocol {
                PushProtocol::Http => Uri::try_from(target),
                PushProtocol::H2c => Uri::try_from(format!(
                    "http://{}{target}",
                    self.authority.to_str().unwrap_or_default()
                )),
            }
            .map_err(|e| format!("request target {target}: {e}"))?;
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            *req.headers_mut() = headers;
            match self.protocol {
                PushProtocol::Http => self.send_http1(req).await,
                PushProtocol::H2c => self.send_h2c(req).await,
            }
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn send_http1(&self, mut req: Request<Body>) -> Result<Answer, String> {
        req.headers_mut().insert(HOST, self.authority.clone());
        let mut conn = match self.take_idle().await {
            Some(conn) => conn,
            None => self.dial_http1().await?,
        };
        let res = match conn.try_send_request(req).await {
            Ok(res) => res,
            // The connection closed before the request went out (the subscriber dropped an idle
            // connection): send it on a new one.
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    conn = self.dial_http1().await?;
                    conn.send_request(req).await.map_err(|e| describe(&e))?
                }
                None => return Err(describe(e.error())),
            },
        };
        let answer = read(res).await?;
        if !conn.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(answer)
    }

    /// An idle connection that is still open and ready, if there is one.
    async fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        loop {
            let mut conn = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            // Ready at once unless its last answer is still being wound up; an error means
            // it closed.
            if conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    async fn dial_http1(&self) -> Result<http1::SendRequest<Body>, String> {
        let io = self.connect().await?;
        let (conn, connection) = http1::handshake(io).await.map_err(|e| describe(&e))?;
        drive(connection);
        Ok(conn)
    }

    async fn send_h2c(&self, req: Request<Body>) -> Result<Answer, String> {
        let mut conn = {
            let mut shared = self.shared.lock().await;
            match shared.as_ref() {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let io = self.connect().await?;
                    let (conn, connection) = http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| describe(&e))?;
                    drive(connection);
                    shared.insert(conn).clone()
                }
            }
        };
        conn.ready().await.map_err(|e| describe(&e))?;
        let res = conn.send_request(req).await.map_err(|e| describe(&e))?;
        read(res).await
    }

    async fn connect(&self) -> Result<TokioIo<tokio::net::TcpStream>, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        // Requests are written whole; waiting to coalesce them only adds latency.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        Ok(TokioIo::new(stream))
    }
}

/// Runs a connection's I/O until it closes (when its last sender is dropped, or the peer
/// closes it).
fn drive(connection: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "subscriber connection ended");
        }
    });
}

async fn read(res: Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let (parts, body) = res.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `route` in the app at `base`: its request target under the path of `base` and its URL for
/// messages (`http://app:8000/v1` and `dapr/subscribe` give `/v1/dapr/subscribe` and
/// `http://app:8000/v1/dapr/subscribe`).
pub(crate) fn route(base: &url::Url, route: &str) -> (String, String) {
    let route = route.trim_start_matches('/');
    (
        format!("{}/{route}", base.path().trim_end_matches('/')),
        format!("{}/{route}", base.as_str().trim_end_matches('/')),
    )
}

/// A hyper error with its causes ("connection error: Connection reset by peer").
fn describe(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
