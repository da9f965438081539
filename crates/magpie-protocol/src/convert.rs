//! Conversions from domain records to wire shapes.

use magpie_core::{Event, EventPayload, FriendRequest, Message, Role, SystemEvent, UserId};

use crate::social::WireFriendRequest;
use crate::ws::{EventBody, WireEvent, WireMessage, WireSystem};

/// The wire name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn ids(users: &[UserId]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// The wire form of a system message's event.
pub fn system_to_wire(s: &SystemEvent) -> WireSystem {
    match s {
        SystemEvent::GroupCreated {
            actor,
            name,
            members,
        } => WireSystem::GroupCreated {
            actor_id: actor.to_string(),
            name: name.clone(),
            user_ids: ids(members),
        },
        SystemEvent::MembersAdded { actor, users } => WireSystem::MembersAdded {
            actor_id: actor.to_string(),
            user_ids: ids(users),
        },
        SystemEvent::MemberRemoved { actor, user } => WireSystem::MemberRemoved {
            actor_id: actor.to_string(),
            user_id: user.to_string(),
        },
        SystemEvent::MemberLeft { user } => WireSystem::MemberLeft {
            user_id: user.to_string(),
        },
        SystemEvent::RoleChanged { actor, user, role } => WireSystem::RoleChanged {
            actor_id: actor.to_string(),
            user_id: user.to_string(),
            role: role_name(*role).into(),
        },
        SystemEvent::Renamed { actor, name } => WireSystem::Renamed {
            actor_id: actor.to_string(),
            name: name.clone(),
        },
        SystemEvent::OwnerChanged { user } => WireSystem::OwnerChanged {
            user_id: user.to_string(),
        },
    }
}

/// The wire form of a stored message.
pub fn message_to_wire(m: &Message) -> WireMessage {
    WireMessage {
        conversation_id: m.conversation_id,
        seq: m.seq.0,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id.as_str().to_owned(),
        text: m.text.clone(),
        ts_ms: m.ts_ms,
        kind: if m.system.is_some() { "system" } else { "text" }.into(),
        system: m.system.as_ref().map(system_to_wire),
    }
}

/// The wire form of a friend request.
pub fn friend_request_to_wire(r: &FriendRequest) -> WireFriendRequest {
    WireFriendRequest {
        request_id: r.id,
        from_id: r.from,
        to_id: r.to,
        message: r.message.clone(),
        ts_ms: r.ts_ms,
    }
}

/// The wire form of an inbox event.
pub fn event_to_wire(e: &Event) -> WireEvent {
    let body = match &e.payload {
        EventPayload::Message(m) => EventBody::Message {
            message: message_to_wire(m),
        },
        EventPayload::FriendRequest(r) => EventBody::FriendRequest {
            request: friend_request_to_wire(r),
        },
        EventPayload::FriendAdded {
            user_id,
            conversation_id,
        } => EventBody::FriendAdded {
            user_id: *user_id,
            conversation_id: *conversation_id,
        },
        EventPayload::GroupJoined { conversation_id } => EventBody::GroupJoined {
            conversation_id: *conversation_id,
        },
        EventPayload::GroupLeft { conversation_id } => EventBody::GroupLeft {
            conversation_id: *conversation_id,
        },
        EventPayload::Read {
            conversation_id,
            read_seq,
        } => EventBody::Read {
            conversation_id: *conversation_id,
            read_seq: read_seq.0,
        },
        EventPayload::Receipt {
            conversation_id,
            user_id,
            read_seq,
        } => EventBody::Receipt {
            conversation_id: *conversation_id,
            user_id: *user_id,
            read_seq: read_seq.0,
        },
    };
    WireEvent {
        cursor: e.cursor.0,
        body,
    }
}
