//! gRPC message framing for ADS, sized for many long-lived streams.
//!
//! tonic's generated server encodes every response of a stream into one `BytesMut` that it
//! keeps for the stream's life, so each connected proxy held a buffer as large as the largest
//! response it was ever sent (a full CDS answer: about 130 KiB with 100 services). Here each
//! response is encoded once into a buffer of exactly its framed size (the 5-byte gRPC prefix and
//! the message, `prost`'s `encoded_len`), handed to h2 as `Bytes`, and freed as soon as h2 has
//! written it: nothing of a response outlives its send. Requests are small and are decoded by
//! tonic's own [`Streaming`] with a small initial buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http::HeaderMap;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::{BufferSettings, Streaming};

/// The gRPC length prefix: a compressed flag and a big-endian `u32` length.
pub(crate) const PREFIX_LEN: usize = 5;

/// Initial (and growth step of the) buffer a request stream decodes into. Proxies' requests are
/// small (an EDS subscription to 100 clusters is about 6 KiB), so the buffer starts small and
/// grows only for the streams that need it.
const DECODE_BUFFER: usize = 1024;

/// What a connection task hands to its response stream: one framed message, or the status that
/// ends the stream.
pub(crate) type Outgoing = Result<Bytes, Status>;

/// Encodes `message` as one uncompressed gRPC message in a buffer of exactly its size.
pub(crate) fn encode<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    frame(message.encoded_len(), |buf| message.encode_raw(buf))
}

/// Frames a message of `len` encoded bytes that `write` appends, in a buffer of exactly
/// `PREFIX_LEN + len` bytes.
pub(crate) fn frame(len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Result<Bytes, Status> {
    let prefix_len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("response of {len} bytes exceeds gRPC's 4 GiB"))
    })?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(prefix_len);
    write(&mut buf);
    if buf.len() != PREFIX_LEN + len {
        return Err(Status::internal(format!(
            "response encoded to {} bytes, {len} expected",
            buf.len() - PREFIX_LEN
        )));
    }
    Ok(Bytes::from(buf))
}

/// Decodes the request messages of one stream from its HTTP/2 body.
pub(crate) fn requests<T>(body: tonic::body::Body) -> Streaming<T>
where
    T: prost::Message + Default + Send + 'static,
{
    let decoder =
        tonic_prost::ProstDecoder::<T>::new(BufferSettings::new(DECODE_BUFFER, DECODE_BUFFER));
    Streaming::new_request(decoder, body, None, None)
}

/// The response body of one ADS stream: the framed messages the connection task sends, then
/// trailers with the status it ended with (`OK` when it just went away).
#[derive(Debug)]
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    ended: bool,
}

impl ResponseBody {
    /// A body fed by `rx`.
    pub(crate) fn new(rx: mpsc::Receiver<Outgoing>) -> Self {
        ResponseBody { rx, ended: false }
    }

    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.ended = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value fails; the code alone still goes.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(message)) => Frame::data(message),
            Some(Err(status)) => self.trailers(&status),
            None => self.trailers(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use http_body_util::BodyExt;
    use tonic::Code;
    use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use xds_proto::google::protobuf::Any;

    use super::*;

    fn response(resources: usize, size: usize) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v1".into(),
            type_url: xds_proto::type_url::CLUSTER.into(),
            nonce: "1-1".into(),
            resources: (0..resources)
                .map(|i| Any {
                    type_url: xds_proto::type_url::CLUSTER.into(),
                    value: vec![u8::try_from(i % 251).unwrap_or(0); size],
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A request body delivered in the given chunks, as h2 would hand over DATA frames.
    fn body_of(chunks: Vec<Vec<u8>>) -> tonic::body::Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    fn framed_request(resource_names: usize) -> Vec<u8> {
        let request = DiscoveryRequest {
            type_url: xds_proto::type_url::CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names: (0..resource_names)
                .map(|i| format!("outbound|80||service-{i}.default.svc.cluster.local"))
                .collect(),
            ..Default::default()
        };
        encode(&request).unwrap().to_vec()
    }

    #[test]
    fn a_response_is_framed_in_a_buffer_of_exactly_its_size() {
        let message = response(100, 1300);
        let mut framed = encode(&message).unwrap();
        assert_eq!(
            framed.len(),
            PREFIX_LEN + prost::Message::encoded_len(&message)
        );
        assert_eq!(framed.get_u8(), 0, "not compressed");
        assert_eq!(framed.get_u32() as usize, framed.len());
        let decoded: DiscoveryResponse = prost::Message::decode(framed).unwrap();
        assert_eq!(decoded, message);
    }

    #[tokio::test]
    async fn a_request_split_over_many_frames_is_reassembled() {
        let bytes = framed_request(500);
        assert!(bytes.len() > 16 * 1024, "larger than an HTTP/2 frame");
        // Split mid-prefix too: 3 bytes, then odd-sized pieces.
        let mut chunks = vec![bytes[..3].to_vec()];
        chunks.extend(bytes[3..].chunks(1000).map(<[u8]>::to_vec));
        let mut stream = requests::<DiscoveryRequest>(body_of(chunks));
        let request = stream.message().await.unwrap().unwrap();
        assert_eq!(request.resource_names.len(), 500);
        assert!(stream.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn two_requests_in_one_frame_are_both_decoded() {
        let mut both = framed_request(1);
        both.extend(framed_request(2));
        let mut stream = requests::<DiscoveryRequest>(body_of(vec![both]));
        assert_eq!(
            stream
                .message()
                .await
                .unwrap()
                .unwrap()
                .resource_names
                .len(),
            1
        );
        assert_eq!(
            stream
                .message()
                .await
                .unwrap()
                .unwrap()
                .resource_names
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_malformed_prefix_is_a_grpc_error_not_a_panic() {
        // Compressed flag 7 is not a gRPC flag.
        let mut stream = requests::<DiscoveryRequest>(body_of(vec![vec![7, 0, 0, 0, 1, 0x0a]]));
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        // A compressed message on a stream that declared no encoding.
        let mut stream = requests::<DiscoveryRequest>(body_of(vec![vec![1, 0, 0, 0, 0]]));
        assert_eq!(stream.message().await.unwrap_err().code(), Code::Internal);
        // A length larger than any message the server accepts.
        let mut stream =
            requests::<DiscoveryRequest>(body_of(vec![vec![0, 0xff, 0xff, 0xff, 0xff]]));
        assert_eq!(stream.message().await.unwrap_err().code(), Code::OutOfRange);
        // A message cut short by the end of the stream.
        let mut stream = requests::<DiscoveryRequest>(body_of(vec![vec![0, 0, 0, 0, 9, 1]]));
        assert_eq!(stream.message().await.unwrap_err().code(), Code::Internal);
        // Bytes that are not a DiscoveryRequest.
        let mut stream =
            requests::<DiscoveryRequest>(body_of(vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]]));
        assert_eq!(stream.message().await.unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn the_body_streams_messages_then_the_ending_status() {
        let (tx, rx) = mpsc::channel(4);
        let first = encode(&response(3, 10)).unwrap();
        tx.send(Ok(first.clone())).await.unwrap();
        tx.send(Err(Status::invalid_argument("node: missing")))
            .await
            .unwrap();
        let mut body = ResponseBody::new(rx);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), first);
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "node: missing");
        assert!(body.frame().await.is_none());
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn the_body_ends_ok_when_the_connection_task_goes_away() {
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }
}
