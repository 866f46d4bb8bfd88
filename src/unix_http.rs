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

/// Largest reply [`call`] reads (a CNI result is far smaller).
pub const MAX_REPLY: usize = 16 << 20;

/// [`request`] from blocking code, with no async runtime: the shim's path, which runs once per
/// CNI call and should cost no more than it must. HTTP/1.1 with `Connection: close`; the reply is
/// read to its `Content-Length`, its last chunk, or EOF, all within `timeout`.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<Reply> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))
    };
    let mut stream = connect(socket, deadline)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = content_type {
        head.push_str(&format!("content-type: {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(&out)?;
    // From here on the daemon has the request: a failure may come after it acted on it.
    let mut read = || -> std::io::Result<Reply> {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 16 << 10];
        loop {
            stream.set_read_timeout(Some(left()?))?;
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no reply in time",
                    ))
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_REPLY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("reply larger than {MAX_REPLY} bytes"),
                ));
            }
            if let Some(reply) = parse_reply(&buf)? {
                return Ok(reply);
            }
        }
        // EOF before the reply was complete: that ends only a reply that declared no length.
        match parse_head(&buf)? {
            Some((status, body_at, Framing::UntilEof)) => Ok(Reply {
                status,
                body: buf[body_at..].to_vec(),
            }),
            Some(_) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of the reply",
            )),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            )),
        }
    };
    read().map_err(|e| std::io::Error::new(e.kind(), AfterSend(e)))
}

/// The error of a call that failed after its request was sent: the server may have acted on
/// it (started work, and been killed mid-way) — unlike a failure to connect or to send.
#[derive(Debug)]
pub struct AfterSend(pub std::io::Error);

impl std::fmt::Display for AfterSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AfterSend {}

/// Whether `e` came after the request was sent (see [`AfterSend`]).
pub fn after_send(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<AfterSend>())
}

/// Connect within the deadline: a blocking connect to a unix socket waits for as long as the
/// listener's backlog is full (a daemon at its connection limit, or stopped), so connect
/// non-blocking and retry while it answers EAGAIN.
fn connect(
    socket: &Path,
    deadline: std::time::Instant,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let path = socket.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a plain syscall; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    loop {
        use std::os::fd::AsRawFd;
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                len,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Some(libc::EAGAIN) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the daemon's socket accepted no connection in time",
                ))
            }
            _ => return Err(e),
        }
    }
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// How the body is framed.
enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

/// The status line and headers, once complete: status, where the body starts, its framing.
fn parse_head(buf: &[u8]) -> std::io::Result<Option<(u16, usize, Framing)>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 << 10 {
            return Err(bad("reply headers larger than 64 KiB"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("reply headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no HTTP status line"));
    };
    if !proto.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1 reply"));
    }
    let status: u16 = code.parse().map_err(|_| bad("bad HTTP status code"))?;
    let mut framing = Framing::UntilEof;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked;
        } else if k.eq_ignore_ascii_case("content-length") && !matches!(framing, Framing::Chunked) {
            framing = Framing::Length(v.parse().map_err(|_| bad("bad content-length"))?);
        }
    }
    // No body at all for these, whatever the headers say.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((status, end + 4, framing)))
}

/// The whole reply, once it is all in `buf`.
fn parse_reply(buf: &[u8]) -> std::io::Result<Option<Reply>> {
    let Some((status, at, framing)) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[at..];
    match framing {
        Framing::Length(n) if rest.len() >= n => Ok(Some(Reply {
            status,
            body: rest[..n].to_vec(),
        })),
        Framing::Length(_) | Framing::UntilEof => Ok(None),
        Framing::Chunked => Ok(dechunk(rest)?.map(|body| Reply { status, body })),
    }
}

/// A chunked body, once its last chunk is in.
fn dechunk(mut rest: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_field = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        let data = eol + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let tail = &rest[data..];
            return Ok(
                (tail.starts_with(b"\r\n") || tail.windows(4).any(|w| w == b"\r\n\r\n"))
                    .then_some(body),
            );
        }
        if size > MAX_REPLY {
            return Err(bad("chunk larger than the reply cap"));
        }
        if rest.len() - data < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[data..data + size]);
        rest = &rest[data + size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_chunk_sizes_and_cut_replies_are_errors_not_panics() {
        assert!(parse_reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab"
        )
        .is_err());
        assert!(parse_reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7fffffffffffffff\r\nab"
        )
        .is_err());
        // A reply cut short by EOF: an error, never a short body.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"Resu")
                .unwrap();
        });
        let e = call(
            &sock,
            "POST",
            "/cni",
            None,
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert!(after_send(&e), "the request had been sent");
        t.join().unwrap();
    }

    #[test]
    fn replies_are_read_by_length_by_chunks_or_to_eof() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert!(
            parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel")
                .unwrap()
                .is_none()
        );
        let c = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_reply(c).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, &b"abcde"[..]));
        assert!(
            parse_reply(&c[..c.len() - 3]).unwrap().is_none(),
            "last chunk not complete"
        );
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n\r\nto eof")
            .unwrap()
            .is_none());
        let r = parse_reply(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.body.is_empty());
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        ] {
            assert!(
                parse_reply(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::time::Instant::now();
        let e = call(
            &sock,
            "POST",
            "/cni",
            None,
            b"{}".to_vec(),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(l);
        let e = call(&sock, "GET", "/", None, vec![], Duration::from_secs(1)).unwrap_err();
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "no listener: refused at once"
        );
    }
}
