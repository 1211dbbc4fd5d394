//! A minimal HTTP/1.1 client for loopback: the health gate's `GET` and the demo's webhook `POST`. Plain HTTP
//! only, one request per connection, bounded reads; nothing here follows redirects or speaks TLS.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_RESPONSE: u64 = 1024 * 1024;

async fn exchange(addr: &str, request: &[u8], body: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.write_all(request).await?;
    stream.write_all(body).await?;
    let mut resp = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| {
            format!(
                "not an HTTP response from {addr}: {:?}",
                text.chars().take(80).collect::<String>()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `POST` with the given headers: (status, body).
pub async fn post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    exchange(addr, req.as_bytes(), body).await
}

/// `GET` within `timeout`: the status code.
pub async fn get_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: haul-health\r\nConnection: close\r\n\r\n"
    );
    match tokio::time::timeout(timeout, exchange(&addr, req.as_bytes(), b"")).await {
        Ok(Ok((status, _))) => Ok(status),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!(
            "no answer from {addr} within {}",
            humantime::format_duration(timeout)
        )),
    }
}
