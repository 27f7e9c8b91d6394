//! The payload of a spool record: what is needed to derive the batch's rows again.

use bytes::Bytes;

use crate::validate::{BodyLimits, RequestContext};

/// Version 2 is written while the body is validated, so it holds no row counts but the limits
/// the body is validated under: replay validates it again and comes to the same verdict.
/// Version 1 (written after validation, with the counts) is still read.
const FORMAT_VERSION: u8 = 2;
const FORMAT_VERSION_1: u8 = 1;

/// A batch as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub stream: String,
    pub schema_version: u32,
    pub context: RequestContext,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// `X-Sluice-Row-Count` as the sender declared it: replay refuses the body again when it
    /// does not hold that many records. (For version-1 records, the records counted when the
    /// batch was accepted.)
    pub declared_rows: Option<u64>,
    /// The limits the body was validated under, so that replay comes to the same verdict
    /// whatever the configuration says by then. (None for version-1 records: they were
    /// accepted.)
    pub limits: Option<BodyLimits>,
    /// The batch id is the sender's (`X-Sluice-Batch-Id`), not one sluice made up: only such an
    /// id can come again in a retry, so only it takes part in deduplication. (False for
    /// version-1 records.)
    pub sender_batch_id: bool,
    /// The body exactly as received (still compressed).
    pub body: Bytes,
}

impl SpoolRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.push(FORMAT_VERSION);
        put_bytes(&mut out, self.stream.as_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        let c = &self.context;
        for text in [
            &c.principal,
            &c.origin,
            &c.region,
            &c.batch_id,
            &c.request_id,
        ] {
            put_bytes(&mut out, text.as_bytes());
        }
        out.extend_from_slice(&c.received_at.to_le_bytes());
        out.push(u8::from(c.url_encoded));
        put_optional(&mut out, self.content_type.as_deref());
        put_optional(&mut out, self.content_encoding.as_deref());
        match self.declared_rows {
            None => out.push(0),
            Some(rows) => {
                out.push(1);
                out.extend_from_slice(&rows.to_le_bytes());
            }
        }
        match &self.limits {
            None => out.push(0),
            Some(limits) => {
                out.push(1);
                for limit in [
                    limits.max_decompressed_bytes,
                    limits.max_records,
                    limits.max_errors,
                    limits.max_line_bytes,
                    limits.max_nesting_depth,
                ] {
                    out.extend_from_slice(&(limit as u64).to_le_bytes());
                }
            }
        }
        out.push(u8::from(self.sender_batch_id));
        put_bytes(&mut out, &self.body);
        out
    }

    /// None when the payload is not a version-1 or version-2 record.
    pub(super) fn decode(payload: &[u8]) -> Option<SpoolRecord> {
        let mut reader = Reader(payload);
        let version = reader.u8()?;
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return None;
        }
        let stream = reader.string()?;
        let schema_version = reader.u32()?;
        let context = RequestContext {
            principal: reader.string()?,
            origin: reader.string()?,
            region: reader.string()?,
            batch_id: reader.string()?,
            request_id: reader.string()?,
            received_at: reader.u32()?,
            url_encoded: reader.u8()? != 0,
        };
        let content_type = reader.optional()?;
        let content_encoding = reader.optional()?;
        let (declared_rows, limits, sender_batch_id) = if version == FORMAT_VERSION_1 {
            // Accepted and rejected rows: together, every record of the body.
            let records = u64::from(reader.u32()?) + u64::from(reader.u32()?);
            (Some(records), None, false)
        } else {
            let declared_rows = match reader.u8()? {
                0 => None,
                1 => Some(reader.u64()?),
                _ => return None,
            };
            let limits = match reader.u8()? {
                0 => None,
                1 => Some(BodyLimits {
                    max_decompressed_bytes: reader.usize()?,
                    max_records: reader.usize()?,
                    max_errors: reader.usize()?,
                    max_line_bytes: reader.usize()?,
                    max_nesting_depth: reader.usize()?,
                }),
                _ => return None,
            };
            let sender_batch_id = match reader.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            (declared_rows, limits, sender_batch_id)
        };
        let body = Bytes::copy_from_slice(reader.bytes()?);
        reader.0.is_empty().then_some(SpoolRecord {
            stream,
            schema_version,
            context,
            content_type,
            content_encoding,
            declared_rows,
            limits,
            sender_batch_id,
            body,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_bytes(out, text.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn usize(&mut self) -> Option<usize> {
        self.u64().and_then(|n| usize::try_from(n).ok())
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes()
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
    }
    fn optional(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }
}
