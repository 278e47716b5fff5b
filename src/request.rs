//! What travels through the layer stack: a decoded client frame with its connection, and the
//! reply that goes back.

use std::sync::Arc;

use crate::protocol::{Envelope, Kind, Reason};
use crate::session::{Close, Connection};

/// One decoded client frame and the connection it came from.
#[derive(Debug, Clone)]
pub struct Request {
    /// The frame. Its code is always a [`Kind`] a client may send.
    pub frame: Envelope,
    /// The connection it arrived on.
    pub conn: Arc<Connection>,
}

impl Request {
    /// A request for `frame` on `conn`.
    pub fn new(frame: Envelope, conn: Arc<Connection>) -> Self {
        Request { frame, conn }
    }

    /// What the frame is.
    pub fn kind(&self) -> Kind {
        self.frame.kind().unwrap_or(Kind::Error)
    }

    /// An ERROR reply to this request.
    pub fn error(&self, reason: Reason, message: impl Into<String>) -> Reply {
        Reply::frame(self.frame.error_reply(reason, message))
    }
}

/// What the stack answers: at most one frame, then optionally a close.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// The frame to send back.
    pub frame: Option<Envelope>,
    /// Close the connection after sending the frame.
    pub close: Option<Close>,
}

impl Reply {
    /// A reply frame.
    pub fn frame(frame: Envelope) -> Self {
        Reply {
            frame: Some(frame),
            close: None,
        }
    }

    /// Nothing to send (the frame was consumed, e.g. already answered out of band).
    pub fn none() -> Self {
        Reply::default()
    }

    /// Adds a close after the frame.
    pub fn then_close(mut self, close: Close) -> Self {
        self.close = Some(close);
        self
    }

    /// The reply's reason word, when it is an ERROR.
    pub fn reason(&self) -> Option<&str> {
        let frame = self.frame.as_ref()?;
        frame.metadata.get("reason").map(String::as_str)
    }
}
