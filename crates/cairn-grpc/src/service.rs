//! The `Streams` and `ServerFeatures` services over Cairn's server state, and the router
//! serving them (HTTP/2, through `cairn serve`'s own accept loop).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use cairn_core::{Direction, ExpectedVersion};
use cairn_server::AppState;
use cairn_server::auth::Caller;
use cairn_server::module::Permission;
use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::append::{self, Appended, Batch, Proposed};
use crate::convert::{self, StreamName};
use crate::filter::EventFilter;
use crate::proto::event_store::client::server_features::server_features_server::{
    ServerFeatures, ServerFeaturesServer,
};
use crate::proto::event_store::client::server_features::{SupportedMethod, SupportedMethods};
use crate::proto::event_store::client::streams::streams_server::{Streams, StreamsServer};
use crate::proto::event_store::client::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, append_req, append_resp, batch_append_req,
    batch_append_resp, delete_req, delete_resp, read_req, tombstone_req, tombstone_resp,
};
use crate::proto::event_store::client::{AllStreamPosition, Empty};
use crate::proto::google;
use crate::read::{self, AllFrom, Reader, StreamFrom};
use crate::{auth, status};

/// The server version `ServerFeatures` reports. Clients enable calls by the version they
/// see; this is the `KurrentDB` release whose protocol Cairn speaks (docs/grpc.md).
pub const PROTOCOL_SERVER_VERSION: &str = "24.10.0";
/// Most batch appends one `BatchAppend` call may have open (sent, not yet final): each
/// holds up to the append byte limit in memory. The official clients send every batch
/// whole, in one final message, so one is open at a time.
pub const BATCHES_OPEN_MAX: usize = 8;
/// Slack over the append byte limit for one message's framing (ids, keys, field tags).
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Limits of the gRPC services.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Most bytes of events (data, metadata, types) in one append, and so in one message.
    pub append_bytes_max: usize,
    /// Longest time for one unary call or one append (0: no limit). Reads and
    /// subscriptions are bounded by their count and the client's pace instead.
    pub call_timeout: Duration,
}

/// The services, as an axum router of HTTP/2 gRPC routes.
pub fn router(state: AppState, config: GrpcConfig) -> axum::Router {
    let message_max = config.append_bytes_max.saturating_add(MESSAGE_OVERHEAD_BYTES);
    let streams =
        StreamsServer::new(StreamsService { state, config }).max_decoding_message_size(message_max);
    let features = ServerFeaturesServer::new(FeaturesService);
    tonic::service::Routes::new(streams).add_service(features).prepare().into_axum_router()
}

struct StreamsService {
    state: AppState,
    config: GrpcConfig,
}

impl StreamsService {
    async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        if self.config.call_timeout.is_zero() {
            return call.await;
        }
        tokio::time::timeout(self.config.call_timeout, call).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the call took longer than {} s (cairn serve --request-timeout-secs)",
                self.config.call_timeout.as_secs()
            )))
        })
    }

    async fn collect_append(
        &self,
        mut messages: Streaming<AppendReq>,
    ) -> Result<(StreamName, ExpectedVersion, Batch), Status> {
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an append starts with its options"))?;
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument("an append starts with its options"));
        };
        let name = StreamName::parse(options.stream_identifier.as_ref())?;
        let expected = match options.expected_stream_revision {
            Some(append_req::options::ExpectedStreamRevision::Revision(r)) => {
                convert::expected_from_revision(r)
            }
            Some(append_req::options::ExpectedStreamRevision::NoStream(_)) => {
                ExpectedVersion::NoStream
            }
            Some(append_req::options::ExpectedStreamRevision::StreamExists(_)) => {
                ExpectedVersion::StreamExists
            }
            Some(append_req::options::ExpectedStreamRevision::Any(_)) | None => {
                ExpectedVersion::Any
            }
        };
        let mut batch = Batch::new(self.config.append_bytes_max);
        while let Some(message) = messages.message().await? {
            let Some(append_req::Content::ProposedMessage(m)) = message.content else {
                return Err(Status::invalid_argument("an append sends its options once, first"));
            };
            let index = batch.len();
            batch.push(Proposed::new(
                index,
                m.id.as_ref(),
                &m.metadata,
                m.custom_metadata,
                m.data,
            )?)?;
        }
        Ok((name, expected, batch))
    }

    async fn delete_or_tombstone(
        &self,
        caller: Option<&Caller>,
        name: StreamName,
        expected: ExpectedVersion,
        tombstone: bool,
    ) -> Result<u64, Status> {
        let StreamName::Stream(id) = name else {
            return Err(Status::invalid_argument("a metadata stream ($$...) cannot be deleted"));
        };
        let current = self.state.store.stream_state(&id).await.map_err(status::from)?;
        auth::check_stream(
            &self.state,
            caller,
            &id,
            current.as_ref().map(|s| s.aggregate_type.as_str()),
        )?;
        let outcome = self
            .state
            .store
            .delete_stream(&id, expected, tombstone)
            .await
            .map_err(|e| status::from_delete(&id, expected, e))?;
        Ok(outcome.position)
    }
}

/// The expected revision of a delete or tombstone (the two messages' oneofs are alike).
macro_rules! expected_revision {
    ($module:ident, $value:expr) => {
        match $value {
            Some($module::options::ExpectedStreamRevision::Revision(r)) => {
                convert::expected_from_revision(r)
            }
            Some($module::options::ExpectedStreamRevision::NoStream(_)) => {
                ExpectedVersion::NoStream
            }
            Some($module::options::ExpectedStreamRevision::StreamExists(_)) => {
                ExpectedVersion::StreamExists
            }
            Some($module::options::ExpectedStreamRevision::Any(_)) | None => ExpectedVersion::Any,
        }
    };
}

fn append_response(appended: Appended) -> AppendResp {
    use append_resp::wrong_expected_version as wev;
    let result = match appended {
        Appended::Done { version, position } => {
            append_resp::Result::Success(append_resp::Success {
                current_revision_option: Some(if version == 0 {
                    append_resp::success::CurrentRevisionOption::NoStream(Empty {})
                } else {
                    append_resp::success::CurrentRevisionOption::CurrentRevision(version - 1)
                }),
                position_option: Some(match position {
                    Some(p) => {
                        append_resp::success::PositionOption::Position(append_resp::Position {
                            commit_position: p,
                            prepare_position: p,
                        })
                    }
                    None => append_resp::success::PositionOption::NoPosition(Empty {}),
                }),
            })
        }
        Appended::WrongVersion { expected, actual } => {
            let (current, current_2060) = if actual == 0 {
                (
                    wev::CurrentRevisionOption::CurrentNoStream(Empty {}),
                    wev::CurrentRevisionOption2060::NoStream2060(Empty {}),
                )
            } else {
                (
                    wev::CurrentRevisionOption::CurrentRevision(actual - 1),
                    wev::CurrentRevisionOption2060::CurrentRevision2060(actual - 1),
                )
            };
            let (expected_now, expected_2060) = match expected {
                ExpectedVersion::Any => (
                    wev::ExpectedRevisionOption::ExpectedAny(Empty {}),
                    Some(wev::ExpectedRevisionOption2060::Any2060(Empty {})),
                ),
                ExpectedVersion::StreamExists => (
                    wev::ExpectedRevisionOption::ExpectedStreamExists(Empty {}),
                    Some(wev::ExpectedRevisionOption2060::StreamExists2060(Empty {})),
                ),
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => {
                    (wev::ExpectedRevisionOption::ExpectedNoStream(Empty {}), None)
                }
                ExpectedVersion::Exact(v) => (
                    wev::ExpectedRevisionOption::ExpectedRevision(v - 1),
                    Some(wev::ExpectedRevisionOption2060::ExpectedRevision2060(v - 1)),
                ),
            };
            append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(current_2060),
                expected_revision_option_20_6_0: expected_2060,
                current_revision_option: Some(current),
                expected_revision_option: Some(expected_now),
            })
        }
    };
    AppendResp { result: Some(result) }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;
type BatchStream = Pin<Box<dyn Stream<Item = Result<BatchAppendResp, Status>> + Send>>;

fn channel_stream<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, Status>>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReadStream;
    type BatchAppendStream = BatchStream;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<ReadStream>, Status> {
        auth::authorize(&self.state, request.metadata(), Permission::Read).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a read needs its options"))?;
        let direction = match read_req::options::ReadDirection::try_from(options.read_direction) {
            Ok(read_req::options::ReadDirection::Backwards) => Direction::Backward,
            _ => Direction::Forward,
        };
        let reader = Reader {
            store: self.state.store.clone(),
            shutdown: self.state.shutdown.clone(),
            uuid_as_string: options.uuid_option.is_some_and(read::uuid_as_string),
        };
        let filter = EventFilter::from_options(options.filter_option.as_ref())?;
        let subscription = match options.count_option {
            Some(read_req::options::CountOption::Subscription(_)) => {
                let permit = self.state.subscriber_permit().ok_or_else(|| {
                    Status::resource_exhausted(format!(
                        "{} subscriptions are open (cairn serve --max-subscribers); try again later",
                        self.state.config.sse_subscribers_max
                    ))
                })?;
                Some(permit)
            }
            Some(read_req::options::CountOption::Count(_)) | None => None,
        };
        let count = match options.count_option {
            Some(read_req::options::CountOption::Count(n)) => n,
            _ => u64::MAX,
        };
        let (tx, rx) = mpsc::channel(read::READ_CHANNEL_MESSAGES);
        match options.stream_option {
            Some(read_req::options::StreamOption::Stream(stream)) => {
                if filter.is_some() {
                    return Err(Status::invalid_argument("filters apply to $all reads only"));
                }
                let name = StreamName::parse(stream.stream_identifier.as_ref())?;
                let from = StreamFrom::of(&stream);
                match subscription {
                    Some(permit) => {
                        tokio::spawn(read::subscribe_stream(reader, name, from, tx, permit));
                    }
                    None => {
                        tokio::spawn(read::stream(reader, name, from, direction, count, tx));
                    }
                }
            }
            Some(read_req::options::StreamOption::All(all)) => {
                let from = AllFrom::of(&all);
                match subscription {
                    Some(permit) => {
                        tokio::spawn(read::subscribe_all(reader, from, filter, tx, permit));
                    }
                    None => {
                        tokio::spawn(read::all(reader, from, direction, filter, count, tx));
                    }
                }
            }
            None => return Err(Status::invalid_argument("a read names a stream or $all")),
        }
        Ok(Response::new(channel_stream(rx)))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let caller = auth::authorize(&self.state, request.metadata(), Permission::Append).await?;
        let messages = request.into_inner();
        self.within_deadline(async {
            let (name, expected, batch) = self.collect_append(messages).await?;
            let appended =
                append::append(&self.state, caller.as_ref(), &name, expected, batch).await?;
            Ok(Response::new(append_response(appended)))
        })
        .await
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let caller = auth::authorize(&self.state, request.metadata(), Permission::Append).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a delete needs its options"))?;
        let name = StreamName::parse(options.stream_identifier.as_ref())?;
        let expected = expected_revision!(delete_req, options.expected_stream_revision);
        let position = self
            .within_deadline(self.delete_or_tombstone(caller.as_ref(), name, expected, false))
            .await?;
        Ok(Response::new(DeleteResp {
            position_option: Some(delete_resp::PositionOption::Position(delete_resp::Position {
                commit_position: position,
                prepare_position: position,
            })),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let caller = auth::authorize(&self.state, request.metadata(), Permission::Append).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("a tombstone needs its options"))?;
        let name = StreamName::parse(options.stream_identifier.as_ref())?;
        let expected = expected_revision!(tombstone_req, options.expected_stream_revision);
        let position = self
            .within_deadline(self.delete_or_tombstone(caller.as_ref(), name, expected, true))
            .await?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(tombstone_resp::PositionOption::Position(
                tombstone_resp::Position { commit_position: position, prepare_position: position },
            )),
        }))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<BatchStream>, Status> {
        auth::authorize(&self.state, request.metadata(), Permission::Append).await?;
        // The official clients keep one call open for their lifetime: the token is checked
        // again for every batch, so that a revoked one stops at its next batch.
        let metadata = request.metadata().clone();
        let mut messages = request.into_inner();
        let (tx, rx) = mpsc::channel(read::READ_CHANNEL_MESSAGES);
        let state = self.state.clone();
        let bytes_max = self.config.append_bytes_max;
        tokio::spawn(async move {
            let mut open: HashMap<Uuid, Pending> = HashMap::new();
            let mut shutdown = state.shutdown.clone();
            loop {
                let next = tokio::select! {
                    next = messages.message() => next,
                    () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    }
                };
                let message = match next {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let response = match auth::authorize(&state, &metadata, Permission::Append).await {
                    Ok(caller) => {
                        batch_step(&state, caller.as_ref(), &mut open, bytes_max, message).await
                    }
                    Err(e) => Err(e),
                };
                let response = match response {
                    Ok(None) => continue,
                    Ok(Some(response)) => Ok(response),
                    Err(e) => Err(e),
                };
                let fatal = response.is_err();
                if tx.send(response).await.is_err() || fatal {
                    return;
                }
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }
}

/// A batch append sent in parts, waiting for its final part.
struct Pending {
    options: batch_append_req::Options,
    batch: Batch,
    /// Already answered with an error (a part was refused): its remaining parts are
    /// dropped unanswered until its final one closes it.
    refused: bool,
}

/// One message of a `BatchAppend` call: its answer once the batch it belongs to is final.
/// An error for the call as a whole (too many open batches, no options) ends the call;
/// an append's own failure is that batch's answer.
async fn batch_step(
    state: &AppState,
    caller: Option<&Caller>,
    open: &mut HashMap<Uuid, Pending>,
    bytes_max: usize,
    message: BatchAppendReq,
) -> Result<Option<BatchAppendResp>, Status> {
    use batch_append_req::options::ExpectedStreamPosition as Sent;
    use batch_append_resp::ExpectedStreamPosition as Echo;
    let correlation = convert::event_id(message.correlation_id.as_ref())?
        .ok_or_else(|| Status::invalid_argument("a batch append needs a correlation id"))?;
    if !open.contains_key(&correlation) {
        if open.len() >= BATCHES_OPEN_MAX {
            return Err(Status::resource_exhausted(format!(
                "at most {BATCHES_OPEN_MAX} batch appends may be open on one call"
            )));
        }
        let options = message.options.clone().ok_or_else(|| {
            Status::invalid_argument("the first part of a batch append carries its options")
        })?;
        open.insert(correlation, Pending { options, batch: Batch::new(bytes_max), refused: false });
    }
    let pending = open.get_mut(&correlation).expect("inserted above");
    if pending.refused {
        if message.is_final {
            open.remove(&correlation);
        }
        return Ok(None);
    }
    let mut refused = None;
    for m in message.proposed_messages {
        let index = pending.batch.len();
        if let Err(e) = Proposed::new(index, m.id.as_ref(), &m.metadata, m.custom_metadata, m.data)
            .and_then(|p| pending.batch.push(p))
        {
            refused = Some(e);
            break;
        }
    }
    if refused.is_none() && !message.is_final {
        return Ok(None);
    }
    let (options, batch) = if message.is_final {
        let Pending { options, batch, .. } = open.remove(&correlation).expect("present");
        (options, batch)
    } else {
        // Refused before its final part: answered now, its later parts dropped.
        pending.refused = true;
        (pending.options.clone(), std::mem::replace(&mut pending.batch, Batch::new(0)))
    };
    let (expected, echo) = match options.expected_stream_position {
        Some(Sent::StreamPosition(r)) => {
            (convert::expected_from_revision(r), Echo::StreamPosition(r))
        }
        Some(Sent::NoStream(())) => (ExpectedVersion::NoStream, Echo::NoStream(())),
        Some(Sent::StreamExists(())) => (ExpectedVersion::StreamExists, Echo::StreamExists(())),
        Some(Sent::Any(())) | None => (ExpectedVersion::Any, Echo::Any(())),
    };
    let outcome = match refused {
        Some(e) => Err(e),
        None => match StreamName::parse(options.stream_identifier.as_ref()) {
            Ok(name) => append::append(state, caller, &name, expected, batch).await,
            Err(e) => Err(e),
        },
    };
    let result = match outcome {
        Ok(Appended::Done { version, position }) => {
            use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
            batch_append_resp::Result::Success(batch_append_resp::Success {
                current_revision_option: Some(if version == 0 {
                    CurrentRevisionOption::NoStream(())
                } else {
                    CurrentRevisionOption::CurrentRevision(version - 1)
                }),
                position_option: Some(match position {
                    Some(p) => PositionOption::Position(AllStreamPosition {
                        commit_position: p,
                        prepare_position: p,
                    }),
                    None => PositionOption::NoPosition(()),
                }),
            })
        }
        Ok(Appended::WrongVersion { expected, actual }) => {
            let stream = String::from_utf8_lossy(
                options
                    .stream_identifier
                    .as_ref()
                    .map(|s| s.stream_name.as_slice())
                    .unwrap_or_default(),
            )
            .into_owned();
            let status = status::wrong_expected_version(&stream, expected, actual);
            batch_append_resp::Result::Error(rpc_status(&status))
        }
        Err(status) => batch_append_resp::Result::Error(rpc_status(&status)),
    };
    Ok(Some(BatchAppendResp {
        correlation_id: message.correlation_id,
        result: Some(result),
        stream_identifier: options.stream_identifier,
        expected_stream_position: Some(echo),
    }))
}

fn rpc_status(status: &Status) -> google::rpc::Status {
    google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: None,
    }
}

/// `ServerFeatures`: what this server answers, so that clients use it.
struct FeaturesService;

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        const STREAMS: &str = "event_store.client.streams.streams";
        const FEATURES: &str = "event_store.client.server_features.serverfeatures";
        let method = |service: &str, name: &str, features: &[&str]| SupportedMethod {
            method_name: name.to_owned(),
            service_name: service.to_owned(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        };
        Ok(Response::new(SupportedMethods {
            methods: vec![
                method(STREAMS, "read", &["position", "events", "subscriptions", "filters"]),
                method(STREAMS, "append", &[]),
                method(STREAMS, "batchappend", &[]),
                method(STREAMS, "delete", &[]),
                method(STREAMS, "tombstone", &[]),
                method(FEATURES, "getsupportedmethods", &[]),
            ],
            event_store_server_version: PROTOCOL_SERVER_VERSION.to_owned(),
        }))
    }
}
