//! Stage 3a: refusing a TLS connection on the wire, before any cryptography: the fatal
//! `unrecognized_name` alert (what nginx's `ssl_reject_handshake` sends), or a TCP reset.

use std::time::Duration;

use icp_gate_config::Refuse;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::socket::{linger_close, reset};

/// A plaintext alert record: content type 21, record version TLS 1.2, length 2, level fatal (2),
/// description `unrecognized_name` (112). Valid before the ServerHello for TLS 1.2 and 1.3.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// How long a refused client gets to take its 7 bytes.
const ALERT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn refuse(mut stream: Stream, how: Refuse) {
    match how {
        Refuse::Reset => reset(stream),
        Refuse::Alert => {
            let write = async {
                stream.write_all(&UNRECOGNIZED_NAME_ALERT).await?;
                stream.flush().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(ALERT_WRITE_TIMEOUT, write).await {
                // Unread bytes at close would turn the FIN into a reset that can overtake the
                // alert: stop sending, then drain what the client still sends, briefly.
                linger_close(stream).await;
            }
        }
    }
}
