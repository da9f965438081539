//! Magpie's wire contract, version 1 (documented in `docs/protocol.md`).
//!
//! Every JSON shape that crosses the network is defined here and only here: the server
//! serializes these types and the SDK deserializes the same ones, so the two cannot drift.
//! Ids travel as strings, `seq`/`cursor`/`ts_ms` as integers.

pub mod close;
pub mod error;
pub mod http;
pub mod page;
pub mod social;
pub mod ws;

mod convert;

pub use convert::{
    event_to_wire, friend_request_to_wire, message_to_wire, role_name, system_to_wire,
};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/v1/ws";

/// Ids on the wire are decimal strings; this module (de)serializes `u64`-backed ids as such.
pub mod id_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.parse().map_err(|_| D::Error::custom("invalid id"))
    }
}

/// Like [`id_string`], for optional ids (absent or `null` is `None`).
pub mod id_string_opt {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        let raw = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        raw.map(|r| r.parse().map_err(|_| D::Error::custom("invalid id")))
            .transpose()
    }
}
