//! The on-disk form of the store: one append-only journal file.
//!
//! ```text
//! file   = "COHORTJ1" record* zero*
//! record = len:u32le crc32:u32le payload[len]
//! payload: 0x01 assign  = experiment:u16le key:[u8;16] variant:u8 epoch:u32le first_seen:u32le
//!          0x02 ledger  = JSON of a LedgerEvent
//! ```
//!
//! Records are immutable facts, replayed in order: the first assignment of a
//! key wins (a later duplicate, from two first requests racing, is ignored),
//! and a ledger event that drops assignments clears its experiment. A record
//! cut short by `kill -9` fails its length or CRC check; it was never
//! acknowledged, so replay truncates the file there and carries on.
//!
//! The writer preallocates the file ahead of its records with zero bytes it
//! has written and synced (so a batch's `fdatasync` writes data only, never
//! the file's size or block map). A record never has length 0, so eight
//! zero bytes where a record would start, followed by nothing but zeros,
//! are the end of the records. This is still version 1: a build that does
//! not know the zero tail reads it as a torn tail of at most
//! [`PREALLOCATE`] bytes and truncates it.

use std::io::{self, Read, Write};

use super::epoch::Epoch;
use super::hash::UnitKey;
use super::ledger::{ExperimentId, LedgerEvent, VariantId};

/// The first 8 bytes of every journal: the format and its version. A file
/// that starts otherwise is not replayed.
pub const MAGIC: &[u8; 8] = b"COHORTJ1";
const KIND_ASSIGN: u8 = 1;
const KIND_LEDGER: u8 = 2;
const ASSIGN_LEN: usize = 28;
/// How far the writer preallocates past the last record, at most: no more
/// than a build without preallocation cuts off as a torn tail (1 MiB).
pub const PREALLOCATE: u64 = 1 << 20;
/// A ledger event is JSON, the applied config included (overrides lists can
/// make it large); anything larger is corruption. The writer refuses to
/// journal a bigger record, so replay never meets one it wrote.
pub const MAX_RECORD: usize = 64 << 20;

/// One journal record: a fact, never rewritten.
// A ledger record (rare: one per applied config) carries a rule, bucketing
// parameters included, and is much larger than an assignment; records are
// encoded by reference and decoded one at a time, so the size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A unit's first assignment in an experiment (28 payload bytes).
    Assign {
        /// The experiment's ledger id.
        experiment: ExperimentId,
        /// The unit's [`super::hash::unit_key`] in that experiment.
        key: UnitKey,
        /// The ledger id of the variant assigned.
        variant: VariantId,
        /// The epoch whose rule assigned it.
        epoch: Epoch,
        /// Unix seconds of the first exposure.
        first_seen: u32,
    },
    /// A change to the epoch ledger (new epoch, applied config, pause).
    Ledger(LedgerEvent),
}

/// Appends `rec`, framed (length, CRC-32 of the payload, payload), to `out`.
pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    match rec {
        Record::Assign {
            experiment,
            key,
            variant,
            epoch,
            first_seen,
        } => {
            out.push(KIND_ASSIGN);
            out.extend_from_slice(&experiment.to_le_bytes());
            out.extend_from_slice(&key.to_bytes());
            out.push(*variant);
            out.extend_from_slice(&epoch.0.to_le_bytes());
            out.extend_from_slice(&first_seen.to_le_bytes());
        }
        Record::Ledger(ev) => {
            out.push(KIND_LEDGER);
            serde_json::to_writer(&mut *out, ev).expect("ledger event serializes");
        }
    }
    let payload = &out[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why replay stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after a whole, valid record (or the magic),
    /// or only zero bytes (the writer's preallocation) follow it.
    Clean,
    /// A torn or corrupt record at this offset; everything from here is dropped.
    Torn {
        /// Byte offset of the bad record's header from the start of the
        /// file (magic included): the length the file is cut back to.
        offset: u64,
        /// What was wrong with it: a short header or record, a bad length, a
        /// checksum mismatch or an undecodable payload.
        reason: &'static str,
        /// Whether the file ends inside this record: the signature of a
        /// write cut short, whatever its size.
        runs_to_end: bool,
    },
}

/// Reads records from `r` (positioned after the magic) until the end or the
/// first bad record. Returns the byte length of the good prefix, magic included.
pub fn replay(
    mut r: impl Read,
    mut each: impl FnMut(Record) -> io::Result<()>,
) -> io::Result<(u64, Tail)> {
    let mut offset = MAGIC.len() as u64;
    let mut header = [0u8; 8];
    let mut payload = Vec::with_capacity(64);
    loop {
        match read_full(&mut r, &mut header)? {
            0 => return Ok((offset, Tail::Clean)),
            8 => {}
            // The last few bytes of the zero-filled space (1 MiB is not a
            // whole number of records): the end, not a torn header.
            n if header[..n].iter().all(|&b| b == 0) => return Ok((offset, Tail::Clean)),
            _ => {
                return Ok((
                    offset,
                    Tail::Torn {
                        offset,
                        reason: "short header",
                        runs_to_end: true,
                    },
                ))
            }
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if header == [0; 8] && only_zeros(&mut r)? {
            return Ok((offset, Tail::Clean));
        }
        if len == 0 || len > MAX_RECORD {
            return Ok((
                offset,
                Tail::Torn {
                    offset,
                    reason: "bad length",
                    runs_to_end: false,
                },
            ));
        }
        payload.resize(len, 0);
        let got = read_full(&mut r, &mut payload)?;
        if got != len {
            // The file ends inside this record. Only a ledger record can be
            // long; an assignment claiming more than its 28 bytes is a
            // damaged length field, and must not excuse truncating far back.
            let plausible = got == 0 || payload[0] == KIND_LEDGER || len == ASSIGN_LEN;
            return Ok((
                offset,
                Tail::Torn {
                    offset,
                    reason: "short record",
                    runs_to_end: plausible,
                },
            ));
        }
        if crc32fast::hash(&payload) != crc {
            return Ok((
                offset,
                Tail::Torn {
                    offset,
                    reason: "checksum mismatch",
                    runs_to_end: false,
                },
            ));
        }
        let Some(rec) = decode(&payload) else {
            return Ok((
                offset,
                Tail::Torn {
                    offset,
                    reason: "undecodable record",
                    runs_to_end: false,
                },
            ));
        };
        each(rec)?;
        offset += 8 + len as u64;
    }
}

fn decode(p: &[u8]) -> Option<Record> {
    match *p.first()? {
        KIND_ASSIGN if p.len() == ASSIGN_LEN => Some(Record::Assign {
            experiment: u16::from_le_bytes(p[1..3].try_into().ok()?),
            key: UnitKey::from_bytes(p[3..19].try_into().ok()?),
            variant: p[19],
            epoch: Epoch(u32::from_le_bytes(p[20..24].try_into().ok()?)),
            first_seen: u32::from_le_bytes(p[24..28].try_into().ok()?),
        }),
        KIND_LEDGER => serde_json::from_slice(&p[1..]).ok().map(Record::Ledger),
        _ => None,
    }
}

/// Whether a bad record at `offset`, whose header and first payload byte
/// are `head`, is a write cut short inside the preallocated zeros: its
/// length runs past `data_end` (the file's last non-zero byte) and is one
/// its kind can have, so it is no damaged length field excusing the loss of
/// records after it.
pub fn runs_past(head: &[u8; 9], offset: u64, data_end: u64) -> bool {
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let plausible = (head[8] == KIND_LEDGER && len <= MAX_RECORD) || len == ASSIGN_LEN;
    plausible && offset + 8 + len as u64 >= data_end
}

/// Whether everything left in `r` is zero bytes (the preallocated tail).
fn only_zeros(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match read_full(r, &mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the magic into a new, empty journal.
pub fn init(w: &mut impl Write) -> io::Result<()> {
    w.write_all(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::hash::unit_key;

    fn assign(i: u32) -> Record {
        Record::Assign {
            experiment: 3,
            key: unit_key("e", format!("u{i}").as_bytes()),
            variant: (i % 3) as u8,
            epoch: Epoch(i),
            first_seen: 1_700_000_000 + i,
        }
    }

    #[test]
    fn records_roundtrip_and_torn_tail_is_detected() {
        let mut buf = Vec::new();
        for i in 0..10 {
            encode(&assign(i), &mut buf);
        }
        let mut seen = Vec::new();
        let (len, tail) = replay(&buf[..], |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(tail, Tail::Clean);
        assert_eq!(seen, (0..10).map(assign).collect::<Vec<_>>());
        assert_eq!(len, 8 + buf.len() as u64);

        // Cut the last record anywhere: the first nine survive, the tail is torn.
        let one = buf.len() / 10;
        for cut in 1..one {
            let mut n = 0;
            let (len, tail) = replay(&buf[..buf.len() - cut], |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(n, 9, "cut {cut}");
            assert_eq!(len, 8 + (9 * one) as u64);
            assert!(matches!(tail, Tail::Torn { .. }));
        }
        // A flipped bit is caught by the checksum.
        let mut bad = buf.clone();
        bad[one + 12] ^= 1;
        let mut n = 0;
        replay(&bad[..], |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_zeroed_tail_ends_the_records_and_anything_in_it_is_torn() {
        let mut buf = Vec::new();
        for i in 0..10 {
            encode(&assign(i), &mut buf);
        }
        let data = buf.len();
        buf.resize(data + 5000, 0);
        let count = |b: &[u8]| {
            let mut n = 0;
            let (len, tail) = replay(b, |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
            (n, len, tail)
        };
        assert_eq!(count(&buf), (10, 8 + data as u64, Tail::Clean));
        // Fewer zeros than a header (1 MiB is not a whole number of
        // records) are the end too; a short header with data is torn.
        for short in 1..8 {
            let mut few = buf[..data].to_vec();
            few.resize(data + short, 0);
            assert_eq!(
                count(&few),
                (10, 8 + data as u64, Tail::Clean),
                "{short} zeros"
            );
            few[data] = 7;
            assert!(matches!(
                count(&few).2,
                Tail::Torn {
                    reason: "short header",
                    ..
                }
            ));
        }
        // A record cut short into the zeros fails its checksum: torn.
        let one = data / 10;
        let mut cut = buf.clone();
        cut[data - one + 20..data].fill(0);
        let (n, len, tail) = count(&cut);
        assert_eq!((n, len), (9, 8 + (data - one) as u64));
        assert!(matches!(
            tail,
            Tail::Torn {
                reason: "checksum mismatch",
                ..
            }
        ));
        // A zero header with bytes after it is not the end: torn.
        let mut stray = buf.clone();
        stray[data + 3000] = 1;
        let (n, _, tail) = count(&stray);
        assert_eq!(n, 10);
        assert!(matches!(
            tail,
            Tail::Torn {
                reason: "bad length",
                ..
            }
        ));
    }
}
