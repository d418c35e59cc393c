//! The protobuf codec of exportd's services (build.rs names it for the generated code).
//!
//! Encoding is prost's. Decoding differs from tonic's own codec in two ways:
//! - bytes that are not a valid message (garbage, invalid UTF-8 in a string, nesting beyond
//!   prost's recursion limit) are the client's fault: INVALID_ARGUMENT with reason
//!   `MALFORMED_MESSAGE`, where tonic answers INTERNAL;
//! - every decoded request is held to its bounds (`api::bounds`) before a handler sees it, so
//!   that an oversized field is INVALID_ARGUMENT naming the field and the bound, for unary
//!   RPCs and for each message of a client stream alike.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::{bounds, status};
use crate::error::{Error, ErrorCode};

pub struct BoundedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder { _type: PhantomData }
    }
}

pub struct BoundedDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message = U::decode(buf).map_err(|e| status::to_status(malformed::<U>(e)))?;
        bounds::check_decoded(&message).map_err(status::to_status)?;
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The message type's protobuf name (the last segment of its Rust path).
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// How much of the field path of a decode error the message shows (a deeply nested message
/// has a path as deep as it is).
const SHOWN_PATH_CHARS: usize = 200;

fn malformed<U>(error: prost::DecodeError) -> Error {
    let name = message_name::<U>();
    // prost says "failed to decode Protobuf message: <path>: <problem>"; the problem first.
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let message = match text.rsplit_once(": ") {
        Some((path, problem)) => {
            let mut path: String = path.chars().take(SHOWN_PATH_CHARS).collect();
            if path.len() < text.len() - problem.len() - 2 {
                path.push('…');
            }
            format!("the message is not a valid exportd.v1.{name}: {problem} (in {path})")
        }
        None => format!("the message is not a valid exportd.v1.{name}: {text}"),
    };
    Error::new(ErrorCode::InvalidArgument, "MALFORMED_MESSAGE", message)
        .with_meta("message_type", format!("exportd.v1.{name}"))
}
