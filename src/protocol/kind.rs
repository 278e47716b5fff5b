use super::CodeTableName;

/// What a frame is, independent of the numbering on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Login: binds the connection to a user and device group.
    Register,
    /// The server's answer to [`Kind::Register`].
    RegisterReply,
    /// Keep-alive from the client.
    HeartBeat,
    /// The server's answer to [`Kind::HeartBeat`].
    HeartBeatReply,
    /// One-to-one chat message.
    SingleMessage,
    /// Group chat message.
    GroupMessage,
    /// Call signalling.
    VideoMessage,
    /// A kick (server to client) or a logout (client to server).
    ForceLogout,
    /// Group membership and settings changes.
    GroupOperation,
    /// Recall or edit of an earlier message.
    MessageOperation,
    /// The upstream message was accepted.
    Ack,
    /// The request failed; `metadata.reason` says why.
    Error,
    /// The connection's token expires soon.
    RefreshToken,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 13] = [
        Kind::Register,
        Kind::RegisterReply,
        Kind::HeartBeat,
        Kind::HeartBeatReply,
        Kind::SingleMessage,
        Kind::GroupMessage,
        Kind::VideoMessage,
        Kind::ForceLogout,
        Kind::GroupOperation,
        Kind::MessageOperation,
        Kind::Ack,
        Kind::Error,
        Kind::RefreshToken,
    ];

    /// Business messages: what a logged-in client sends for the backend.
    pub fn is_business(self) -> bool {
        matches!(
            self,
            Kind::SingleMessage
                | Kind::GroupMessage
                | Kind::VideoMessage
                | Kind::GroupOperation
                | Kind::MessageOperation
        )
    }

    /// Kinds a client may send; the rest are server-to-client only.
    pub fn from_client(self) -> bool {
        self.is_business() || matches!(self, Kind::Register | Kind::HeartBeat | Kind::ForceLogout)
    }

    /// Lower snake case name, used in upstream routing keys (`im.upstream.single_message`).
    pub fn snake_name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::RegisterReply => "register_reply",
            Kind::HeartBeat => "heart_beat",
            Kind::HeartBeatReply => "heart_beat_reply",
            Kind::SingleMessage => "single_message",
            Kind::GroupMessage => "group_message",
            Kind::VideoMessage => "video_message",
            Kind::ForceLogout => "force_logout",
            Kind::GroupOperation => "group_operation",
            Kind::MessageOperation => "message_operation",
            Kind::Ack => "ack",
            Kind::Error => "error",
            Kind::RefreshToken => "refresh_token",
        }
    }
}

/// A frame's code: a known kind, or a number outside the table that the broker sent and that is
/// forwarded to clients unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// A kind of the code table.
    Kind(Kind),
    /// A number the table does not know.
    Raw(i32),
}

impl Default for Code {
    fn default() -> Self {
        Code::Kind(Kind::Error)
    }
}

impl From<Kind> for Code {
    fn from(kind: Kind) -> Self {
        Code::Kind(kind)
    }
}

impl Code {
    /// The kind, when the code is in the table.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Code::Kind(kind) => Some(kind),
            Code::Raw(_) => None,
        }
    }
}

/// Maps kinds to numbers and back for one code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeTable {
    name: CodeTableName,
}

impl CodeTable {
    /// The table of the design document.
    pub const SEED: CodeTable = CodeTable {
        name: CodeTableName::Seed,
    };
    /// The numbering of the deployed Lucky Cloud clients and backends.
    pub const LUCKY: CodeTable = CodeTable {
        name: CodeTableName::Lucky,
    };

    /// The table called `name` in configuration.
    pub fn new(name: CodeTableName) -> Self {
        CodeTable { name }
    }

    /// The number this table gives `kind`.
    pub fn code(self, kind: Kind) -> i32 {
        let (seed, lucky) = match kind {
            Kind::Register | Kind::RegisterReply if self.name == CodeTableName::Seed => (1, 1),
            Kind::Register => (1, 200),
            Kind::RegisterReply => (1, 209),
            Kind::HeartBeat => (2, 206),
            Kind::HeartBeatReply => (2, 207),
            Kind::SingleMessage => (3, 1000),
            Kind::GroupMessage => (4, 1001),
            Kind::VideoMessage => (5, 1002),
            Kind::ForceLogout => (6, 104),
            Kind::GroupOperation => (7, 1005),
            Kind::MessageOperation => (8, 1006),
            Kind::Ack => (0, 300),
            Kind::Error => (-1, -1),
            Kind::RefreshToken => (10, 103),
        };
        match self.name {
            CodeTableName::Seed => seed,
            CodeTableName::Lucky => lucky,
        }
    }

    /// Reads a code sent by a client. Server-to-client kinds are not valid here, which matters
    /// where a request and its reply share a number (`seed` REGISTER is 1 both ways).
    pub fn client_kind(self, code: i32) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|kind| kind.from_client())
            .find(|&kind| self.code(kind) == code)
    }

    /// Reads a code sent by the broker: a kind both directions share, else the raw number.
    pub fn broker_code(self, code: i32) -> Code {
        match self.client_kind(code) {
            Some(kind) if kind.is_business() || kind == Kind::ForceLogout => Code::Kind(kind),
            _ => Code::Raw(code),
        }
    }

    /// The number to put on the wire for `code`.
    pub fn encode(self, code: Code) -> i32 {
        match code {
            Code::Kind(kind) => self.code(kind),
            Code::Raw(raw) => raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_lucky_numbers_match_the_contract() {
        let seed = CodeTable::SEED;
        let lucky = CodeTable::LUCKY;
        assert_eq!(seed.code(Kind::Register), 1);
        assert_eq!(seed.code(Kind::RegisterReply), 1);
        assert_eq!(lucky.code(Kind::Register), 200);
        assert_eq!(lucky.code(Kind::RegisterReply), 209);
        assert_eq!(lucky.code(Kind::HeartBeatReply), 207);
        assert_eq!(lucky.code(Kind::ForceLogout), 104);
        assert_eq!(lucky.code(Kind::Ack), 300);
        assert_eq!(seed.code(Kind::RefreshToken), 10);
        assert_eq!(lucky.code(Kind::RefreshToken), 103);
    }

    #[test]
    fn client_codes_exclude_server_kinds() {
        assert_eq!(CodeTable::SEED.client_kind(1), Some(Kind::Register));
        assert_eq!(CodeTable::SEED.client_kind(0), None);
        assert_eq!(CodeTable::SEED.client_kind(-1), None);
        assert_eq!(CodeTable::LUCKY.client_kind(209), None);
        assert_eq!(
            CodeTable::LUCKY.client_kind(1000),
            Some(Kind::SingleMessage)
        );
        assert_eq!(CodeTable::LUCKY.client_kind(3), None);
    }

    #[test]
    fn broker_codes_outside_the_table_stay_raw() {
        assert_eq!(
            CodeTable::SEED.broker_code(3),
            Code::Kind(Kind::SingleMessage)
        );
        assert_eq!(CodeTable::SEED.broker_code(4242), Code::Raw(4242));
        assert_eq!(CodeTable::SEED.encode(Code::Raw(4242)), 4242);
        assert_eq!(
            CodeTable::LUCKY.broker_code(104),
            Code::Kind(Kind::ForceLogout)
        );
    }
}
