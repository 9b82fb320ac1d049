//! A Shale error code for what the gRPC transport refuses on its own, before a handler runs: a
//! request over the decode cap (`TRANSPORT_REQUEST_FACTOR` x `limits.max_request_bytes`), a body
//! that does not decode as the method's message or is not a valid gRPC frame, a method that does
//! not exist. tonic answers those with a bare status; this layer adds `shale-error-code`
//! (REQUEST_TOO_LARGE with `shale-limit`, or INVALID_REQUEST) and the matching gRPC code, so a
//! client sees the same typed errors as from the handlers. Statuses that already carry a code,
//! and the Raft transport's, pass unchanged; so do transport statuses clients retry on (a
//! deadline, a cancelled call).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use shale_client::error::status_with;
use shale_client::{ErrorCode, meta};
use tonic::Code;
use tonic::codegen::Service;
use tonic::codegen::http::{HeaderMap, Request, Response};

use crate::metrics::Metrics;

/// Paths of the Raft transport (its statuses are its own: `RAFT_RPC_REFUSED` or none).
const RAFT_PATH_PREFIX: &str = "/shale.raft.";

/// Adds Shale codes to the transport's own refusals ([`CodedTransportErrors`]).
#[derive(Clone, Debug)]
pub struct CodeTransportErrorsLayer {
    /// `limits.max_request_bytes` (named in REQUEST_TOO_LARGE).
    pub max_request_bytes: usize,
    /// Counts INVALID_REQUEST answers.
    pub metrics: Arc<Metrics>,
}

impl<S> tower_layer::Layer<S> for CodeTransportErrorsLayer {
    type Service = CodedTransportErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CodedTransportErrors { inner, layer: self.clone() }
    }
}

/// The service [`CodeTransportErrorsLayer`] wraps around the node's routes.
#[derive(Clone, Debug)]
pub struct CodedTransportErrors<S> {
    inner: S,
    layer: CodeTransportErrorsLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CodedTransportErrors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let client_api = !request.uri().path().starts_with(RAFT_PATH_PREFIX);
        let call = self.inner.call(request);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut response = call.await?;
            if client_api {
                layer.add_code(response.headers_mut());
            }
            Ok(response)
        })
    }
}

impl CodeTransportErrorsLayer {
    /// Rewrites a trailers-only error status (in `headers`) the transport made into the Shale one.
    fn add_code(&self, headers: &mut HeaderMap) {
        if headers.contains_key(meta::ERROR_CODE) {
            return;
        }
        let Some(status) = tonic::Status::from_header_map(headers) else { return };
        let Some((code, coded)) = self.coded(&status) else { return };
        match code {
            ErrorCode::RequestTooLarge => self.metrics.count_limit_refusal("max_request_bytes"),
            _ => self.metrics.invalid_requests.inc(),
        }
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        if let Err(e) = coded.add_header(headers) {
            tracing::warn!(error = %e, "could not add a Shale code to a transport status");
        }
    }

    /// The Shale status for one of the transport's refusals; `None` for every other status.
    fn coded(&self, status: &tonic::Status) -> Option<(ErrorCode, tonic::Status)> {
        let message = status.message();
        let invalid =
            |what: String| Some((ErrorCode::InvalidRequest, status_with(ErrorCode::InvalidRequest, what, &[])));
        match status.code() {
            // tonic's decoder: "Error, decoded message length too large: found N bytes, the limit
            // is: M bytes".
            Code::OutOfRange if message.contains("message length too large") => Some((
                ErrorCode::RequestTooLarge,
                status_with(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "request over the transport's cap of {} x max_request_bytes = {} ({message})",
                        shale_storage::limits::TRANSPORT_REQUEST_FACTOR,
                        self.max_request_bytes
                    ),
                    &[(meta::LIMIT, self.max_request_bytes.to_string())],
                ),
            )),
            // Not the method's message ("failed to decode Protobuf message"), a bad frame
            // ("protocol error: ... compression flag", "Unexpected EOF decoding stream."), no
            // message at all.
            Code::Internal
                if ["decode", "protocol error", "Unexpected EOF", "Missing request message"]
                    .iter()
                    .any(|m| message.contains(m)) =>
            {
                invalid(format!("undecodable request: {message}"))
            }
            // No such method or service, or a compression the node does not speak.
            Code::Unimplemented => {
                let what = if message.is_empty() { "no such method" } else { message };
                invalid(format!("unsupported request: {what}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use shale_client::ClientError;
    use tonic::Status;

    use super::*;

    fn rewrite(status: Status) -> Status {
        let layer = CodeTransportErrorsLayer { max_request_bytes: 1000, metrics: Arc::new(Metrics::default()) };
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        layer.add_code(&mut headers);
        Status::from_header_map(&headers).unwrap()
    }

    #[test]
    fn transport_refusals_get_shale_codes_and_others_pass() {
        let big = rewrite(Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 2000 bytes",
        ));
        assert_eq!(big.code(), Code::ResourceExhausted);
        let e = ClientError::from_status(big);
        assert!(matches!(&e, ClientError::Server { code: ErrorCode::RequestTooLarge, limit: Some(1000), .. }), "{e:?}");
        assert!(e.to_string().contains("found 5000 bytes"), "{e}");
        for garbage in [
            Status::internal("failed to decode Protobuf message: invalid wire type"),
            Status::internal("Unexpected EOF decoding stream."),
            Status::unimplemented(""),
        ] {
            let s = rewrite(garbage);
            assert_eq!(s.code(), Code::InvalidArgument);
            assert_eq!(ClientError::from_status(s).code(), Some(ErrorCode::InvalidRequest));
        }
        // A transport status clients retry on keeps its code and stays without a Shale code.
        let timeout = rewrite(Status::cancelled("Timeout expired"));
        assert_eq!(timeout.code(), Code::Cancelled);
        assert!(ClientError::from_status(timeout).is_retriable());
        // A handler's status keeps its code.
        let coded = rewrite(shale_client::error::status(ErrorCode::Internal, "disk failed"));
        assert_eq!(ClientError::from_status(coded).code(), Some(ErrorCode::Internal));
    }
}
