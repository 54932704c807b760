//! Ids shaped like Teams' own, derived deterministically from what they name.
//!
//! A user's `29:` id and their personal chat's `a:` id are pairwise (specific to the bot, as
//! Teams' are) and stable, so a test can compute them before the user acts, and a reinstall
//! lands in the same chat. They are also *sealed*: the tenant and the user's object id are
//! inside, masked with a key derived from the bot's app id and followed by a checksum, so the
//! emulator can tell whom an id names without keeping an index. That is what lets a million
//! generated users exist without a million entries (see `population`).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// Characters after `29:1` in a user id; Teams' are about this long.
const USER_ID_LEN: usize = 85;

/// Characters after `a:1` in a personal conversation id.
const PERSONAL_ID_LEN: usize = 130;

/// Checksum characters every sealed id ends with at least, so that a mistyped or made-up id
/// does not open.
const MIN_CHECKSUM_LEN: usize = 8;

/// A field stored as the 16 bytes of a canonical (lower-case, hyphenated) UUID.
const UUID_FIELD: u8 = 1;
/// A field stored as its UTF-8 bytes with a two-byte length.
const TEXT_FIELD: u8 = 2;

/// A base64url digest of `parts`, `len` characters long, for ids that look like Teams' own.
fn digest_id(parts: &[&str], len: usize) -> String {
    let mut out = String::new();
    let mut round = 0u32;
    while out.len() < len {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part.to_ascii_lowercase().as_bytes());
            hasher.update([0u8]);
        }
        hasher.update(round.to_be_bytes());
        out.push_str(&URL_SAFE_NO_PAD.encode(hasher.finalize()));
        round += 1;
    }
    out.truncate(len);
    out
}

/// The mask for sealed ids of one kind (`purpose`) of one bot.
fn keystream(app_id: &str, purpose: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u32;
    while out.len() < len {
        let mut hasher = Sha256::new();
        hasher.update(app_id.to_ascii_lowercase().as_bytes());
        hasher.update([0u8]);
        hasher.update(purpose.as_bytes());
        hasher.update([0u8]);
        hasher.update(block.to_be_bytes());
        out.extend_from_slice(&hasher.finalize());
        block += 1;
    }
    out.truncate(len);
    out
}

/// `[body length: u16][fields…]`, zero-padded to a multiple of 3 bytes so that its base64
/// is a clean prefix of the id (no partial group to re-encode).
fn pack(fields: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for field in fields {
        let lower = field.to_ascii_lowercase();
        match uuid::Uuid::try_parse(&lower) {
            Ok(uuid) if uuid.hyphenated().to_string() == lower => {
                body.push(UUID_FIELD);
                body.extend_from_slice(uuid.as_bytes());
            }
            _ => {
                // An over-long field is cut; the id then fails its checksum when opened,
                // which only means such an id cannot be opened — never a wrong answer.
                let bytes = &lower.as_bytes()[..lower.len().min(usize::from(u16::MAX))];
                body.push(TEXT_FIELD);
                let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(bytes);
            }
        }
    }
    let body_len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut blob = body_len.to_be_bytes().to_vec();
    blob.extend_from_slice(&body);
    while blob.len() % 3 != 0 {
        blob.push(0);
    }
    blob
}

/// The fields `pack` stored, or `None` for bytes it did not write.
fn unpack(body: &[u8]) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&tag, tail)) = rest.split_first() {
        match tag {
            UUID_FIELD => {
                let bytes: [u8; 16] = tail.get(..16)?.try_into().ok()?;
                fields.push(uuid::Uuid::from_bytes(bytes).hyphenated().to_string());
                rest = &tail[16..];
            }
            TEXT_FIELD => {
                let len = usize::from(u16::from_be_bytes(tail.get(..2)?.try_into().ok()?));
                let text = tail.get(2..2 + len)?;
                fields.push(String::from_utf8(text.to_vec()).ok()?);
                rest = &tail[2 + len..];
            }
            _ => return None,
        }
    }
    Some(fields)
}

fn xor(bytes: &mut [u8], mask: &[u8]) {
    for (byte, key) in bytes.iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// `fields`, masked and base64url-encoded, then a checksum up to `min_len` characters.
fn seal(app_id: &str, purpose: &str, fields: &[&str], min_len: usize) -> String {
    let mut blob = pack(fields);
    let mask = keystream(app_id, purpose, blob.len());
    xor(&mut blob, &mask);
    let mut out = URL_SAFE_NO_PAD.encode(&blob);
    let checksum_len = min_len.saturating_sub(out.len()).max(MIN_CHECKSUM_LEN);
    let mut parts = vec![purpose, app_id];
    parts.extend_from_slice(fields);
    out.push_str(&digest_id(&parts, checksum_len));
    out
}

/// The fields sealed in `sealed`, if it is an id `seal` made with these arguments.
fn open(app_id: &str, purpose: &str, sealed: &str, min_len: usize) -> Option<Vec<String>> {
    // The first 4 characters hold the first 3 bytes, the body length among them.
    let mut head = URL_SAFE_NO_PAD.decode(sealed.get(..4)?).ok()?;
    xor(&mut head, &keystream(app_id, purpose, 3));
    let body_len = usize::from(u16::from_be_bytes([head[0], head[1]]));
    let blob_len = (2 + body_len).div_ceil(3) * 3;
    let mut blob = URL_SAFE_NO_PAD
        .decode(sealed.get(..blob_len / 3 * 4)?)
        .ok()?;
    let mask = keystream(app_id, purpose, blob.len());
    xor(&mut blob, &mask);
    let fields = unpack(&blob[2..2 + body_len])?;
    let borrowed: Vec<&str> = fields.iter().map(String::as_str).collect();
    (seal(app_id, purpose, &borrowed, min_len) == sealed).then_some(fields)
}

/// Opens a sealed id holding exactly (tenant, object id).
fn open_pair(app_id: &str, purpose: &str, sealed: &str, min_len: usize) -> Option<UserKey> {
    let fields = open(app_id, purpose, sealed, min_len)?;
    let [tenant_id, aad_object_id]: [String; 2] = fields.try_into().ok()?;
    Some(UserKey {
        tenant_id,
        aad_object_id,
    })
}

/// Whom a sealed id names: tenant and Entra object id, both lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserKey {
    pub(crate) tenant_id: String,
    pub(crate) aad_object_id: String,
}

impl UserKey {
    pub(crate) fn new(tenant_id: &str, aad_object_id: &str) -> Self {
        UserKey {
            tenant_id: tenant_id.to_ascii_lowercase(),
            aad_object_id: aad_object_id.to_ascii_lowercase(),
        }
    }
}

/// The user's `29:` id, which (like Teams' pairwise ids) is specific to the bot.
pub(crate) fn user_id(app_id: &str, tenant_id: &str, aad_object_id: &str) -> String {
    format!(
        "29:1{}",
        seal(app_id, "user", &[tenant_id, aad_object_id], USER_ID_LEN)
    )
}

/// Whom a `29:` id of this bot names.
pub(crate) fn open_user_id(app_id: &str, id: &str) -> Option<UserKey> {
    open_pair(app_id, "user", id.strip_prefix("29:1")?, USER_ID_LEN)
}

/// The id of the user's personal chat with the bot.
pub(crate) fn personal_conversation_id(
    app_id: &str,
    tenant_id: &str,
    aad_object_id: &str,
) -> String {
    format!(
        "a:1{}",
        seal(
            app_id,
            "personal",
            &[tenant_id, aad_object_id],
            PERSONAL_ID_LEN
        )
    )
}

/// Whose personal chat with this bot an `a:` id is.
pub(crate) fn open_personal_conversation_id(app_id: &str, id: &str) -> Option<UserKey> {
    open_pair(app_id, "personal", id.strip_prefix("a:1")?, PERSONAL_ID_LEN)
}

/// Characters of the sealed part of a Graph chat id: as long as Graph's pair of object ids.
const GRAPH_CHAT_LEN: usize = 73;

/// The personal chat's id as Graph's `…/installedApps/{id}/chat` gives it,
/// `19:…@unq.gbl.spaces`. Teams knows a bot's 1:1 chat by this id as well as by its `a:` id,
/// and the Bot Connector takes either; this one is sealed like the `a:` id so that it tells
/// whose chat it is without an index.
pub(crate) fn graph_chat_id(app_id: &str, tenant_id: &str, aad_object_id: &str) -> String {
    format!(
        "19:{}@unq.gbl.spaces",
        seal(app_id, "chat", &[tenant_id, aad_object_id], GRAPH_CHAT_LEN)
    )
}

/// Whose personal chat with this bot a Graph chat id is.
pub(crate) fn open_graph_chat_id(app_id: &str, id: &str) -> Option<UserKey> {
    let sealed = id.strip_prefix("19:")?.strip_suffix("@unq.gbl.spaces")?;
    open_pair(app_id, "chat", sealed, GRAPH_CHAT_LEN)
}

/// The id Teams stores a conversation under: a personal chat's Graph id is the same chat as
/// its `a:` id, which activities carry; any other id is itself.
pub(crate) fn canonical_conversation_id<'a>(app_id: &str, id: &'a str) -> Cow<'a, str> {
    match open_graph_chat_id(app_id, id) {
        Some(key) => Cow::Owned(personal_conversation_id(
            app_id,
            &key.tenant_id,
            &key.aad_object_id,
        )),
        None => Cow::Borrowed(id),
    }
}

/// The team's id, which is also its General channel's id.
pub(crate) fn team_id(tenant_id: &str, aad_group_id: &str) -> String {
    let hex: String = Sha256::digest(
        format!(
            "team\0{}\0{}",
            tenant_id.to_ascii_lowercase(),
            aad_group_id.to_ascii_lowercase()
        )
        .as_bytes(),
    )[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("19:{hex}@thread.tacv2")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const USER: &str = "7faf8ab2-3d56-4244-b585-20c8a42ed2b8";

    #[test]
    fn ids_are_stable_and_shaped_like_teams_ids() {
        let a = personal_conversation_id("app", "T", "U");
        assert_eq!(a, personal_conversation_id("app", "t", "u"));
        assert!(a.starts_with("a:1") && a.len() == 133, "{a}");
        assert_ne!(a, personal_conversation_id("other-app", "t", "u"));
        let id = user_id("app", "t", "u");
        assert!(id.starts_with("29:1") && id.len() == 89, "{id}");
        // Real object ids make ids of the same length.
        assert_eq!(user_id("app", TENANT, USER).len(), 89);
        assert_eq!(personal_conversation_id("app", TENANT, USER).len(), 133);
        let team = team_id("t", "g");
        assert!(
            team.starts_with("19:") && team.ends_with("@thread.tacv2"),
            "{team}"
        );
    }

    #[test]
    fn sealed_ids_open_to_whom_they_name_and_only_for_their_bot() {
        let id = user_id("app", TENANT, &USER.to_ascii_uppercase());
        assert_eq!(open_user_id("app", &id), Some(UserKey::new(TENANT, USER)));
        assert_eq!(open_user_id("other-app", &id), None);

        let chat = personal_conversation_id("app", "contoso", "someone");
        assert_eq!(
            open_personal_conversation_id("app", &chat),
            Some(UserKey::new("contoso", "someone"))
        );
        // A user id is not a chat id, and a changed character breaks the checksum.
        assert_eq!(open_personal_conversation_id("app", &id), None);
        let mut spoiled = chat.clone();
        let last = spoiled.pop().unwrap();
        spoiled.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(open_personal_conversation_id("app", &spoiled), None);
        for junk in ["", "a:1", "a:1xyz", "29:1", "29:1____", "19:x@thread.tacv2"] {
            assert_eq!(open_personal_conversation_id("app", junk), None, "{junk}");
            assert_eq!(open_user_id("app", junk), None, "{junk}");
        }
    }

    #[test]
    fn graph_chat_ids_name_the_same_user_as_the_personal_chat() {
        let chat = graph_chat_id("app", TENANT, USER);
        assert!(
            chat.starts_with("19:") && chat.ends_with("@unq.gbl.spaces"),
            "{chat}"
        );
        assert_eq!(chat.len(), 3 + GRAPH_CHAT_LEN + "@unq.gbl.spaces".len());
        assert_eq!(
            open_graph_chat_id("app", &chat),
            Some(UserKey::new(TENANT, USER))
        );
        assert_eq!(open_graph_chat_id("other-app", &chat), None);
        let personal = personal_conversation_id("app", TENANT, USER);
        assert_eq!(open_graph_chat_id("app", &personal), None);
        assert_eq!(open_graph_chat_id("app", "19:x@thread.tacv2"), None);
    }

    #[test]
    fn long_object_ids_still_round_trip() {
        let long = "x".repeat(300);
        let id = user_id("app", TENANT, &long);
        assert!(id.len() > 89);
        assert_eq!(open_user_id("app", &id), Some(UserKey::new(TENANT, &long)));
    }
}
