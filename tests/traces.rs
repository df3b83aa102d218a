//! OpenTelemetry traces with the real binary: `serve` with `[telemetry]` posts its spans to a
//! local OTLP/HTTP endpoint (JSON and protobuf), one span per exchange under the client's
//! `traceparent` with child spans for the input check, the upstream call and the output check;
//! the upstream gets the upstream span as its `traceparent`; attributes name the profile,
//! actions and categories, scores only where they are revealed, and never content or
//! credentials.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::{Request, Response};
use prost::Message;
use serde_json::{json, Value};
use shieldgate::http::body::{json_response, Body};

/// One exported span, as the test reads it.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// Export requests received: content type and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector on 127.0.0.1 that keeps every `POST /v1/traces`.
fn collector(runtime: &tokio::runtime::Runtime) -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let addr =
        crate::harness::serve_on_loopback(runtime, move |req: Request<hyper::body::Incoming>| {
            let store = store.clone();
            async move {
                let path = req.uri().path().to_string();
                let kind = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec());
                if path == "/v1/traces" {
                    store
                        .lock()
                        .expect("lock")
                        .push((kind, body.unwrap_or_default()));
                }
                let answer: Response<Body> = json_response(hyper::StatusCode::OK, &json!({}));
                answer
            }
        });
    (addr, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of one export request, protobuf or JSON.
fn spans_of(kind: &str, body: &[u8]) -> Vec<Seen> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    if kind.starts_with("application/x-protobuf") {
        let request = ExportTraceServiceRequest::decode(body).expect("protobuf export");
        return request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| Seen {
                name: s.name.clone(),
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent: hex(&s.parent_span_id),
                attributes: s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Any::StringValue(s)) => s.clone(),
                            Some(Any::IntValue(i)) => i.to_string(),
                            Some(Any::DoubleValue(d)) => d.to_string(),
                            Some(Any::BoolValue(b)) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect(),
            })
            .collect();
    }
    assert!(kind.starts_with("application/json"), "content type {kind}");
    let request: Value = serde_json::from_slice(body).expect("JSON export");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    request["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .map(|s| Seen {
            name: text(&s["name"]),
            trace_id: text(&s["traceId"]).to_lowercase(),
            span_id: text(&s["spanId"]).to_lowercase(),
            parent: text(&s["parentSpanId"]).to_lowercase(),
            attributes: s["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|kv| {
                    let v = &kv["value"];
                    let value = ["stringValue", "intValue", "doubleValue", "boolValue"]
                        .iter()
                        .find_map(|k| v.get(*k))
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .unwrap_or_default();
                    (text(&kv["key"]), value)
                })
                .collect(),
        })
        .collect()
}

/// Starts `serve` exporting to `collector` with `protocol` and `reveal`, sends one chat
/// exchange with `headers`, and returns the spans of its trace (waiting for all four), the
/// raw export bodies and the headers the upstream got.
fn one_exchange(
    protocol: &str,
    reveal: &str,
    headers: &[(&str, &str)],
) -> (
    Vec<Seen>,
    Vec<u8>,
    std::collections::HashMap<String, String>,
) {
    let runtime = crate::harness::runtime();
    let scorer = crate::harness::serve_on_loopback(&runtime, crate::remote::completions);
    let upstream = crate::harness::MockUpstream::start(&runtime);
    let (endpoint, received) = collector(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("traced.toml");
    std::fs::write(
        &config,
        crate::remote::gateway_config(
            upstream.addr,
            scorer,
            &format!(
                "[proxy]\nreveal = \"{reveal}\"\n\
                 [telemetry]\notlp_endpoint = \"http://{endpoint}\"\nprotocol = \"{protocol}\"\n\
                 batch_delay_ms = 100\nservice_name = \"gateway-under-test\"\n\
                 [profiles.default.categories]\nhate = {{ threshold = 0.5, action = \"flag\" }}\n\
                 sexual = {{ threshold = 0.5, action = \"block\" }}\n"
            ),
        ),
    )
    .expect("config written");
    let (_gateway, addr, _) = crate::serve::spawn_serve(&config);
    let chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "my note secret-text-42"}]});
    let answer = runtime.block_on(crate::harness::post(
        addr,
        "/v1/chat/completions",
        headers,
        &chat,
    ));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-shieldgate-action"), Some("flag"));
    let spans = || -> Vec<Seen> {
        let bodies = received.lock().expect("lock").clone();
        bodies.iter().flat_map(|(k, b)| spans_of(k, b)).collect()
    };
    for _ in 0..200 {
        if spans().len() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let raw: Vec<u8> = received
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(
        String::from_utf8_lossy(&raw).contains("gateway-under-test"),
        "the service name is the resource's"
    );
    let sent = upstream.received.lock().expect("lock");
    (
        spans(),
        raw,
        sent.last().expect("forwarded").headers.clone(),
    )
}

fn named<'a>(spans: &'a [Seen], name: &str) -> &'a Seen {
    let found: Vec<&Seen> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

#[test]
fn an_exchange_is_one_trace_under_the_clients_traceparent_without_content_or_credentials() {
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traceparent = format!("00-{trace}-{parent}-01");
    let (spans, raw, upstream_headers) = one_exchange(
        "http/json",
        "scores",
        &[
            ("traceparent", &traceparent),
            ("authorization", "Bearer sk-secret-credential-99"),
        ],
    );
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let exchange = named(&spans, "shieldgate.exchange");
    assert!(spans.iter().all(|s| s.trace_id == trace), "{spans:#?}");
    assert_eq!(exchange.parent, parent, "a child of the client's span");
    for child in [
        "shieldgate.input_check",
        "shieldgate.upstream",
        "shieldgate.output_check",
    ] {
        assert_eq!(named(&spans, child).parent, exchange.span_id, "{child}");
    }
    let upstream = named(&spans, "shieldgate.upstream");
    assert_eq!(
        upstream_headers.get("traceparent"),
        Some(&format!("00-{trace}-{}-01", upstream.span_id)),
        "the upstream continues the trace under the upstream span"
    );
    let a = &exchange.attributes;
    assert_eq!(a["shieldgate.profile"], "default");
    assert_eq!(a["shieldgate.protocol"], "openai_chat");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["shieldgate.input.action"], "flag");
    assert_eq!(a["shieldgate.output.action"], "flag");
    assert_eq!(upstream.attributes["http.response.status_code"], "200");
    let input = &named(&spans, "shieldgate.input_check").attributes;
    assert_eq!(input["shieldgate.action"], "flag");
    assert_eq!(input["shieldgate.categories"], "hate");
    assert_eq!(input["shieldgate.direction"], "input");
    let hate: f64 = input["shieldgate.score.hate"].parse().expect("a score");
    assert!(
        (hate - 1.0 / (1.0 + (-1.6f64).exp())).abs() < 1e-9,
        "{hate}"
    );
    assert!(input.contains_key("shieldgate.score.sexual"));
    let output = &named(&spans, "shieldgate.output_check").attributes;
    assert_eq!(output["shieldgate.direction"], "output");
    let raw = String::from_utf8_lossy(&raw);
    for secret in ["secret-text-42", "sk-secret-credential-99", "Hello there"] {
        assert!(!raw.contains(secret), "{secret} was exported");
    }
}

#[test]
fn without_a_traceparent_a_new_trace_starts_and_protobuf_spans_hide_scores_unless_revealed() {
    let (spans, _, upstream_headers) = one_exchange("http/protobuf", "categories", &[]);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let exchange = named(&spans, "shieldgate.exchange");
    assert_eq!(exchange.parent, "", "a root span");
    assert_eq!(exchange.trace_id.len(), 32);
    assert!(spans.iter().all(|s| s.trace_id == exchange.trace_id));
    let upstream = named(&spans, "shieldgate.upstream");
    assert_eq!(
        upstream_headers.get("traceparent"),
        Some(&format!("00-{}-{}-01", exchange.trace_id, upstream.span_id))
    );
    let input = &named(&spans, "shieldgate.input_check").attributes;
    assert_eq!(input["shieldgate.categories"], "hate");
    assert!(
        !input.keys().any(|k| k.starts_with("shieldgate.score.")),
        "scores are not revealed: {input:?}"
    );
}
