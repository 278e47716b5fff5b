//! JSON and protobuf encodings of the envelope.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{pb, Code, CodeTable, Codec, Envelope, ProtoData, Reason};

const JSON_TYPE_URL: &str = "type.googleapis.com/json";
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// A frame that could not be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The machine-readable reason for the ERROR reply.
    pub reason: Reason,
    /// What went wrong, for people.
    pub message: String,
    /// The request id, when the frame got far enough to have one.
    pub request_id: Option<String>,
}

impl FrameError {
    fn bad(message: impl Into<String>) -> Self {
        FrameError {
            reason: Reason::BadFrame,
            message: message.into(),
            request_id: None,
        }
    }

    /// The ERROR envelope that answers this failure.
    pub fn to_envelope(&self) -> Envelope {
        let mut env = Envelope::error(self.reason, self.message.clone());
        env.request_id = self.request_id.clone();
        // Every reply carries a request id, generated when the frame had none (or could not
        // be read far enough to find it).
        env.ensure_request_id();
        env
    }
}

/// Everything about the wire that is the same for all connections of a server: the code table
/// and how protobuf packs `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// Code numbering.
    pub table: CodeTable,
    /// How protobuf frames carry `data`.
    pub proto_data: ProtoData,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            table: CodeTable::SEED,
            proto_data: ProtoData::Json,
        }
    }
}

impl Wire {
    /// Decodes a client frame. Codes outside the table, and server-to-client kinds, are
    /// [`Reason::UnknownCode`].
    pub fn decode_client(&self, codec: Codec, bytes: &[u8]) -> Result<Envelope, FrameError> {
        let (raw, mut env) = self.decode(codec, bytes)?;
        match self.table.client_kind(raw) {
            Some(kind) => {
                env.code = Code::Kind(kind);
                Ok(env)
            }
            None => Err(FrameError {
                reason: Reason::UnknownCode,
                message: format!("unknown code {raw}"),
                request_id: env.request_id,
            }),
        }
    }

    /// Decodes a broker message (always JSON): codes outside the table are kept as they are.
    pub fn decode_broker(&self, bytes: &[u8]) -> Result<Envelope, FrameError> {
        let (raw, mut env) = self.decode(Codec::Json, bytes)?;
        env.code = self.table.broker_code(raw);
        Ok(env)
    }

    /// Encodes an envelope for the broker (always JSON), `ids` included.
    pub fn encode_broker(&self, env: &Envelope) -> Bytes {
        self.encode_json(env, true)
    }

    /// Encodes an envelope for a client: `ids` and `token` are never sent.
    pub fn encode(&self, codec: Codec, env: &Envelope) -> Bytes {
        match codec {
            Codec::Json => self.encode_json(env, false),
            Codec::Proto => self.encode_proto(env),
        }
    }

    fn decode(&self, codec: Codec, bytes: &[u8]) -> Result<(i32, Envelope), FrameError> {
        if bytes.is_empty() {
            return Err(FrameError::bad("empty frame"));
        }
        match codec {
            Codec::Json => decode_json(bytes),
            Codec::Proto => decode_proto(bytes),
        }
    }

    fn encode_json(&self, env: &Envelope, with_ids: bool) -> Bytes {
        let mut obj = Map::new();
        obj.insert("code".into(), self.table.encode(env.code).into());
        if with_ids {
            put_str(&mut obj, "token", &env.token);
        }
        if let Some(data) = &env.data {
            obj.insert("data".into(), data.clone());
        }
        if !env.metadata.is_empty() {
            let meta = env
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            obj.insert("metadata".into(), Value::Object(meta));
        }
        put_str(&mut obj, "message", &env.message);
        put_str(&mut obj, "requestId", &env.request_id);
        if let Some(ts) = env.timestamp {
            obj.insert("timestamp".into(), ts.into());
        }
        put_str(&mut obj, "clientIp", &env.client_ip);
        put_str(&mut obj, "userAgent", &env.user_agent);
        put_str(&mut obj, "deviceName", &env.device_name);
        put_str(&mut obj, "deviceType", &env.device_type);
        if with_ids && !env.ids.is_empty() {
            obj.insert("ids".into(), env.ids.clone().into());
        }
        // Serialising a Value into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default())
    }

    fn encode_proto(&self, env: &Envelope) -> Bytes {
        let data = env.data.as_ref().map(|data| match self.proto_data {
            ProtoData::Json => prost_types::Any {
                type_url: JSON_TYPE_URL.into(),
                value: serde_json::to_vec(data).unwrap_or_default(),
            },
            ProtoData::Struct => {
                let mut fields = BTreeMap::new();
                fields.insert("value".to_string(), json_to_proto(data));
                prost_types::Any {
                    type_url: STRUCT_TYPE_URL.into(),
                    value: prost_types::Struct { fields }.encode_to_vec(),
                }
            }
        });
        let msg = pb::IMessageWrap {
            code: self.table.encode(env.code),
            token: String::new(),
            data,
            metadata: env.metadata.clone(),
            message: env.message.clone().unwrap_or_default(),
            request_id: env.request_id.clone().unwrap_or_default(),
            timestamp: env.timestamp.unwrap_or_default(),
            client_ip: env.client_ip.clone().unwrap_or_default(),
            user_agent: env.user_agent.clone().unwrap_or_default(),
            device_name: env.device_name.clone().unwrap_or_default(),
            device_type: env.device_type.clone().unwrap_or_default(),
            ids: Vec::new(),
        };
        Bytes::from(msg.encode_to_vec())
    }
}

fn put_str(obj: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        obj.insert(key.into(), Value::String(v.clone()));
    }
}

/// The JSON shape of a frame. Unknown properties are ignored; `code`, `metadata` values and
/// `ids` are read leniently because clients in the field send numbers where strings belong.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonFrame {
    code: Option<Value>,
    token: Option<String>,
    data: Option<Value>,
    metadata: Option<BTreeMap<String, Value>>,
    message: Option<String>,
    request_id: Option<Value>,
    timestamp: Option<Value>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    device_name: Option<String>,
    device_type: Option<String>,
    ids: Option<Vec<Value>>,
}

fn scalar_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn decode_json(bytes: &[u8]) -> Result<(i32, Envelope), FrameError> {
    let frame: JsonFrame = serde_json::from_slice(bytes).map_err(|e| FrameError {
        // Valid JSON with a field of the wrong type still names its request; only this
        // error path pays for the second parse.
        request_id: serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|mut v| v.get_mut("requestId").map(Value::take))
            .and_then(scalar_string),
        ..FrameError::bad(format!("invalid JSON frame: {e}"))
    })?;
    let request_id = frame.request_id.and_then(scalar_string);
    let code = match frame.code {
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Some(Value::String(s)) => s.trim().parse::<i32>().ok(),
        _ => None,
    };
    let Some(code) = code else {
        return Err(FrameError {
            request_id,
            ..FrameError::bad("`code` must be an integer or a numeric string")
        });
    };
    let metadata = frame
        .metadata
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, scalar_string(v)?)))
        .collect();
    let timestamp = match frame.timestamp {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let env = Envelope {
        code: Code::Raw(code),
        token: frame.token.filter(|t| !t.is_empty()),
        data: frame.data.filter(|d| !d.is_null()),
        metadata,
        message: frame.message,
        request_id,
        timestamp,
        client_ip: frame.client_ip,
        user_agent: frame.user_agent,
        device_name: frame.device_name,
        device_type: frame.device_type,
        ids: frame
            .ids
            .unwrap_or_default()
            .into_iter()
            .filter_map(scalar_string)
            .collect(),
    };
    Ok((code, env))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn decode_proto(bytes: &[u8]) -> Result<(i32, Envelope), FrameError> {
    let msg = pb::IMessageWrap::decode(bytes)
        .map_err(|e| FrameError::bad(format!("invalid protobuf frame: {e}")))?;
    let env = Envelope {
        code: Code::Raw(msg.code),
        token: non_empty(msg.token),
        data: msg.data.and_then(any_to_json),
        metadata: msg.metadata,
        message: non_empty(msg.message),
        request_id: non_empty(msg.request_id),
        timestamp: (msg.timestamp != 0).then_some(msg.timestamp),
        client_ip: non_empty(msg.client_ip),
        user_agent: non_empty(msg.user_agent),
        device_name: non_empty(msg.device_name),
        device_type: non_empty(msg.device_type),
        ids: msg.ids,
    };
    Ok((msg.code, env))
}

/// Unpacks `data`: well-known JSON-like types first, then UTF-8 JSON text (what the desktop
/// client sends), else the raw bytes as base64 so nothing is lost on the way to the backend.
fn any_to_json(any: prost_types::Any) -> Option<Value> {
    if any.type_url.is_empty() && any.value.is_empty() {
        return None;
    }
    let url = any.type_url.as_str();
    let well_known = if url.ends_with("google.protobuf.Struct") {
        prost_types::Struct::decode(any.value.as_slice())
            .ok()
            .map(|s| struct_to_json(s.fields))
    } else if url.ends_with("google.protobuf.ListValue") {
        prost_types::ListValue::decode(any.value.as_slice())
            .ok()
            .map(|l| Value::Array(l.values.into_iter().map(proto_to_json).collect()))
    } else if url.ends_with("google.protobuf.Value") {
        prost_types::Value::decode(any.value.as_slice())
            .ok()
            .map(proto_to_json)
    } else {
        None
    };
    well_known
        .or_else(|| serde_json::from_slice(&any.value).ok())
        .or_else(|| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&any.value);
            Some(Value::String(b64))
        })
}

fn struct_to_json(fields: BTreeMap<String, prost_types::Value>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k, proto_to_json(v)))
            .collect(),
    )
}

fn proto_to_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind as K;
    match v.kind {
        None | Some(K::NullValue(_)) => Value::Null,
        Some(K::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(K::StringValue(s)) => Value::String(s),
        Some(K::BoolValue(b)) => Value::Bool(b),
        Some(K::StructValue(s)) => struct_to_json(s.fields),
        Some(K::ListValue(l)) => Value::Array(l.values.into_iter().map(proto_to_json).collect()),
    }
}

fn json_to_proto(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind as K;
    let kind = match v {
        Value::Null => K::NullValue(0),
        Value::Bool(b) => K::BoolValue(*b),
        Value::Number(n) => K::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => K::StringValue(s.clone()),
        Value::Array(a) => K::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_proto).collect(),
        }),
        Value::Object(o) => K::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// An envelope bound for many connections, encoded at most once per codec and shared.
#[derive(Debug)]
pub struct Encoded<'a> {
    wire: &'a Wire,
    env: &'a Envelope,
    json: OnceLock<Bytes>,
    proto: OnceLock<Bytes>,
}

impl<'a> Encoded<'a> {
    /// Wraps an envelope; nothing is encoded until a codec asks.
    pub fn new(wire: &'a Wire, env: &'a Envelope) -> Self {
        Encoded {
            wire,
            env,
            json: OnceLock::new(),
            proto: OnceLock::new(),
        }
    }

    /// The bytes for `codec`, shared by every connection using it.
    pub fn get(&self, codec: Codec) -> Bytes {
        let cell = match codec {
            Codec::Json => &self.json,
            Codec::Proto => &self.proto,
        };
        cell.get_or_init(|| self.wire.encode(codec, self.env))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Kind;
    use serde_json::json;

    fn wire() -> Wire {
        Wire::default()
    }

    #[test]
    fn json_round_trip_omits_absent_fields_and_ids() {
        let mut env = Envelope::new(Kind::SingleMessage);
        env.data = Some(json!({"text": "hi", "n": 1.5}));
        env.request_id = Some("r1".into());
        env.ids = vec!["bob".into()];
        let bytes = wire().encode(Codec::Json, &env);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"code": 3, "data": {"text": "hi", "n": 1.5}, "requestId": "r1"})
        );
    }

    #[test]
    fn json_code_may_be_a_numeric_string() {
        let env = wire()
            .decode_client(Codec::Json, br#"{"code":"3","ids":["a",7],"extra":1}"#)
            .unwrap();
        assert_eq!(env.kind(), Some(Kind::SingleMessage));
        assert_eq!(env.ids, vec!["a".to_string(), "7".to_string()]);
    }

    #[test]
    fn json_without_code_is_bad_frame() {
        let err = wire()
            .decode_client(Codec::Json, br#"{"requestId":"x"}"#)
            .unwrap_err();
        assert_eq!(err.reason, Reason::BadFrame);
        assert_eq!(err.request_id.as_deref(), Some("x"));
        let err = wire().decode_client(Codec::Json, b"{nope").unwrap_err();
        assert_eq!(err.reason, Reason::BadFrame);
    }

    #[test]
    fn an_error_for_a_frame_without_request_id_gets_one() {
        let err = wire().decode_client(Codec::Json, b"not json").unwrap_err();
        assert_eq!(err.request_id, None);
        let reply = err.to_envelope();
        assert!(reply.request_id.is_some_and(|id| !id.is_empty()));
        assert_eq!(reply.metadata["reason"], "bad_frame");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_bad_frame_with_the_request_id() {
        let err = wire()
            .decode_client(Codec::Json, br#"{"code":3,"requestId":"r9","ids":"bob"}"#)
            .unwrap_err();
        assert_eq!(err.reason, Reason::BadFrame);
        assert_eq!(err.request_id.as_deref(), Some("r9"));
    }

    #[test]
    fn server_kinds_from_clients_are_unknown_codes() {
        let err = wire()
            .decode_client(Codec::Json, br#"{"code":0}"#)
            .unwrap_err();
        assert_eq!(err.reason, Reason::UnknownCode);
        let err = wire()
            .decode_client(Codec::Json, br#"{"code":77}"#)
            .unwrap_err();
        assert_eq!(err.reason, Reason::UnknownCode);
    }

    #[test]
    fn proto_round_trip_packs_data_as_json_text() {
        let mut env = Envelope::new(Kind::GroupMessage);
        env.data = Some(json!({"text": "hello"}));
        env.metadata.insert("userId".into(), "alice".into());
        let bytes = wire().encode(Codec::Proto, &env);
        let msg = pb::IMessageWrap::decode(bytes.as_ref()).unwrap();
        assert_eq!(msg.data.as_ref().unwrap().type_url, JSON_TYPE_URL);
        let back = wire().decode_client(Codec::Proto, &bytes).unwrap();
        assert_eq!(back.data, env.data);
        assert_eq!(back.metadata, env.metadata);
        assert_eq!(back.kind(), Some(Kind::GroupMessage));
    }

    #[test]
    fn proto_struct_data_is_unpacked_and_java_packing_is_available() {
        let w = Wire {
            proto_data: ProtoData::Struct,
            ..wire()
        };
        let mut env = Envelope::new(Kind::SingleMessage);
        env.data = Some(json!({"text": "x", "list": [true, null]}));
        let bytes = w.encode(Codec::Proto, &env);
        let back = w.decode_client(Codec::Proto, &bytes).unwrap();
        assert_eq!(
            back.data,
            Some(json!({"value": {"text": "x", "list": [true, null]}}))
        );
    }

    #[test]
    fn opaque_any_becomes_base64() {
        let msg = pb::IMessageWrap {
            code: 3,
            data: Some(prost_types::Any {
                type_url: "type.googleapis.com/custom.Thing".into(),
                value: vec![0xff, 0x00, 0x01],
            }),
            ..Default::default()
        };
        let env = wire()
            .decode_client(Codec::Proto, &msg.encode_to_vec())
            .unwrap();
        assert_eq!(env.data, Some(json!("/wAB")));
    }

    #[test]
    fn garbage_protobuf_is_bad_frame() {
        let err = wire()
            .decode_client(Codec::Proto, &[0xff, 0xff, 0xff])
            .unwrap_err();
        assert_eq!(err.reason, Reason::BadFrame);
    }

    #[test]
    fn broker_codes_outside_the_table_are_forwarded() {
        let env = wire()
            .decode_broker(br#"{"code":4242,"ids":["u"]}"#)
            .unwrap();
        assert_eq!(env.code, Code::Raw(4242));
        let out: Value = serde_json::from_slice(&wire().encode(Codec::Json, &env)).unwrap();
        assert_eq!(out, json!({"code": 4242}));
    }

    #[test]
    fn encoded_once_per_codec_is_shared() {
        let env = Envelope::new(Kind::SingleMessage);
        let w = wire();
        let enc = Encoded::new(&w, &env);
        let a = enc.get(Codec::Json);
        let b = enc.get(Codec::Json);
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
}
