//! Cairn's errors as the protocol's statuses. The clients recognise some by their
//! `exception` metadata (`stream-deleted`, `wrong-expected-version`), the rest by code;
//! a status made from one of Cairn's API errors also carries its contract code in
//! `x-cairn-error`.

use axum::http::StatusCode;
use cairn_core::ExpectedVersion;
use cairn_core::lifecycle::DeleteError;
use cairn_server::error::ApiError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The metadata key the clients read an error's kind from.
const EXCEPTION: &str = "exception";
/// The metadata key carrying Cairn's contract error code.
const CAIRN_ERROR: &str = "x-cairn-error";

fn with_metadata(mut status: Status, pairs: &[(&'static str, String)]) -> Status {
    for (key, value) in pairs {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(*key, value);
        }
    }
    status
}

/// The status of a Cairn API error.
pub fn from_api(error: &ApiError) -> Status {
    let code = match error.status() {
        StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::PAYLOAD_TOO_LARGE => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT | StatusCode::GONE => Code::FailedPrecondition,
        StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut pairs = vec![(CAIRN_ERROR, error.code().to_owned())];
    match error.code() {
        "stream_tombstoned" => pairs.push((EXCEPTION, "stream-deleted".into())),
        "wrong_expected_version" => pairs.push((EXCEPTION, "wrong-expected-version".into())),
        "forbidden" | "unauthorized" => pairs.push((EXCEPTION, "access-denied".into())),
        _ => {}
    }
    with_metadata(Status::new(code, error.message()), &pairs)
}

/// Anything that converts into a Cairn API error, as a status.
pub fn from<E: Into<ApiError>>(error: E) -> Status {
    from_api(&error.into())
}

/// The stream is tombstoned: what `KurrentDB` answers for a deleted stream.
pub fn stream_deleted(stream: &str) -> Status {
    with_metadata(
        Status::failed_precondition(format!("stream {stream} is deleted for good (tombstoned)")),
        &[
            (EXCEPTION, "stream-deleted".into()),
            ("stream-name", stream.to_owned()),
            (CAIRN_ERROR, "stream_tombstoned".into()),
        ],
    )
}

/// A delete or tombstone refused by its expected version.
pub fn wrong_expected_version(stream: &str, expected: ExpectedVersion, actual: u64) -> Status {
    let expected_text = match expected {
        ExpectedVersion::Any => "-2".to_owned(),
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => "-1".to_owned(),
        ExpectedVersion::StreamExists => "-4".to_owned(),
        ExpectedVersion::Exact(v) => (v - 1).to_string(),
    };
    let actual_text = if actual == 0 { "-1".to_owned() } else { (actual - 1).to_string() };
    with_metadata(
        Status::failed_precondition(format!(
            "wrong expected version for stream {stream}: expected revision {expected_text}, \
             the stream is at {actual_text}"
        )),
        &[
            (EXCEPTION, "wrong-expected-version".into()),
            ("stream-name", stream.to_owned()),
            ("expected-version", expected_text),
            ("actual-version", actual_text),
            (CAIRN_ERROR, "wrong_expected_version".into()),
        ],
    )
}

/// A delete's or tombstone's error.
pub fn from_delete(stream: &str, expected: ExpectedVersion, error: DeleteError) -> Status {
    match error {
        DeleteError::StreamTombstoned { .. } => stream_deleted(stream),
        DeleteError::WrongExpectedVersion { actual, .. } => {
            wrong_expected_version(stream, expected, actual)
        }
        other => from(other),
    }
}
