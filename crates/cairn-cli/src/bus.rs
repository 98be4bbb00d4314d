//! Commands over NATS: request/reply on `<prefix>.<command>[.<parameter>…]`, served by
//! the same handlers as HTTP (each request goes through the server's router), with the
//! same JSON bodies, idempotency keys (`Idempotency-Key` header) and error codes. The
//! reply's body is the HTTP response's body; its `Cairn-Status` header the status code.
//! Several processes share the subjects in one queue group. The commands are the routes
//! the modules marked `.nats(..)` ([`cairn_server::RunningServer::nats_commands`]).

use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::http::Request;
use cairn_server::NatsCommand;
use futures_util::StreamExt;
use tokio::sync::watch;
use tower::ServiceExt;

/// Characters escaped when a decoded token becomes a path segment: everything but
/// unreserved ones, so an id holding `/`, `?` or `%` stays one segment of its own route
/// (`o1/ship` must not reach `/orders/o1/ship`).
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Most commands over NATS served at once; past it the subscription is read no further
/// until one finishes (NATS buffers, then drops for a slow consumer), never spawning
/// without bound.
pub const NATS_COMMANDS_IN_FLIGHT_MAX: usize = 64;

/// How commands are taken from NATS.
#[derive(Debug, Clone)]
pub struct CommandBusOptions {
    /// Subjects are `<prefix>.<command>[.<parameter>…]`.
    pub prefix: String,
    /// The queue group the servers share; whoever joins it takes commands, so a
    /// deployment sharing a NATS account names its own.
    pub queue_group: String,
    /// Replies go only to subjects starting with it (request/reply inboxes): a caller
    /// choosing the reply subject could otherwise make the server publish anywhere
    /// (`public.orders.*`).
    pub reply_prefix: String,
}

/// Decodes a subject token escaped with `cairn_nats::encode_token`.
fn decode_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if token == "%" {
                return Some(String::new());
            }
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The HTTP request a command message stands for, or a contract-shaped error body.
fn to_request(
    prefix: &str,
    commands: &[NatsCommand],
    message: &async_nats::Message,
) -> Result<Request<Body>, (u16, serde_json::Value)> {
    let not_found = |m: String| (404, serde_json::json!({"error": "not_found", "message": m}));
    let rest = message
        .subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| not_found(format!("{} is not a command subject", message.subject)))?;
    let mut tokens = rest.split('.');
    let command = tokens.next().unwrap_or_default();
    let tokens: Vec<&str> = tokens.collect();
    let Some(found) = commands.iter().find(|c| c.name == command) else {
        let known: Vec<String> = commands.iter().map(NatsCommand::subject_shape).collect();
        return Err(not_found(format!(
            "unknown command {command}; the commands are {prefix}.{}",
            known.join(format!(", {prefix}.").as_str())
        )));
    };
    let parameters = found.parameters();
    if tokens.len() != parameters.len() {
        return Err(not_found(format!(
            "{command} takes {} token(s) after its name: {prefix}.{}",
            parameters.len(),
            found.subject_shape()
        )));
    }
    let mut path = found.path.clone();
    for (name, token) in parameters.iter().zip(&tokens) {
        let value = decode_token(token).ok_or_else(|| not_found(format!("bad token {token}")))?;
        // The same rules as an id in an HTTP path: what would be refused there (`o1/ship`)
        // is refused here before it becomes a path.
        cairn_core::id::validate_aggregate_id(&value).map_err(|e| {
            (400, serde_json::json!({"error": "bad_request", "message": format!("{name}: {e}")}))
        })?;
        let segment = percent_encoding::utf8_percent_encode(&value, SEGMENT).to_string();
        path = path.replace(&format!("{{{name}}}"), &segment);
    }
    let method = &found.method;
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json");
    if let Some(headers) = &message.headers {
        for name in
            ["Authorization", "Idempotency-Key", "If-Match", "X-Correlation-Id", "X-User-Id"]
        {
            if let Some(v) = headers.get(name) {
                request = request.header(name, v.as_str());
            }
        }
    }
    request
        .body(Body::from(message.payload.clone()))
        .map_err(|e| (400, serde_json::json!({"error": "bad_request", "message": e.to_string()})))
}

/// Serves `commands` until `shutdown`.
pub async fn serve_commands(
    url: &str,
    nats: &cairn_nats::NatsConnectOptions,
    options: CommandBusOptions,
    commands: Vec<NatsCommand>,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let CommandBusOptions { prefix, queue_group, reply_prefix } = options;
    let commands: Arc<[NatsCommand]> = commands.into();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(NATS_COMMANDS_IN_FLIGHT_MAX));
    let client = Arc::new(cairn_nats::connect(url, nats).await?);
    let mut requests = client
        .queue_subscribe(format!("{prefix}.>"), queue_group)
        .await
        .context("cannot subscribe to commands")?;
    loop {
        let message = tokio::select! {
            m = requests.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(message) = message else { return Ok(()) };
        let Some(reply) = message.reply.clone() else { continue };
        if !reply.starts_with(reply_prefix.as_str()) {
            tracing::warn!(subject = %message.subject, reply = %reply, allowed = %reply_prefix, "command refused: its reply subject is not an inbox; nothing published");
            continue;
        }
        // Waits for a slot: the loop stops reading while the limit is reached.
        let permit = tokio::select! {
            p = Arc::clone(&in_flight).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let (client, router, prefix) = (Arc::clone(&client), router.clone(), prefix.clone());
        let commands = Arc::clone(&commands);
        tokio::spawn(async move {
            let _permit = permit;
            let (status, body) = match to_request(&prefix, &commands, &message) {
                Ok(request) => match router.oneshot(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
                            .await
                            .unwrap_or_default();
                        (status, bytes)
                    }
                    Err(never) => match never {},
                },
                Err((status, json)) => (status, bytes::Bytes::from(json.to_string())),
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Cairn-Status", status.to_string().as_str());
            if let Err(e) = client.publish_with_headers(reply, headers, body).await {
                tracing::warn!(error = %e, "cannot reply to a command");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::decode_token;

    #[test]
    fn tokens_decode_back_to_ids() {
        for id in ["order-1", "a.b", "a b*>%", ""] {
            assert_eq!(decode_token(&cairn_nats::encode_token(id)).as_deref(), Some(id));
        }
        assert_eq!(decode_token("%G1"), None);
    }
}
