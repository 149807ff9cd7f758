//! Inbound answers over HTTP, HTTPS/1.1 and HTTPS/h2 against a real gateway
//! with a real journal.

use std::time::Duration;

use crate::common::*;
use hookrelay::journal::DeliveryId;
use hookrelay::signature;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn delivery_id(reply: &Reply) -> DeliveryId {
    reply.json()["id"].as_str().expect("an id").parse().expect("a delivery id")
}

#[tokio::test]
async fn accepts_and_journals_the_exact_bytes_over_every_transport() {
    for (i, transport) in ALL_TRANSPORTS.into_iter().enumerate() {
        let gateway = TestGateway::for_transport(transport, Options::default()).await;
        let body = format!(
            "{{\"type\":\"monitor.event.detected\",\"data\":{{\"monitor_id\":\"monitor_{i}\"}},  \"pad\": \"\\u00e9\"}}"
        );
        let id = format!("whevent_{transport:?}");
        let ts = now();
        let reply =
            gateway.send(transport, signed_request("parallel", SECRET, &id, ts, body.as_bytes())).await;
        assert_eq!(reply.status, 200, "{transport:?}: {}", reply.text());
        assert_eq!(reply.json()["duplicate"], false);
        let record = gateway.journal.get(delivery_id(&reply)).unwrap().expect("journaled");
        assert_eq!(record.body, body.as_bytes(), "byte-exact body");
        assert_eq!(record.source, "parallel");
        assert_eq!(record.webhook_id, id);
        assert_eq!(record.webhook_timestamp, ts.to_string());
        assert_eq!(record.event_type.as_deref(), Some("monitor.event.detected"));
        assert_eq!(record.monitor_id, Some(format!("monitor_{i}")));
        assert_eq!(record.content_type.as_deref(), Some("application/json"));
        assert_eq!(gateway.journal.len(), 1);
    }
}

#[tokio::test]
async fn both_key_modes_and_every_rotated_secret_verify() {
    let gateway = TestGateway::start().await;
    let body = MONITOR_EVENT.as_bytes();
    let ts = now().to_string();
    let raw_key = signature::SigningKey::from_bytes(SECRET.as_bytes());
    let decoded_key = signature::signing_key_for_secret(SECRET).unwrap();
    let rotated_key = signature::signing_key_for_secret(ROTATED_SECRET).unwrap();
    for (name, key) in [("raw", raw_key), ("decoded", decoded_key), ("rotated", rotated_key)] {
        let id = format!("evt_{name}");
        let sig = signature::sign(&key, &id, &ts, body);
        let reply = gateway
            .send(
                Transport::Http,
                request(
                    "parallel",
                    &[("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)],
                    body,
                ),
            )
            .await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    }
    // Several entries, one of them right, plus a non-v1 entry: accepted.
    let good = signature::sign(&signature::signing_key_for_secret(SECRET).unwrap(), "evt_multi", &ts, body);
    let header = format!("v1a,{} v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {good}", &good[3..]);
    let reply = gateway
        .send(
            Transport::Http,
            request(
                "parallel",
                &[("webhook-id", "evt_multi"), ("webhook-timestamp", &ts), ("webhook-signature", &header)],
                body,
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn a_signature_for_one_source_is_rejected_on_another() {
    let gateway = TestGateway::start().await;
    let reply = gateway.post_signed(Transport::Http, "other", "evt_1", MONITOR_EVENT).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "invalid_signature");
    assert!(gateway.journal.is_empty());
}

#[tokio::test]
async fn duplicates_answer_the_original_id_and_are_not_journaled_again() {
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(transport, Options::default()).await;
        let first = gateway.post_signed(transport, "parallel", "whevent_dup", MONITOR_EVENT).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.json()["duplicate"], false);
        // A retry from the sender: same id, new timestamp and signature.
        let again = gateway.post_signed(transport, "parallel", "whevent_dup", MONITOR_EVENT).await;
        assert_eq!(again.status, 200, "{transport:?}");
        assert_eq!(again.json()["duplicate"], true);
        assert_eq!(again.json()["id"], first.json()["id"]);
        assert_eq!(gateway.journal.len(), 1);
    }
}

#[tokio::test]
async fn malformed_headers_are_400_on_every_transport() {
    let ts = now().to_string();
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("webhook-timestamp", &ts), ("webhook-signature", sig)], "missing_header"),
        (&[("webhook-id", "evt"), ("webhook-signature", sig)], "missing_header"),
        (&[("webhook-id", "evt"), ("webhook-timestamp", &ts)], "missing_header"),
        (
            &[("webhook-id", "evt"), ("webhook-timestamp", "yesterday"), ("webhook-signature", sig)],
            "malformed_header",
        ),
    ];
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(transport, Options::default()).await;
        for (headers, code) in cases {
            let reply = gateway.send(transport, request("parallel", headers, MONITOR_EVENT.as_bytes())).await;
            assert_eq!(reply.status, 400, "{transport:?} {headers:?}");
            assert_eq!(reply.error_code(), code);
        }
        assert!(gateway.journal.is_empty());
    }
}

#[tokio::test]
async fn bad_signatures_and_timestamps_are_401_and_say_which() {
    let body = MONITOR_EVENT.as_bytes();
    let right = signed_request("parallel", SECRET, "evt_ok", now(), body);
    let right_sig = right.headers()["webhook-signature"].to_str().unwrap().to_owned();
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(transport, Options::default()).await;
        let wrong_secret =
            gateway.send(transport, signed_request("parallel", "whsec_d3Jvbmc=", "evt", now(), body)).await;
        assert_eq!(wrong_secret.status, 401);
        assert_eq!(wrong_secret.error_code(), "invalid_signature");
        assert!(!wrong_secret.text().contains(&right_sig[3..]), "never shows the expected signature");

        // The right signature over other bytes.
        let ts = right.headers()["webhook-timestamp"].to_str().unwrap();
        let tampered = request(
            "parallel",
            &[("webhook-id", "evt_ok"), ("webhook-timestamp", ts), ("webhook-signature", &right_sig)],
            &[body, b" "].concat(),
        );
        assert_eq!(gateway.send(transport, tampered).await.status, 401);

        // Well past the 300 s tolerance: the gateway reads its clock a moment
        // later, and a second may tick over in between (seen on a busy CI box).
        let stale =
            gateway.send(transport, signed_request("parallel", SECRET, "evt_old", now() - 330, body)).await;
        assert_eq!((stale.status, stale.error_code().as_str()), (401, "timestamp_too_old"));
        let future =
            gateway.send(transport, signed_request("parallel", SECRET, "evt_new", now() + 330, body)).await;
        assert_eq!((future.status, future.error_code().as_str()), (401, "timestamp_too_new"));
        assert!(gateway.journal.is_empty());
    }
}

#[tokio::test]
async fn unknown_sources_paths_and_methods() {
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(transport, Options::default()).await;
        let unknown = gateway.post_signed(transport, "nope", "evt", MONITOR_EVENT).await;
        assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "unknown_source"));
        for path in ["/", "/hooks/", "/hooks/parallel/extra", "/hooks/../hooks/parallel", "/admin"] {
            let mut req = signed_request("parallel", SECRET, "evt", now(), b"{}");
            *req.uri_mut() = path.parse().unwrap();
            let reply = gateway.send(transport, req).await;
            assert_eq!(reply.status, 404, "{transport:?} {path}");
        }
        let mut get = signed_request("parallel", SECRET, "evt", now(), b"");
        *get.method_mut() = hyper::Method::GET;
        let reply = gateway.send(transport, get).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (405, "method_not_allowed"));
        assert_eq!(reply.headers["allow"], "POST");
        assert!(gateway.journal.is_empty());
    }
}

#[tokio::test]
async fn bodies_over_max_body_are_413_declared_or_streamed() {
    let big = format!("{{\"type\":\"x\",\"pad\":\"{}\"}}", "a".repeat(2048));
    let exact = format!("{{\"pad\":\"{}\"}}", "a".repeat(1024 - 10));
    assert_eq!(exact.len(), 1024);
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(
            transport,
            Options { server: "max_body = \"1KiB\"".into(), ..Options::default() },
        )
        .await;
        let declared = gateway.post_signed(transport, "parallel", "evt_big", &big).await;
        assert_eq!(
            (declared.status, declared.error_code().as_str()),
            (413, "body_too_large"),
            "{transport:?}"
        );
        let at_limit =
            gateway.post_signed(transport, "parallel", &format!("evt_exact_{transport:?}"), &exact).await;
        assert_eq!(at_limit.status, 200, "{transport:?}: a body of exactly max_body is fine");
        assert_eq!(gateway.journal.len(), 1);
    }

    // Chunked, with no content-length: cut off at the limit, still 413.
    let plain =
        TestGateway::with(Options { server: "max_body = \"1KiB\"".into(), ..Options::default() }).await;
    let mut stream = tokio::net::TcpStream::connect(plain.addr).await.unwrap();
    let head = signed_request("parallel", SECRET, "evt_chunked", now(), big.as_bytes());
    let text = raw_head(&head, "transfer-encoding: chunked");
    stream.write_all(text.as_bytes()).await.unwrap();
    for chunk in big.as_bytes().chunks(512) {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(plain.journal.is_empty());
}

/// The head of a signed request as raw HTTP/1.1 text, with `framing` (a
/// content-length or transfer-encoding line), for tests that send bytes by hand.
fn raw_head(request: &hyper::Request<http_body_util::Full<bytes::Bytes>>, framing: &str) -> String {
    let mut text = format!("POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\n{framing}\r\n");
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        text.push_str(&format!("{name}: {}\r\n", request.headers()[name].to_str().unwrap()));
    }
    text.push_str("\r\n");
    text
}

/// Reads until the peer closes or a full small response has arrived.
async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    });
                    if len.is_some_and(|len| body.len() >= len) {
                        break;
                    }
                }
            }
            Err(_) => panic!("no response within 10s: {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_headers_get_408_over_http_and_https() {
    // A second: room for a TLS handshake of a debug build on a busy machine,
    // which counts against the same deadline.
    let options = Options { server: "header_timeout = \"1s\"".into(), ..Options::default() };
    let gateway = TestGateway::for_transport(Transport::Http, options.clone()).await;
    let tls_gateway = TestGateway::for_transport(Transport::Https1, options).await;
    let partial_head = b"POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\nwebhook-id: evt\r\n";

    let mut plain = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    plain.write_all(partial_head).await.unwrap();
    // Keep trickling: bytes arriving do not extend the deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = plain.write_all(b"x-slow: 1\r\n").await;
    }
    let response = read_response(&mut plain).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.contains("\"error\":\"header_timeout\""), "{response}");

    let connector = tokio_rustls::TlsConnector::from(tls_gateway.client_tls());
    let tcp = tokio::net::TcpStream::connect(tls_gateway.addr).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    tls.write_all(partial_head).await.unwrap();
    let response = read_response(&mut tls).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");

    // An idle connection that never starts a request is closed without a word.
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let response = read_response(&mut idle).await;
    assert_eq!(response, "");

    // An unfinished TLS handshake is cut off at the same deadline.
    let mut silent = tokio::net::TcpStream::connect(tls_gateway.addr).await.unwrap();
    assert_eq!(read_response(&mut silent).await, "");

    // The gateways still serve others.
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "evt_after", MONITOR_EVENT).await.status,
        200
    );
    assert_eq!(
        tls_gateway.post_signed(Transport::Https2, "parallel", "evt_after", MONITOR_EVENT).await.status,
        200
    );
}

#[tokio::test]
async fn a_keep_alive_connection_gets_a_fresh_head_deadline_per_request() {
    let gateway =
        TestGateway::with(Options { server: "header_timeout = \"1s\"".into(), ..Options::default() }).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    // Three pauses of 600 ms: together past the deadline, each well inside it.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let body = MONITOR_EVENT;
        let req = signed_request("parallel", SECRET, &format!("evt_ka_{i}"), now(), body.as_bytes());
        let mut text = raw_head(&req, &format!("content-length: {}", body.len()));
        text.push_str(body);
        stream.write_all(text.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "request {i}: {response:?}");
    }
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let gateway =
        TestGateway::with(Options { server: "body_timeout = \"300ms\"".into(), ..Options::default() }).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let req = signed_request("parallel", SECRET, "evt_slow_body", now(), MONITOR_EVENT.as_bytes());
    let text = raw_head(&req, &format!("content-length: {}", MONITOR_EVENT.len()));
    stream.write_all(text.as_bytes()).await.unwrap();
    stream.write_all(&MONITOR_EVENT.as_bytes()[..10]).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.contains("body_timeout"));
    assert!(gateway.journal.is_empty());
}

#[tokio::test]
async fn over_the_source_rate_limit_is_429_with_retry_after() {
    let sources = format!(
        "[sources.parallel]\nsecrets = [\"{SECRET}\"]\nrate_limit = {{ per_second = 1, burst = 2 }}\n"
    );
    for transport in ALL_TRANSPORTS {
        let gateway = TestGateway::for_transport(
            transport,
            Options { sources: Some(sources.clone()), ..Options::default() },
        )
        .await;
        // Requests that do not verify spend none of the budget.
        for i in 0..4 {
            let forged = signed_request(
                "parallel",
                "whsec_d3Jvbmc=",
                &format!("evt_forged_{i}"),
                now(),
                MONITOR_EVENT.as_bytes(),
            );
            assert_eq!(gateway.send(transport, forged).await.status, 401);
        }
        let mut statuses = Vec::new();
        let mut limited = None;
        for i in 0..6 {
            let reply =
                gateway.post_signed(transport, "parallel", &format!("evt_rl_{i}"), MONITOR_EVENT).await;
            statuses.push(reply.status);
            if reply.status == 429 {
                limited.get_or_insert(reply);
            }
        }
        assert_eq!(&statuses[..2], &[200, 200], "the burst is admitted: {statuses:?}");
        assert!(statuses[2..].iter().filter(|s| **s == 429).count() >= 3, "{statuses:?}");
        let limited = limited.unwrap();
        assert_eq!(limited.error_code(), "rate_limited");
        let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        let accepted = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(gateway.journal.len(), accepted, "only accepted requests are journaled");
    }
}

#[tokio::test]
async fn a_journal_over_its_quota_answers_503_with_retry_after() {
    for transport in ALL_TRANSPORTS {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        {
            let gateway = TestGateway::with(Options { dir: Some(dir.clone()), ..Options::default() }).await;
            assert_eq!(
                gateway.post_signed(Transport::Http, "parallel", "evt_1", MONITOR_EVENT).await.status,
                200
            );
            gateway.stop().await.unwrap();
        }
        let options =
            Options { dir: Some(dir.clone()), journal: "max_disk = \"1B\"".into(), ..Options::default() };
        let gateway = TestGateway::for_transport(transport, options).await;
        let reply = gateway.post_signed(transport, "parallel", "evt_2", MONITOR_EVENT).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (503, "journal_full"), "{transport:?}");
        assert!(reply.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
        assert_eq!(gateway.journal.len(), 1, "nothing written past the quota");
        let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
        assert!(
            metrics.contains(
                "hookrelay_deliveries_rejected_total{source=\"parallel\",reason=\"journal_full\"} 1"
            ),
            "{metrics}"
        );
        assert!(metrics.contains("hookrelay_journal_max_bytes 1\n"), "{metrics}");
    }
}

#[tokio::test]
async fn non_json_bodies_are_journaled_with_no_type() {
    let gateway = TestGateway::start().await;
    let body = b"\xff\xfe not json at all";
    let reply =
        gateway.send(Transport::Http, signed_request("parallel", SECRET, "evt_bin", now(), body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let record = gateway.journal.get(delivery_id(&reply)).unwrap().unwrap();
    assert_eq!(record.body, body);
    assert_eq!(record.event_type, None);
    assert_eq!(record.monitor_id, None);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut gateway = TestGateway::start().await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let req = signed_request("parallel", SECRET, "evt_inflight", now(), MONITOR_EVENT.as_bytes());
    let text = raw_head(&req, &format!("content-length: {}", MONITOR_EVENT.len()));
    stream.write_all(text.as_bytes()).await.unwrap();
    stream.write_all(&MONITOR_EVENT.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // the request is in progress
    gateway.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once the listener is closed.
    assert!(tokio::net::TcpStream::connect(gateway.addr).await.is_err());
    stream.write_all(&MONITOR_EVENT.as_bytes()[20..]).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    gateway.wait_stopped().await.unwrap();
    assert_eq!(gateway.journal.len(), 1);
}
