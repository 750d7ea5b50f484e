//! An HTTP/2 test client on the `h2` crate.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// An HTTP/2 client on `io` (a TCP or TLS stream), its connection driven by a task of its own.
pub async fn h2_over<T>(io: T) -> h2::client::SendRequest<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The rest of a response body, its flow-control window released as it is read (trailers, if
/// any, are still there to read).
pub async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        all.extend_from_slice(&data);
    }
    all
}
