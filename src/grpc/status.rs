//! gRPC status codes and the one error type of the gRPC door, mapped once to a status.

use crate::engine::{EventError, PublishError, TopicError};

/// gRPC status codes (grpc/grpc doc/statuscodes.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The `grpc-status` header value, without formatting a number per response.
    pub fn as_header(self) -> &'static [u8] {
        const VALUES: [&[u8]; 17] = [
            b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9", b"10", b"11", b"12", b"13",
            b"14", b"15", b"16",
        ];
        VALUES[self as usize]
    }
}

/// Why a call ends with something other than OK. Each variant maps to one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("event {index}: {error}")]
    InvalidBatchEvent { index: usize, error: EventError },
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] EventError),
    #[error("invalid topic_pattern: {0}")]
    InvalidPattern(TopicError),
    #[error("cannot decode the request message: {0}")]
    Decode(String),
    #[error("unknown method {0}")]
    UnknownMethod(String),
    #[error("message compressed with {0:?}, which this server does not support")]
    Compression(String),
    #[error("message of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("{0}")]
    Publish(#[from] PublishError),
    #[error("slow consumer: a CRITICAL event could not be queued; subscription cut")]
    SlowConsumer,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    NotFound(String),
}

impl GrpcError {
    /// The status a client sees.
    pub fn code(&self) -> Code {
        match self {
            GrpcError::InvalidArgument(_)
            | GrpcError::InvalidBatchEvent { .. }
            | GrpcError::InvalidEvent(_)
            | GrpcError::InvalidPattern(_)
            | GrpcError::Decode(_) => Code::InvalidArgument,
            GrpcError::UnknownMethod(_) | GrpcError::Compression(_) => Code::Unimplemented,
            GrpcError::TooLarge { .. }
            | GrpcError::SlowConsumer
            | GrpcError::ResourceExhausted(_) => Code::ResourceExhausted,
            GrpcError::Publish(PublishError::TooManyTopics { .. }) => Code::ResourceExhausted,
            GrpcError::Publish(PublishError::ShuttingDown) | GrpcError::ShuttingDown => {
                Code::Unavailable
            }
            GrpcError::DeadlineExceeded => Code::DeadlineExceeded,
            GrpcError::NotFound(_) => Code::NotFound,
        }
    }
}

/// Percent-encodes a `grpc-message` value (gRPC over HTTP/2: every byte outside 0x20..=0x7E,
/// and '%', becomes %XX of its UTF-8 encoding).
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_header_values_are_the_codes() {
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::Unavailable,
            Code::Unauthenticated,
        ] {
            assert_eq!(code.as_header(), (code as u8).to_string().as_bytes());
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn errors_map_to_the_statuses_of_section_2() {
        assert_eq!(
            GrpcError::UnknownMethod("/x".into()).code(),
            Code::Unimplemented
        );
        assert_eq!(
            GrpcError::Compression("gzip".into()).code(),
            Code::Unimplemented
        );
        assert_eq!(
            GrpcError::TooLarge { size: 5, max: 4 }.code(),
            Code::ResourceExhausted
        );
        assert_eq!(GrpcError::SlowConsumer.code(), Code::ResourceExhausted);
        assert_eq!(GrpcError::ShuttingDown.code(), Code::Unavailable);
        assert_eq!(GrpcError::DeadlineExceeded.code(), Code::DeadlineExceeded);
        let e = GrpcError::InvalidBatchEvent {
            index: 3,
            error: EventError::Priority(9),
        };
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().starts_with("event 3:"));
    }
}
