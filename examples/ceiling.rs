//! The durable ceiling: the least a durable webhook intake can do, for `bench/` to measure haul against
//! (issue 12). Not part of haul; built with `cargo build --release --example ceiling`.
//!
//! `POST /hooks/<app>` reads the body (capped, with a deadline), checks `X-Hub-Signature-256` (HMAC-SHA256 of
//! the body with the secret, compared in constant time), takes the `X-GitHub-Delivery` id, and hands one
//! record (`<delivery id> <sha256 of the body>\n`) to a writer thread. The writer takes every record that is
//! waiting, appends them with one `write`, `fdatasync`s the file once for the group, and only then answers
//! everyone in it: `202`. `GET /healthz` answers `ok` (the harness waits on it).
//!
//! The HTTP side has haul's shape, so the difference between the two is what haul does beyond this: axum on
//! tokio with 2 worker threads, served by hyper's HTTP/1.1 connection builder with the same header deadline,
//! connection cap and peer address, the body read the same way. What it does not do, and haul does: parse the
//! JSON, look the delivery id and the body up (replays), keep an audit row with its indexes in SQLite, log.
//!
//!   ceiling --listen 127.0.0.1:PORT --secret-file FILE --out FILE [--no-sync]
//!
//! `--no-sync` leaves out the `fdatasync` (records are still appended by the writer thread): a server that is
//! cheap to answer, to show what the load generator itself can send.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// haul's defaults: `max_body` 1 MiB, `body_timeout` 10 s, `header_timeout` 10 s, 1,024 connections.
const MAX_BODY: usize = 1 << 20;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 1024;
/// At most this many records per group (as haul's store writer).
const MAX_GROUP: usize = 512;

/// A record to append, and who to tell once it is on disk.
type Job = (Vec<u8>, tokio::sync::oneshot::Sender<bool>);

struct Ceiling {
    secret: Vec<u8>,
    writer: mpsc::Sender<Job>,
}

struct Args {
    listen: SocketAddr,
    secret_file: String,
    out: String,
    sync: bool,
}

fn usage() -> ! {
    eprintln!("usage: ceiling --listen ADDR:PORT --secret-file FILE --out FILE [--no-sync]");
    std::process::exit(2)
}

fn args() -> Args {
    let (mut listen, mut secret_file, mut out, mut sync) = (None, None, None, true);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = it.next().and_then(|v| v.parse().ok()),
            "--secret-file" => secret_file = it.next(),
            "--out" => out = it.next(),
            "--no-sync" => sync = false,
            _ => usage(),
        }
    }
    match (listen, secret_file, out) {
        (Some(listen), Some(secret_file), Some(out)) => Args {
            listen,
            secret_file,
            out,
            sync,
        },
        _ => usage(),
    }
}

fn main() {
    let args = args();
    let secret = std::fs::read(&args.secret_file).unwrap_or_else(|e| {
        eprintln!("ceiling: {}: {e}", args.secret_file);
        std::process::exit(1)
    });
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .unwrap_or_else(|e| {
            eprintln!("ceiling: {}: {e}", args.out);
            std::process::exit(1)
        });
    let (tx, rx) = mpsc::channel::<Job>();
    let sync = args.sync;
    std::thread::Builder::new()
        .name("ceiling-writer".into())
        .spawn(move || writer(file, sync, rx))
        .expect("start the writer thread");
    let state = Arc::new(Ceiling { secret, writer: tx });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .unwrap_or_else(|e| {
                eprintln!("ceiling: bind {}: {e}", args.listen);
                std::process::exit(1)
            });
        eprintln!(
            "ceiling: listening on {} ({})",
            args.listen,
            if sync { "fdatasync per group" } else { "no sync" }
        );
        serve(listener, state).await;
    });
}

/// Group commit: take every record that is waiting, append them with one write, sync once, answer all.
fn writer(mut file: File, sync: bool, rx: mpsc::Receiver<Job>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        while waiting.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => waiting.push(j),
                Err(_) => break,
            }
        }
        buf.clear();
        for (record, _) in &waiting {
            buf.extend_from_slice(record);
        }
        let written = file
            .write_all(&buf)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(e) = &written {
            eprintln!("ceiling: cannot append: {e}");
        }
        for (_, done) in waiting.drain(..) {
            let _ = done.send(written.is_ok());
        }
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn hook(
    State(st): State<Arc<Ceiling>>,
    _peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(_app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "{\"error\":\"body over max_body\"}\n",
        );
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(status) => return reply(status, "{\"error\":\"could not read the body\"}\n"),
    };
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok());
    let Some(sig) = sig.filter(|s| s.len() == 32) else {
        return reply(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"signature does not match\"}\n",
        );
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&st.secret).expect("hmac takes any key length");
    mac.update(&body);
    if !bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&sig)) {
        return reply(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"signature does not match\"}\n",
        );
    }
    // The record names the delivery; an id that could break the record's line is refused, as haul refuses
    // one that is not a valid delivery id.
    let delivery = headers
        .get("x-github-delivery")
        .map(HeaderValue::as_bytes)
        .filter(|d| {
            !d.is_empty()
                && d.len() <= 128
                && d.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
    let Some(delivery) = delivery else {
        return reply(
            StatusCode::BAD_REQUEST,
            "{\"error\":\"missing or invalid delivery id\"}\n",
        );
    };
    let mut record = Vec::with_capacity(delivery.len() + 66);
    record.extend_from_slice(delivery);
    record.push(b' ');
    record.extend_from_slice(hex::encode(Sha256::digest(&body)).as_bytes());
    record.push(b'\n');

    let (done, on_disk) = tokio::sync::oneshot::channel();
    if st.writer.send((record, done)).is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"writer stopped\"}\n",
        );
    }
    match on_disk.await {
        Ok(true) => reply(StatusCode::ACCEPTED, "{\"status\":\"queued\"}\n"),
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"could not record\"}\n",
        ),
    }
}

/// At most `MAX_BODY` bytes within `BODY_TIMEOUT`, frame by frame (as haul reads a body).
async fn read_body(body: Body) -> Result<Vec<u8>, StatusCode> {
    let mut body = body;
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(StatusCode::PAYLOAD_TOO_LARGE);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// haul's accept loop (`server::http::serve`) without its graceful shutdown: HTTP/1.1 only, a header
/// deadline, a cap on connections, each request told its peer address.
async fn serve(listener: tokio::net::TcpListener, state: Arc<Ceiling>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;

    let router = Router::new()
        .route("/hooks/{app}", post(hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ceiling: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let router = router.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc =
                hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().call(req)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
