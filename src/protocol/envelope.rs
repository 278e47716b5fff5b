use std::collections::BTreeMap;

use super::{Code, Kind, Reason};

/// The one message type of the wire, decoded.
///
/// Optional strings are `None` when absent (protobuf's empty string and JSON's missing or null
/// property alike), so encoders never emit empty fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// What the frame is.
    pub code: Code,
    /// JWT, read on REGISTER; never sent by the server.
    pub token: Option<String>,
    /// Payload, as JSON.
    pub data: Option<serde_json::Value>,
    /// Routing and server facts.
    pub metadata: BTreeMap<String, String>,
    /// Human-readable text.
    pub message: Option<String>,
    /// Correlation id, echoed in replies.
    pub request_id: Option<String>,
    /// Epoch milliseconds.
    pub timestamp: Option<i64>,
    /// Client IP as the client reports it.
    pub client_ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Client device name.
    pub device_name: Option<String>,
    /// Device type string.
    pub device_type: Option<String>,
    /// Target user ids; stripped before anything reaches a client.
    pub ids: Vec<String>,
}

impl Envelope {
    /// An empty envelope of `kind`.
    pub fn new(kind: Kind) -> Self {
        Envelope {
            code: Code::Kind(kind),
            ..Envelope::default()
        }
    }

    /// The kind, when the code is in the table.
    pub fn kind(&self) -> Option<Kind> {
        self.code.kind()
    }

    /// A reply of `kind` to this request: same `requestId`, stamped with the current time.
    pub fn reply(&self, kind: Kind) -> Envelope {
        Envelope {
            code: Code::Kind(kind),
            request_id: self.request_id.clone(),
            timestamp: Some(now_millis()),
            ..Envelope::default()
        }
    }

    /// An ERROR reply to this request.
    pub fn error_reply(&self, reason: Reason, message: impl Into<String>) -> Envelope {
        let mut reply = self.reply(Kind::Error);
        reply.message = Some(message.into());
        reply
            .metadata
            .insert("reason".into(), reason.as_str().into());
        reply
    }

    /// An ERROR frame that answers no particular request (a frame that could not be decoded).
    pub fn error(reason: Reason, message: impl Into<String>) -> Envelope {
        Envelope::default().error_reply(reason, message)
    }

    /// Gives the request a `requestId` when it has none, so its reply can be correlated.
    pub fn ensure_request_id(&mut self) -> &str {
        self.request_id.get_or_insert_with(new_request_id)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A random 128-bit id in hex, unique enough to correlate replies and de-duplicate deliveries.
pub(crate) fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
