//! Bytes both ways between two connections: a TCP listener's relay, transparent mode's
//! passthrough, and the two ends of a protocol switch.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes a relay reads per system call each way: 64 KiB (Tokio's default is 8 KiB) fills a
/// TLS record of the largest size in one write and costs a fraction of the calls per byte.
const PIPE_BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides are closed.
pub async fn pipe<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, PIPE_BUFFER, PIPE_BUFFER).await
}
