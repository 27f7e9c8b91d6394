//! The payload of a spool record: what is needed to derive the batch's rows again.

use bytes::Bytes;

use crate::validate::RequestContext;

const FORMAT_VERSION: u8 = 1;

/// An accepted batch as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub stream: String,
    pub schema_version: u32,
    pub context: RequestContext,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Rows the batch was accepted with (replay must find the same number).
    pub accepted_rows: u32,
    /// Rows it rejected (they went to the quarantine table).
    pub rejected_rows: u32,
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
        out.extend_from_slice(&self.accepted_rows.to_le_bytes());
        out.extend_from_slice(&self.rejected_rows.to_le_bytes());
        put_bytes(&mut out, &self.body);
        out
    }

    /// None when the payload is not a version-1 record.
    pub(super) fn decode(payload: &[u8]) -> Option<SpoolRecord> {
        let mut reader = Reader(payload);
        if reader.u8()? != FORMAT_VERSION {
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
        let accepted_rows = reader.u32()?;
        let rejected_rows = reader.u32()?;
        let body = Bytes::copy_from_slice(reader.bytes()?);
        reader.0.is_empty().then_some(SpoolRecord {
            stream,
            schema_version,
            context,
            content_type,
            content_encoding,
            accepted_rows,
            rejected_rows,
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
