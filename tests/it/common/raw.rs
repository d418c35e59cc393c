//! gRPC calls with request bytes chosen by the test: malformed messages, or a message encoded
//! by hand (map entries in an order of the test's choosing), which the generated clients
//! cannot send.

use prost::bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Sends and receives message bodies as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawCoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let len = buf.remaining();
        Ok(Some(buf.copy_to_bytes(len).to_vec()))
    }
}

fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    }
    request
}

async fn ready(channel: Channel) -> tonic::client::Grpc<Channel> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    grpc.ready().await.expect("channel ready");
    grpc
}

fn path(method: &str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::try_from(method).expect("a gRPC method path")
}

/// A unary (or server-streaming: its first answer) call of `method` (`/pkg.Service/Rpc`).
pub async fn unary(channel: Channel, token: Option<&str>, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = ready(channel).await;
    grpc.unary(request(body, token), path(method), RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// A server-streaming call: every answer until the stream ends, or the first error.
pub async fn server_streaming(
    channel: Channel,
    token: Option<&str>,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut grpc = ready(channel).await;
    let mut stream = grpc
        .server_streaming(request(body, token), path(method), RawCodec)
        .await?
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await? {
        answers.push(answer);
    }
    Ok(answers)
}

/// A client-streaming call sending `messages` in order.
pub async fn client_streaming(
    channel: Channel,
    token: Option<&str>,
    method: &str,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = ready(channel).await;
    grpc.client_streaming(request(tokio_stream::iter(messages), token), path(method), RawCodec)
        .await
        .map(|r| r.into_inner())
}
