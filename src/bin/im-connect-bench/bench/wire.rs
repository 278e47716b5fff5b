//! The client side of both wire formats, written for speed rather than generality: frames are
//! built once and copied, and received frames are scanned for the two fields a benchmark needs
//! (`code` and `requestId`) instead of being decoded.

use std::ops::Range;

use im_connect::config::Codec;
use im_connect::protocol::pb::IMessageWrap;
use im_connect::protocol::{CodeTable, Kind};
use prost::Message as _;

/// How frames travel: WebSocket messages or length-prefixed TCP frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// WebSocket, one message per frame.
    Ws,
    /// TCP with a 4-byte big-endian length before each payload.
    Tcp,
}

/// The code numbers a benchmark sends and looks for, taken from the server's code table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codes {
    /// REGISTER and its reply.
    pub(crate) register: i32,
    /// REGISTER reply (equal to `register` in the seed table).
    pub(crate) register_reply: i32,
    /// HEART_BEAT.
    pub(crate) heart_beat: i32,
    /// HEART_BEAT reply.
    pub(crate) heart_beat_reply: i32,
    /// REFRESH_TOKEN, which may answer a heartbeat.
    pub(crate) refresh_token: i32,
    /// SINGLE_MESSAGE.
    pub(crate) single: i32,
    /// GROUP_MESSAGE.
    pub(crate) group: i32,
    /// ACK of an upstream message.
    pub(crate) ack: i32,
    /// ERROR.
    pub(crate) error: i32,
}

impl Codes {
    /// The numbers of `table`.
    pub(crate) fn new(table: CodeTable) -> Self {
        Codes {
            register: table.code(Kind::Register),
            register_reply: table.code(Kind::RegisterReply),
            heart_beat: table.code(Kind::HeartBeat),
            heart_beat_reply: table.code(Kind::HeartBeatReply),
            refresh_token: table.code(Kind::RefreshToken),
            single: table.code(Kind::SingleMessage),
            group: table.code(Kind::GroupMessage),
            ack: table.code(Kind::Ack),
            error: table.code(Kind::Error),
        }
    }
}

/// What a client puts in one upstream frame.
#[derive(Debug, Default)]
pub(crate) struct Outgoing<'a> {
    /// Message code.
    pub(crate) code: i32,
    /// Token, on a TCP REGISTER.
    pub(crate) token: Option<&'a str>,
    /// Correlation id.
    pub(crate) request_id: &'a str,
    /// Device type, on REGISTER.
    pub(crate) device_type: Option<&'a str>,
    /// Recipients, on business messages.
    pub(crate) ids: &'a [String],
    /// JSON payload, on business messages.
    pub(crate) data: Option<&'a str>,
}

/// Encodes `out` as one payload in `codec`.
pub(crate) fn payload(codec: Codec, out: &Outgoing<'_>) -> Vec<u8> {
    match codec {
        Codec::Proto => IMessageWrap {
            code: out.code,
            token: out.token.unwrap_or_default().to_string(),
            request_id: out.request_id.to_string(),
            device_type: out.device_type.unwrap_or_default().to_string(),
            ids: out.ids.to_vec(),
            data: out.data.map(|data| prost_types::Any {
                type_url: "type.googleapis.com/json".into(),
                value: data.as_bytes().to_vec(),
            }),
            ..IMessageWrap::default()
        }
        .encode_to_vec(),
        Codec::Json => {
            let mut value = serde_json::json!({"code": out.code, "requestId": out.request_id});
            if let Some(token) = out.token {
                value["token"] = token.into();
            }
            if let Some(device) = out.device_type {
                value["deviceType"] = device.into();
            }
            if !out.ids.is_empty() {
                value["ids"] = out.ids.into();
            }
            if let Some(data) = out.data {
                value["data"] = serde_json::from_str(data).unwrap_or_else(|_| data.into());
            }
            value.to_string().into_bytes()
        }
    }
}

/// Wraps `payload` in the transport's framing, appending to `out`.
///
/// Client WebSocket frames must be masked; the mask key is all zeroes, which the protocol
/// allows and which leaves the payload as it is, so a frame built once can be copied as is.
pub(crate) fn frame_into(transport: Transport, codec: Codec, payload: &[u8], out: &mut Vec<u8>) {
    match transport {
        Transport::Tcp => out.extend_from_slice(&(payload.len() as u32).to_be_bytes()),
        Transport::Ws => {
            let opcode = match codec {
                Codec::Json => 0x1,
                Codec::Proto => 0x2,
            };
            out.push(0x80 | opcode);
            match payload.len() {
                len @ 0..=125 => out.push(0x80 | len as u8),
                len @ 126..=0xffff => {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                }
                len => {
                    out.push(0x80 | 127);
                    out.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            out.extend_from_slice(&[0; 4]);
        }
    }
    out.extend_from_slice(payload);
}

/// `payload` framed for `transport`.
pub(crate) fn frame(transport: Transport, codec: Codec, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame_into(transport, codec, payload, &mut out);
    out
}

/// Length of a stamped request id: `b`, 16 hex digits of sequence, 16 of send time.
const STAMP_LEN: usize = 33;
const STAMP_PLACEHOLDER: &str = "b________________________________";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A complete upstream frame whose request id is rewritten for every copy, so each message
/// carries its own sequence number and send time without being encoded again.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    stamp_at: usize,
}

impl Template {
    /// A framed business message of `code` to `ids`.
    pub(crate) fn new(
        transport: Transport,
        codec: Codec,
        code: i32,
        ids: &[String],
        data: &str,
    ) -> Template {
        let out = Outgoing {
            code,
            request_id: STAMP_PLACEHOLDER,
            ids,
            data: Some(data),
            ..Outgoing::default()
        };
        let bytes = frame(transport, codec, &payload(codec, &out));
        let stamp_at = bytes
            .windows(STAMP_LEN)
            .position(|w| w == STAMP_PLACEHOLDER.as_bytes())
            .expect("the placeholder is in the frame")
            + 1;
        Template { bytes, stamp_at }
    }

    /// Bytes of one framed message.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends a copy stamped with `seq` and `sent_ns` to `out`.
    pub(crate) fn stamp_into(&self, out: &mut bytes::BytesMut, seq: u64, sent_ns: u64) {
        let start = out.len() + self.stamp_at;
        out.extend_from_slice(&self.bytes);
        let digits = &mut out[start..start + 32];
        for (i, value) in [seq, sent_ns].into_iter().enumerate() {
            for j in 0..16 {
                let nibble = (value >> (60 - 4 * j)) & 0xf;
                digits[i * 16 + j] = HEX[nibble as usize];
            }
        }
    }
}

/// Reads the sequence number and send time back out of a stamped request id.
pub(crate) fn parse_stamp(id: &[u8]) -> Option<(u64, u64)> {
    if id.len() != STAMP_LEN || id[0] != b'b' {
        return None;
    }
    let hex = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |acc, &d| {
            let v = (d as char).to_digit(16)?;
            Some(acc << 4 | u64::from(v))
        })
    };
    Some((hex(&id[1..17])?, hex(&id[17..33])?))
}

/// What kind of server frame was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A message carrying an envelope.
    Data,
    /// A WebSocket ping, to be answered.
    Ping,
    /// A WebSocket close: the server is ending the connection.
    Close,
    /// Anything else (pong): ignored.
    Other,
}

/// A server frame found at the start of a buffer.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    /// What it is.
    pub(crate) kind: FrameKind,
    /// Where its payload lies in the buffer.
    pub(crate) payload: Range<usize>,
    /// Bytes the whole frame takes.
    pub(crate) consumed: usize,
}

/// Finds the first complete server frame in `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn parse(transport: Transport, buf: &[u8]) -> Result<Option<Parsed>, &'static str> {
    match transport {
        Transport::Tcp => {
            let Some(len) = buf.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
            if buf.len() < 4 + len {
                return Ok(None);
            }
            Ok(Some(Parsed {
                kind: FrameKind::Data,
                payload: 4..4 + len,
                consumed: 4 + len,
            }))
        }
        Transport::Ws => parse_ws(buf),
    }
}

fn parse_ws(buf: &[u8]) -> Result<Option<Parsed>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err("server frame is masked");
    }
    if buf[0] & 0x80 == 0 || buf[0] & 0x0f == 0 {
        return Err("fragmented server message");
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("eight bytes"));
            (len as usize, 10)
        }
        126 | 127 => return Ok(None),
        len => (len as usize, 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    let kind = match buf[0] & 0x0f {
        0x1 | 0x2 => FrameKind::Data,
        0x8 => FrameKind::Close,
        0x9 => FrameKind::Ping,
        _ => FrameKind::Other,
    };
    Ok(Some(Parsed {
        kind,
        payload: header..header + len,
        consumed: header + len,
    }))
}

/// The two fields of a server envelope a benchmark reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Message code.
    pub(crate) code: i32,
    /// Sequence and send time, when the request id is a stamp of ours.
    pub(crate) stamp: Option<(u64, u64)>,
}

/// Reads `code` and the stamp from one payload; `None` when it is not an envelope.
pub(crate) fn head(codec: Codec, payload: &[u8]) -> Option<Head> {
    match codec {
        Codec::Proto => scan_proto(payload),
        Codec::Json => {
            #[derive(serde::Deserialize)]
            struct JsonHead<'a> {
                code: i32,
                #[serde(rename = "requestId", borrow, default)]
                request_id: Option<std::borrow::Cow<'a, str>>,
            }
            let head: JsonHead<'_> = serde_json::from_slice(payload).ok()?;
            Some(Head {
                code: head.code,
                stamp: head.request_id.and_then(|id| parse_stamp(id.as_bytes())),
            })
        }
    }
}

/// The `message` and `metadata.reason` of an ERROR payload, for diagnostics.
pub(crate) fn describe(codec: Codec, payload: &[u8]) -> String {
    match codec {
        Codec::Proto => match IMessageWrap::decode(payload) {
            Ok(msg) => format!(
                "{} ({})",
                msg.message,
                msg.metadata.get("reason").map(String::as_str).unwrap_or("")
            ),
            Err(error) => format!("undecodable frame: {error}"),
        },
        Codec::Json => String::from_utf8_lossy(payload).into_owned(),
    }
}

fn scan_proto(mut b: &[u8]) -> Option<Head> {
    let mut head = Head {
        code: 0,
        stamp: None,
    };
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let value = varint(&mut b)?;
                if field == 1 {
                    // int32 travels sign-extended to 64 bits.
                    head.code = value as i64 as i32;
                }
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = varint(&mut b)? as usize;
                let value = b.get(..len)?;
                if field == 6 {
                    head.stamp = parse_stamp(value);
                }
                b = &b[len..];
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(head)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_survives_both_codecs() {
        for codec in [Codec::Proto, Codec::Json] {
            let ids = vec!["u1".to_string()];
            let template = Template::new(Transport::Tcp, codec, 3, &ids, r#"{"t":"x"}"#);
            let mut out = bytes::BytesMut::new();
            template.stamp_into(&mut out, 42, 0x0123_4567_89ab_cdef);
            let parsed = parse(Transport::Tcp, &out).unwrap().unwrap();
            let head = head(codec, &out[parsed.payload]).unwrap();
            assert_eq!(head.code, 3);
            assert_eq!(head.stamp, Some((42, 0x0123_4567_89ab_cdef)));
        }
    }
}
