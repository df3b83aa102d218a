//! The OTLP/HTTP span exporter behind `[telemetry]`: a batch of finished spans is posted to the
//! collector from the SDK's own thread, through a small blocking HTTP client.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::config::{OtlpProtocol, TelemetryConfig};

/// The tracer provider and the tracer the gateway starts spans with.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("[telemetry]: cannot set up the OTLP exporter: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// Starts exporting to the configured collector; `None` when `[telemetry]` names none.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, TracingError> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(BlockingClient::new(timeout))
            .with_endpoint(url)
            .with_protocol(match config.protocol {
                OtlpProtocol::Protobuf => Protocol::HttpBinary,
                OtlpProtocol::Json => Protocol::HttpJson,
            })
            .with_timeout(timeout)
            .with_headers(
                config
                    .headers
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>(),
            )
            .build()
            .map_err(|e| TracingError(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(config.batch_delay_ms))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batches)
                    .build(),
            )
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("shieldgate");
        Ok(Some(Self { provider, tracer }))
    }

    /// The tracer.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Sends the spans still waiting and stops the exporter (blocks until done or timed out).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }
}

/// Posts export requests with `ureq`; it runs on the batch processor's thread, where blocking
/// is what is expected.
#[derive(Debug)]
struct BlockingClient {
    agent: ureq::Agent,
}

impl BlockingClient {
    fn new(timeout: Duration) -> Self {
        Self {
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (head, body) = request.into_parts();
        let mut call = self
            .agent
            .request(head.method.as_str(), &head.uri.to_string());
        for (name, value) in &head.headers {
            call = call.set(name.as_str(), value.to_str()?);
        }
        let answer = match call.send_bytes(&body) {
            Ok(answer) | Err(ureq::Error::Status(_, answer)) => answer,
            Err(e) => return Err(Box::new(e)),
        };
        let status = answer.status();
        let mut bytes = Vec::new();
        answer.into_reader().take(4 << 20).read_to_end(&mut bytes)?;
        Ok(Response::builder()
            .status(status)
            .body(Bytes::from(bytes))?)
    }
}
