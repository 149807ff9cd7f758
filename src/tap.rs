//! `hookrelay tap`: a consumer for trying things out. It verifies each request
//! with the target's secret, prints one line about it, and answers 200 when
//! the signature verifies (401 when it does not, as a real consumer would).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::envelope::Envelope;
use crate::signature::{SignedHeaders, Verifier};
use crate::time::rfc3339;

const MAX_BODY: usize = 16 << 20;

/// Serves until the process is stopped; each request prints one line to stdout.
pub async fn run(listener: TcpListener, verifier: Verifier) -> std::io::Result<()> {
    let verifier = Arc::new(verifier);
    loop {
        let (stream, _) = listener.accept().await?;
        let verifier = verifier.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let verifier = verifier.clone();
                async move { Ok::<_, Infallible>(receive(request, &verifier).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(request: Request<hyper::body::Incoming>, verifier: &Verifier) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let verdict =
        SignedHeaders::parse(header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"))
            .and_then(|signed| verifier.verify(&signed, &body, now as i64));
    let envelope = Envelope::from_body(&body);
    let status = match verdict {
        Ok(()) => "verified".to_owned(),
        Err(err) => format!("REJECTED ({})", err.code()),
    };
    let line = format!(
        "{} {status} id={} type={} attempt={} delivery={} replay={} bytes={}",
        rfc3339(now),
        header("webhook-id").unwrap_or("-"),
        envelope.event_type.as_deref().unwrap_or("-"),
        header("hookrelay-attempt").unwrap_or("-"),
        header("hookrelay-delivery").unwrap_or("-"),
        header("hookrelay-replay").unwrap_or("0"),
        body.len()
    );
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    answer(if verdict.is_ok() { StatusCode::OK } else { StatusCode::UNAUTHORIZED })
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"")));
    *response.status_mut() = status;
    response
}
