//! gRPC message framing for ADS, sized for many long-lived streams.
//!
//! tonic's generated server encodes every response of a stream into one `BytesMut` that it
//! keeps for the stream's life, so each connected proxy held a buffer as large as the largest
//! response it was ever sent (a full CDS answer: about 130 KiB with 100 services). Here each
//! response is encoded once into a buffer of exactly its framed size (the 5-byte gRPC prefix and
//! the message, `prost`'s `encoded_len`), handed to h2 as `Bytes`, and freed as soon as h2 has
//! written it: nothing of a response outlives its send. Requests ([`Requests`]) are buffered
//! only while a message is incomplete.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tonic::{Code, Status};

/// The gRPC length prefix: a compressed flag and a big-endian `u32` length.
pub(crate) const PREFIX_LEN: usize = 5;

/// The largest request accepted, as gRPC's default receive limit.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

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

/// The request messages of one stream, decoded from its HTTP/2 body.
///
/// Bytes are buffered only while a message is incomplete (split over DATA frames), and the
/// buffer is released once it has been decoded: between requests an idle stream holds nothing.
/// (tonic's decoder keeps its buffer, grown to the largest request, for the stream's life.)
#[derive(Debug)]
pub(crate) struct Requests<T> {
    body: tonic::body::Body,
    buf: BytesMut,
    _message: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Requests<T> {
    /// Requests read from `body`.
    pub(crate) fn new(body: tonic::body::Body) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            _message: PhantomData,
        }
    }

    /// The next request; `None` when the proxy ends or cancels the stream. Cancel-safe: bytes
    /// read are kept in `self` until their message is complete.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(message) = self.decode_buffered()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) if status.code() == Code::Cancelled => return Ok(None),
                Some(Err(status)) => return Err(status),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::internal(
                        "the request stream ended inside a message",
                    ));
                }
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<T>, Status> {
        let Some(prefix) = self.buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "compressed request message, but the stream declared no grpc-encoding",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "invalid gRPC compressed flag {flag} (0 or 1)"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::out_of_range(format!(
                "request message of {len} bytes; the limit is {MAX_REQUEST}"
            )));
        }
        let Some(encoded) = self.buf.get(PREFIX_LEN..PREFIX_LEN + len) else {
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        };
        let message = T::decode(encoded)
            .map_err(|e| Status::internal(format!("decoding the request: {e}")))?;
        self.buf.advance(PREFIX_LEN + len);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
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

    /// The request stream a body of `chunks` makes.
    fn requests(chunks: Vec<Vec<u8>>) -> Requests<DiscoveryRequest> {
        Requests::new(body_of(chunks))
    }

    /// How many resource names the stream's next request has (it must have one).
    async fn next_names(stream: &mut Requests<DiscoveryRequest>) -> usize {
        let request = stream.message().await.unwrap();
        request.expect("a request").resource_names.len()
    }

    /// The gRPC code the first message of a body of `bytes` fails with.
    async fn error_code(bytes: &[u8]) -> Code {
        requests(vec![bytes.to_vec()])
            .message()
            .await
            .unwrap_err()
            .code()
    }

    /// The response body's next frame, which must be its trailers.
    async fn next_trailers(body: &mut ResponseBody) -> http::HeaderMap {
        let frame = body.frame().await.expect("a frame").expect("no error");
        frame.into_trailers().expect("trailers")
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
        let mut stream = requests(chunks);
        assert_eq!(next_names(&mut stream).await, 500);
        assert!(stream.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_buffer_is_released_once_a_split_request_is_decoded() {
        let bytes = framed_request(200);
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        let mut stream = requests(vec![head.to_vec(), tail.to_vec(), framed_request(1)]);
        assert_eq!(next_names(&mut stream).await, 200);
        assert_eq!(stream.buf.capacity(), 0, "nothing kept between requests");
        assert_eq!(next_names(&mut stream).await, 1);
        assert!(stream.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_cancelled_stream_ends_without_an_error() {
        let frames = [Err::<Frame<Bytes>, _>(Status::cancelled(
            "client went away",
        ))];
        let body =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        let mut stream = Requests::<DiscoveryRequest>::new(body);
        assert!(stream.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn two_requests_in_one_frame_are_both_decoded() {
        let mut both = framed_request(1);
        both.extend(framed_request(2));
        let mut stream = requests(vec![both]);
        assert_eq!(next_names(&mut stream).await, 1);
        assert_eq!(next_names(&mut stream).await, 2);
    }

    #[tokio::test]
    async fn a_malformed_prefix_is_a_grpc_error_not_a_panic() {
        // Compressed flag 7 is not a gRPC flag.
        assert_eq!(error_code(&[7, 0, 0, 0, 1, 0x0a]).await, Code::Internal);
        // A compressed message on a stream that declared no encoding.
        assert_eq!(error_code(&[1, 0, 0, 0, 0]).await, Code::Internal);
        // A length larger than any message the server accepts.
        assert_eq!(
            error_code(&[0, 0xff, 0xff, 0xff, 0xff]).await,
            Code::OutOfRange
        );
        // A message cut short by the end of the stream.
        assert_eq!(error_code(&[0, 0, 0, 0, 9, 1]).await, Code::Internal);
        // Bytes that are not a DiscoveryRequest.
        assert_eq!(
            error_code(&[0, 0, 0, 0, 2, 0xff, 0xff]).await,
            Code::Internal
        );
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
        let status = Status::from_header_map(&next_trailers(&mut body).await).unwrap();
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
        assert_eq!(next_trailers(&mut body).await["grpc-status"], "0");
    }
}
