//! Cairn speaks the `KurrentDB` (formerly `EventStoreDB`) client gRPC protocol.
//!
//! This crate holds the protocol only: prost messages and tonic server traits generated at
//! build time from Cairn's own `.proto` files in `proto/`, trimmed to what Cairn serves
//! (the `Streams` and `ServerFeatures` services). The wire facts (packages, services,
//! methods, messages, field names and numbers, oneofs) are the protocol's, so the official
//! clients, such as the `kurrentdb` Rust crate, can talk to a server built on these types.
//!
//! - [`proto::event_store::client::streams::streams_server::Streams`] and its
//!   [`StreamsServer`](proto::event_store::client::streams::streams_server::StreamsServer):
//!   reads and subscriptions, appends, batch appends, deletes and tombstones.
//! - [`proto::event_store::client::server_features::server_features_server::ServerFeatures`]
//!   and its `ServerFeaturesServer`: which of those calls the server supports.
//! - [`proto::event_store::client`]: the shared types (`Uuid`, `StreamIdentifier`, ...).
//! - [`proto::google::rpc`]: the `Status` and `Code` carried by batch-append errors.

// tonic's `Status` (176 bytes) is what every call answers with; boxing it inside the
// crate would only unbox it again at each call's boundary.
#![allow(clippy::result_large_err)]

mod append;
mod auth;
mod convert;
mod filter;
mod metastream;
mod read;
mod service;
mod status;

pub use append::UNTYPED;
pub use service::{BATCHES_OPEN_MAX, GrpcConfig, PROTOCOL_SERVER_VERSION, router};

/// The generated protocol modules, nested by protobuf package.
///
/// The generated code refers across packages through `super::` paths, so the nesting here
/// must mirror the package names exactly.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags
)]
pub mod proto {
    /// Package `event_store`.
    pub mod event_store {
        /// Package `event_store.client`: types shared by the services.
        pub mod client {
            include!(concat!(env!("OUT_DIR"), "/event_store.client.rs"));

            /// Package `event_store.client.streams`: the `Streams` service.
            pub mod streams {
                include!(concat!(env!("OUT_DIR"), "/event_store.client.streams.rs"));
            }

            /// Package `event_store.client.server_features`: the `ServerFeatures` service.
            pub mod server_features {
                include!(concat!(env!("OUT_DIR"), "/event_store.client.server_features.rs"));
            }
        }
    }

    /// Package `google`.
    pub mod google {
        /// Package `google.rpc`: the error status embedded in batch-append responses.
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use crate::proto::event_store::client::streams::{AppendReq, ReadResp, append_req, read_resp};
    use crate::proto::event_store::client::{Empty, StreamIdentifier, Uuid, uuid};

    fn stream(name: &str) -> StreamIdentifier {
        StreamIdentifier { stream_name: name.as_bytes().to_vec() }
    }

    #[test]
    fn append_options_round_trip() {
        let req = AppendReq {
            content: Some(append_req::Content::Options(append_req::Options {
                stream_identifier: Some(stream("order-42")),
                expected_stream_revision: Some(
                    append_req::options::ExpectedStreamRevision::NoStream(Empty {}),
                ),
            })),
        };

        let back = AppendReq::decode(req.encode_to_vec().as_slice()).unwrap();

        assert_eq!(back, req);
        let Some(append_req::Content::Options(options)) = back.content else {
            panic!("options lost: {back:?}");
        };
        assert_eq!(options.stream_identifier.unwrap().stream_name, b"order-42");
        assert_eq!(
            options.expected_stream_revision,
            Some(append_req::options::ExpectedStreamRevision::NoStream(Empty {}))
        );
    }

    #[test]
    fn read_event_round_trip() {
        let recorded = read_resp::read_event::RecordedEvent {
            id: Some(Uuid {
                value: Some(uuid::Value::String("5f0c7d1e-8a55-4e44-9c2a-0d3b8e1f2a6b".to_owned())),
            }),
            stream_identifier: Some(stream("order-42")),
            stream_revision: 7,
            prepare_position: 1234,
            commit_position: 1234,
            metadata: [("type".to_owned(), "OrderPlaced".to_owned())].into(),
            custom_metadata: Vec::new(),
            data: br#"{"total":3}"#.to_vec(),
        };
        let resp = ReadResp {
            content: Some(read_resp::Content::Event(read_resp::ReadEvent {
                event: Some(recorded),
                link: None,
                position: Some(read_resp::read_event::Position::CommitPosition(1234)),
            })),
        };

        let back = ReadResp::decode(resp.encode_to_vec().as_slice()).unwrap();

        assert_eq!(back, resp);
        let Some(read_resp::Content::Event(event)) = back.content else {
            panic!("event lost: {back:?}");
        };
        let recorded = event.event.unwrap();
        assert_eq!(recorded.stream_revision, 7);
        assert_eq!(recorded.metadata["type"], "OrderPlaced");
        assert_eq!(recorded.data, br#"{"total":3}"#);
    }
}
