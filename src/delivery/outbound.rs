//! One outbound request: built from the journaled record (exact body bytes,
//! re-signed or passed through), sent on the target's pooled client.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::policy::{AttemptOutcome, parse_retry_after};
use crate::config::{Signing, TargetConfig};
use crate::journal::DeliveryRecord;
use crate::signature::{self, SigningKey};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Response bodies are read (so the connection can be reused) up to this much.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// A pooled client for one target: http or https, the system's roots plus the
/// target's `ca_file`. Redirects are never followed (hyper does not).
pub(crate) fn client(target: &TargetConfig) -> HttpClient {
    http_client(&target.ca_certs, target.concurrency.get() as usize)
}

/// A pooled HTTP/1.1 client for http and https URLs (also used by the CLI).
pub fn http_client(ca_certs: &[rustls_pki_types::CertificateDer<'static>], max_idle: usize) -> HttpClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config(ca_certs))
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

/// How a target's requests are signed, with keys derived once.
pub(crate) enum Signer {
    Resign(Vec<SigningKey>),
    Passthrough,
    Unsigned,
}

impl Signer {
    pub(crate) fn new(target: &TargetConfig) -> Self {
        match target.signing {
            Signing::Resign => Signer::Resign(
                target
                    .secrets
                    .iter()
                    .map(|secret| {
                        signature::signing_key_for_secret(secret.expose()).expect("validated at config load")
                    })
                    .collect(),
            ),
            Signing::Passthrough => Signer::Passthrough,
            Signing::None => Signer::Unsigned,
        }
    }
}

/// What varies per attempt.
pub(crate) struct AttemptInfo {
    pub number: u32,
    pub replay: bool,
    pub now_secs: u64,
    /// `hookrelay-enrichment`: "attached" or "failed" (enriching targets).
    pub enrichment: Option<&'static str>,
}

/// Builds the POST for one attempt; `None` only if a stored header value is
/// no longer valid (it was valid when received).
pub(crate) fn build_request(
    url: &Uri,
    signer: &Signer,
    record: &DeliveryRecord,
    info: &AttemptInfo,
) -> Result<Request<Full<Bytes>>, String> {
    let value =
        |text: &str| HeaderValue::from_str(text).map_err(|_| "a stored header is not valid".to_owned());
    let timestamp = info.now_secs.to_string();
    let (webhook_timestamp, webhook_signature) = match signer {
        Signer::Resign(keys) => {
            let entries: Vec<String> = keys
                .iter()
                .map(|key| signature::sign(key, &record.webhook_id, &timestamp, &record.body))
                .collect();
            (timestamp, Some(entries.join(" ")))
        }
        // A backfilled delivery has no signature of Parallel's to pass on.
        Signer::Passthrough => (
            record.webhook_timestamp.clone(),
            Some(record.webhook_signature.clone()).filter(|signature| !signature.is_empty()),
        ),
        Signer::Unsigned => (timestamp, None),
    };
    let mut request = Request::post(url.clone())
        .body(Full::new(Bytes::from(record.body.clone())))
        .map_err(|err| err.to_string())?;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, value(record.content_type.as_deref().unwrap_or("application/json"))?);
    headers.insert(USER_AGENT, HeaderValue::from_static(concat!("hookrelay/", env!("CARGO_PKG_VERSION"))));
    headers.insert(HeaderName::from_static(signature::HEADER_ID), value(&record.webhook_id)?);
    headers.insert(HeaderName::from_static(signature::HEADER_TIMESTAMP), value(&webhook_timestamp)?);
    if let Some(sig) = webhook_signature {
        headers.insert(HeaderName::from_static(signature::HEADER_SIGNATURE), value(&sig)?);
    }
    headers.insert(HeaderName::from_static("hookrelay-delivery"), value(&record.id.to_string())?);
    headers.insert(HeaderName::from_static("hookrelay-attempt"), HeaderValue::from(info.number));
    headers.insert(HeaderName::from_static("hookrelay-source"), value(&record.source)?);
    if info.replay {
        headers.insert(HeaderName::from_static("hookrelay-replay"), HeaderValue::from_static("1"));
    }
    if let Some(enrichment) = info.enrichment {
        headers.insert(HeaderName::from_static("hookrelay-enrichment"), HeaderValue::from_static(enrichment));
    }
    if record.webhook_id.starts_with(crate::parallel::BACKFILL_ID_PREFIX) {
        headers.insert(HeaderName::from_static("hookrelay-backfill"), HeaderValue::from_static("1"));
    }
    Ok(request)
}

/// Sends one request and reads (a bounded part of) the answer. The caller
/// applies the target's timeout around this.
pub(crate) async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> AttemptOutcome {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(err) => return AttemptOutcome::Failed(error_chain(&err)),
    };
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // Drain so the pooled connection can be reused; the content is not used.
    let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect().await;
    AttemptOutcome::Status { code, retry_after }
}

/// "client error (Connect): tcp connect error: Connection refused (os error 111)".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
