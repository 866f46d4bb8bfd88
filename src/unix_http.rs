//! HTTP/1.1 over a unix socket, client side: how the shim reaches the node daemon (Multus's
//! `multus.sock` protocol), and how the e2e suite drives its fixtures. One connection per request,
//! no keep-alive (as Multus's shim), everything under one deadline.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::path::Path;
use std::time::Duration;

/// What came back: the status code and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send one request and read the whole reply, within `timeout`.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        request_over(stream, method, path, content_type, body).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))?
}

/// One request over an open connection (a unix socket, or TCP for the daemon's metrics port).
pub async fn request_over<IO>(
    io: IO,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> std::io::Result<Reply>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("connection", "close");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(std::io::Error::other)?;
        let res = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes()
            .to_vec();
        driver.abort();
        Ok(Reply { status, body })
    }
}

/// [`request`] from blocking code, on a current-thread runtime of its own.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(request(socket, method, path, content_type, body, timeout))
}
