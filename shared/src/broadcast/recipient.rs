//! One recipient of a broadcast: who it is, how it is stored in the broadcast's audience, and
//! the id of the notification it gets.
//!
//! The audience is a Redis sorted set whose members all score 0, so they sort by their bytes
//! and a page is `ZRANGE … BYLEX` after the last one seen: a cursor that survives restarts and
//! never skips or repeats. Each member starts with a hash of the recipient, so the order
//! interleaves tenants: a broadcast to many tenants sends to all of them at once instead of
//! one tenant after the other.
//!
//! The notification id is UUID v5 of the broadcast and the recipient, the same on every
//! replica and at every resumption: a recipient gets one message however often fan-out is
//! repeated. Changing the scheme would re-send to every recipient of a running broadcast, so a
//! test pins one id.

use uuid::Uuid;

use crate::job::{AnyUser, ChannelTarget, JobId, NamedUser, Target, UserName, UserTarget};

/// Names broadcast recipients' notifications (UUID v5 over broadcast id and recipient).
const RECIPIENT_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4272_6f61_0000_0000_0001);

/// The most characters an id that goes into a recipient may have.
pub const MAX_RECIPIENT_ID: usize = 256;

/// Separates a member's parts; no tenant, object, team or channel id holds it.
const SEPARATOR: char = '|';

/// A broadcast's recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A user, in their personal chat with the bot.
    User {
        tenant_id: String,
        aad_object_id: String,
    },
    /// A user named by `userPrincipalName` or `email`, in their personal chat once Microsoft
    /// Graph has said who they are. The name is kept in lower case: directories compare it
    /// without regard to case.
    Named { tenant_id: String, name: UserName },
    /// A new thread in a team channel.
    Channel {
        tenant_id: String,
        team_id: String,
        channel_id: String,
    },
}

/// Why an id cannot name a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecipient {
    #[error("must not be empty")]
    Empty,
    #[error("must not contain '|' or control characters")]
    Character,
    #[error("must be at most 256 characters")]
    Long,
}

impl Recipient {
    /// A user recipient; Entra object ids are GUIDs that Teams sends in either case, so the
    /// id is kept in lower case (one user, one recipient).
    pub fn user(tenant_id: &str, aad_object_id: &str) -> Self {
        Self::User {
            tenant_id: tenant_id.to_owned(),
            aad_object_id: aad_object_id.to_ascii_lowercase(),
        }
    }

    /// A user, however they were named.
    pub fn any_user(user: &AnyUser) -> Self {
        match user {
            AnyUser::ById(user) => Self::user(&user.tenant_id, &user.aad_object_id),
            AnyUser::ByName(user) => Self::named(&user.tenant_id, &user.name),
        }
    }

    /// A user named by `userPrincipalName` or `email`.
    pub fn named(tenant_id: &str, name: &UserName) -> Self {
        let lower = name.as_str().to_lowercase();
        Self::Named {
            tenant_id: tenant_id.to_owned(),
            name: match name {
                UserName::PrincipalName(_) => UserName::PrincipalName(lower),
                UserName::Email(_) => UserName::Email(lower),
            },
        }
    }

    /// Checks one id that goes into a recipient.
    pub fn check_part(part: &str) -> Result<(), InvalidRecipient> {
        if part.is_empty() {
            return Err(InvalidRecipient::Empty);
        }
        if part.chars().count() > MAX_RECIPIENT_ID {
            return Err(InvalidRecipient::Long);
        }
        if part.contains(SEPARATOR) || part.chars().any(char::is_control) {
            return Err(InvalidRecipient::Character);
        }
        Ok(())
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Self::User { tenant_id, .. }
            | Self::Named { tenant_id, .. }
            | Self::Channel { tenant_id, .. } => tenant_id,
        }
    }

    /// What the recipient is, independent of any broadcast: `u|tenant|user`,
    /// `n|tenant|upn:name` or `n|tenant|mail:address`, or `c|tenant|team|channel`.
    pub fn identity(&self) -> String {
        match self {
            Self::User {
                tenant_id,
                aad_object_id,
            } => format!("u{SEPARATOR}{tenant_id}{SEPARATOR}{aad_object_id}"),
            Self::Named { tenant_id, name } => {
                format!("n{SEPARATOR}{tenant_id}{SEPARATOR}{}", name.key())
            }
            Self::Channel {
                tenant_id,
                team_id,
                channel_id,
            } => format!("c{SEPARATOR}{tenant_id}{SEPARATOR}{team_id}{SEPARATOR}{channel_id}"),
        }
    }

    /// The member of the audience set: a hash of the identity (for the interleaved order),
    /// then the identity.
    pub fn member(&self) -> String {
        let identity = self.identity();
        format!(
            "{:08x}{SEPARATOR}{identity}",
            spread_hash(identity.as_bytes())
        )
    }

    /// Reads a member of the audience set back.
    pub fn from_member(member: &str) -> Option<Self> {
        let mut parts = member.split(SEPARATOR).skip(1);
        let recipient = match (parts.next()?, parts.next()?, parts.next()?) {
            ("u", tenant, user) => Self::User {
                tenant_id: tenant.to_owned(),
                aad_object_id: user.to_owned(),
            },
            ("n", tenant, key) => Self::Named {
                tenant_id: tenant.to_owned(),
                name: match key.split_once(':')? {
                    ("upn", name) => UserName::PrincipalName(name.to_owned()),
                    ("mail", name) => UserName::Email(name.to_owned()),
                    _ => return None,
                },
            },
            ("c", tenant, team) => Self::Channel {
                tenant_id: tenant.to_owned(),
                team_id: team.to_owned(),
                channel_id: parts.next()?.to_owned(),
            },
            _ => return None,
        };
        parts.next().is_none().then_some(recipient)
    }

    /// The id of this recipient's notification in `broadcast`. The broadcast id is prefixed
    /// with its length: ids may hold `/` and `|`, and no two (broadcast, recipient) pairs may
    /// name the same notification.
    pub fn notification_id(&self, broadcast: &str) -> JobId {
        let name = format!("{}:{broadcast}/{}", broadcast.len(), self.identity());
        Uuid::new_v5(&RECIPIENT_NAMESPACE, name.as_bytes()).into()
    }

    /// Where the recipient's notification goes.
    pub fn target(&self) -> Target {
        match self {
            Self::User {
                tenant_id,
                aad_object_id,
            } => Target::User(UserTarget {
                tenant_id: tenant_id.clone(),
                aad_object_id: aad_object_id.clone(),
            }),
            Self::Named { tenant_id, name } => Target::NamedUser(NamedUser {
                tenant_id: tenant_id.clone(),
                name: name.clone(),
            }),
            Self::Channel {
                tenant_id,
                team_id,
                channel_id,
            } => Target::Channel(ChannelTarget {
                tenant_id: tenant_id.clone(),
                team_id: team_id.clone(),
                channel_id: channel_id.clone(),
            }),
        }
    }

    /// The recipient a notification's target names, if it can be one (a conversation target
    /// is never a broadcast's).
    pub fn of_target(target: &Target) -> Option<Self> {
        match target {
            Target::User(user) => Some(Self::user(&user.tenant_id, &user.aad_object_id)),
            Target::NamedUser(user) => Some(Self::named(&user.tenant_id, &user.name)),
            Target::Channel(channel) => Some(Self::Channel {
                tenant_id: channel.tenant_id.clone(),
                team_id: channel.team_id.clone(),
                channel_id: channel.channel_id.clone(),
            }),
            Target::Conversation(_) => None,
        }
    }
}

/// A stable, well-spread 32-bit hash (the order must not change between versions): FNV-1a,
/// whose last bytes barely reach the high bits, finished with MurmurHash3's mixer, which
/// spreads every bit over all of them.
fn spread_hash(bytes: &[u8]) -> u32 {
    let fnv = bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    });
    let mut h = fnv;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_reads_back_as_the_recipient_it_was_made_from() {
        let user = Recipient::user("t-1", "6B1E5A8C-3F0D-4C7E-9A2B-1D4F8E6C0A93");
        let by_name = Recipient::named("t-1", &UserName::PrincipalName("Ann@Contoso.com".into()));
        let by_mail = Recipient::named("t-1", &UserName::Email("ann@mail.contoso.com".into()));
        let channel = Recipient::Channel {
            tenant_id: "t-1".into(),
            team_id: "19:team@thread.tacv2".into(),
            channel_id: "19:general@thread.tacv2".into(),
        };
        for recipient in [user, by_name, by_mail, channel] {
            assert_eq!(Recipient::from_member(&recipient.member()), Some(recipient));
        }
        assert_eq!(Recipient::from_member("0|x|t|u"), None);
        assert_eq!(Recipient::from_member("0|u|t|u|extra"), None);
    }

    #[test]
    fn a_user_is_one_recipient_whatever_the_case_of_their_object_id() {
        assert_eq!(
            Recipient::user("t", "ABC-def").member(),
            Recipient::user("t", "abc-DEF").member()
        );
    }

    #[test]
    fn members_interleave_tenants() {
        let mut members: Vec<String> = (0..40)
            .map(|i| Recipient::user(if i % 2 == 0 { "a" } else { "b" }, &i.to_string()).member())
            .collect();
        members.sort();
        let tenants: Vec<bool> = members.iter().map(|m| m.contains("|u|a|")).collect();
        let switches = tenants.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            switches > 10,
            "sorted members alternate tenants: {switches} switches"
        );
    }

    #[test]
    fn the_notification_id_scheme_is_pinned() {
        let id = Recipient::user("tenant-1", "user-1").notification_id("launch");
        assert_eq!(id.as_ref() as &str, "873c6741-a169-59a6-a3d2-a065230398fb");
    }

    #[test]
    fn no_two_broadcast_and_recipient_pairs_name_the_same_notification() {
        // Ids may hold `/` and `|`: without the length prefix these two would collide.
        let channel = Recipient::Channel {
            tenant_id: "t/u".into(),
            team_id: "x".into(),
            channel_id: "y".into(),
        };
        let user = Recipient::user("x", "y");
        assert_ne!(channel.notification_id("b"), user.notification_id("b/c|t"));
    }

    #[test]
    fn ids_with_the_separator_or_control_characters_are_refused() {
        assert_eq!(Recipient::check_part(""), Err(InvalidRecipient::Empty));
        assert_eq!(
            Recipient::check_part("a|b"),
            Err(InvalidRecipient::Character)
        );
        assert_eq!(
            Recipient::check_part("a\nb"),
            Err(InvalidRecipient::Character)
        );
        assert_eq!(
            Recipient::check_part(&"x".repeat(257)),
            Err(InvalidRecipient::Long)
        );
        assert!(Recipient::check_part("19:abc@thread.tacv2").is_ok());
    }
}
