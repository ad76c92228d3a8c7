//! Chunked transfer coding (RFC 9112 §7.1): a scanner that follows a
//! chunked body byte by byte — to find where it ends and to re-emit its
//! chunk lines canonically — and the writer of chunks.

/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Wraps `data` as one chunk of a chunked body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    chunk_line(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes a canonical chunk-size line: lowercase hex, no extension.
fn chunk_line(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (4 * i)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Follows a chunked body, to find where it
/// ends (so the upstream connection can be reused).
#[derive(Debug, Default)]
pub struct ChunkedScan {
    state: Chunk,
    data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Chunk {
    /// Reading the hex size; the count of digits so far.
    #[default]
    Size,
    SizeDigits(u64, u8),
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace(u64),
    /// A chunk extension, up to the line end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked framing was broken.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedScan {
    /// Consumes `data`; returns how many of its bytes belong to the body
    /// once the body has ended, else `None` (all of `data` belongs to it).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        self.decode(data, &mut |_| {})
    }

    /// [`feed`](Self::feed), handing each run of payload bytes to
    /// `payload` as it passes (chunk lines, extensions and trailers are
    /// not payload). Never reads past `data`.
    pub fn decode(
        &mut self,
        data: &[u8],
        payload: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                payload(&data[i..i + take as usize]);
                i += take as usize;
                self.data += take;
                self.state = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, b) => Chunk::SizeDigits(hex(b).ok_or(BadChunk)?, 1),
                (Chunk::SizeDigits(n, d), b) if hex(b).is_some() => {
                    if d >= 15 {
                        return Err(BadChunk);
                    }
                    Chunk::SizeDigits(n * 16 + hex(b).unwrap_or(0), d + 1)
                }
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b' ' | b'\t') => {
                    Chunk::SizeSpace(n)
                }
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b';') => Chunk::Extension(n),
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(n), b) if b == b'\t' || b >= b' ' && b != 0x7f => {
                    Chunk::Extension(n)
                }
                (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart, b'\n') => return Err(BadChunk),
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::Trailer, b) if b != b'\n' => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err(BadChunk),
            };
            if self.state == Chunk::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

impl ChunkedScan {
    /// Payload bytes seen so far, framing excluded.
    pub fn data_bytes(&self) -> u64 {
        self.data
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}
