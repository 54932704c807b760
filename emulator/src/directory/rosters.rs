//! Teams and who is in them; generated users (team rosters and tenants by the thousand).
//!
//! A team's roster is its members added one by one (seen acting in the team, or added by a
//! test), in the order they joined, then its generated members by index. A tenant's generated
//! users all have the app installed personally, without an install event each: a test seeds
//! the bot's side itself, or lets the bot open their chats with `POST v3/conversations`.

use std::collections::HashSet;

use super::{ConversationKind, Directory, TeamsTeam, TeamsUser};
use crate::error::ConnectorError;
use crate::ids::{self, UserKey};
use crate::population::{self, GeneratedUsers, Profile};

#[derive(Debug, Clone)]
pub(super) struct TeamEntry {
    pub(super) bot_installed: bool,
    tenant_id: String,
    /// Object ids (lower-case) of the members added one by one, in the order they joined.
    members: Vec<String>,
    member_set: HashSet<String>,
    /// The generated members, listed after the others.
    generated: Option<GeneratedUsers>,
}

impl TeamEntry {
    fn new(tenant_id: &str) -> Self {
        TeamEntry {
            bot_installed: false,
            tenant_id: tenant_id.to_owned(),
            members: Vec::new(),
            member_set: HashSet::new(),
            generated: None,
        }
    }

    /// Adds a member, unless they are one already (added, or generated).
    pub(super) fn add_member(&mut self, aad_object_id: &str) {
        let generated = self
            .generated
            .as_ref()
            .is_some_and(|generated| generated.index_of(aad_object_id).is_some());
        let aad = aad_object_id.to_ascii_lowercase();
        if !generated && self.member_set.insert(aad.clone()) {
            self.members.push(aad);
        }
    }

    fn len(&self) -> usize {
        self.members.len() + self.generated.as_ref().map_or(0, |users| users.count)
    }
}

/// What a generated set of users is, by the object-id prefix its users share.
#[derive(Debug, Clone)]
pub(super) enum Generated {
    /// The generated part of this team's roster (the set itself lives in the team).
    Roster { team_id: String },
    /// A tenant's users who all have the app installed personally.
    Installed(GeneratedUsers),
    /// A tenant's directory users, who do not have the app (Graph can install it for them).
    Directory(GeneratedUsers),
}

/// Whose members `GET …/pagedmembers` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roster {
    /// A team's (asked through the team id, a channel or a thread).
    Team(String),
    /// A personal chat's user.
    One(TeamsUser),
    /// A conversation whose members the emulator does not track (group chats).
    Nobody(String),
}

impl Roster {
    /// What the roster is of: a continuation token is valid for this roster only.
    pub(crate) fn identity(&self) -> String {
        match self {
            Roster::Team(team_id) => team_id.clone(),
            Roster::One(user) => format!("{}\0{}", user.tenant_id, user.aad_object_id),
            Roster::Nobody(conversation_id) => conversation_id.clone(),
        }
    }
}

/// A user on a roster page, with what the roster says about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RosterMember {
    pub(crate) user: TeamsUser,
    pub(crate) profile: Profile,
}

impl RosterMember {
    fn known(user: TeamsUser) -> Self {
        let profile = Profile::from_name(&user.name);
        RosterMember { user, profile }
    }
}

impl Directory {
    /// The entry of a team, made if new.
    pub(super) fn team_entry(&mut self, team_id: &str, tenant_id: &str) -> &mut TeamEntry {
        self.teams
            .entry(team_id.to_owned())
            .or_insert_with(|| TeamEntry::new(tenant_id))
    }

    /// Registers a team and its General channel.
    pub(crate) fn register_team(&mut self, team: &TeamsTeam) -> String {
        let id = ids::team_id(&team.tenant_id, &team.aad_group_id);
        self.team_entry(&id, &team.tenant_id);
        self.ensure_conversation(
            &id,
            &team.tenant_id,
            ConversationKind::Channel {
                team_id: id.clone(),
            },
            false,
        );
        id
    }

    /// Makes a user a member of a registered team.
    pub(crate) fn add_team_member(&mut self, team: &TeamsTeam, user: &TeamsUser) {
        self.register_user(user);
        let id = ids::team_id(&team.tenant_id, &team.aad_group_id);
        if let Some(entry) = self.teams.get_mut(&id) {
            entry.add_member(&user.aad_object_id);
        }
    }

    /// Registers the team (if new) and gives it `count` generated members, replacing any
    /// earlier count: member `i` is the same user whatever the count.
    pub(crate) fn generate_team_members(
        &mut self,
        team: &TeamsTeam,
        count: usize,
    ) -> GeneratedUsers {
        let team_id = self.register_team(team);
        let users = GeneratedUsers::team_members(team, count);
        self.team_entry(&team_id, &team.tenant_id).generated = Some(users.clone());
        self.add_generated(&users, Generated::Roster { team_id });
        users
    }

    /// Registers a generated set, and notes it among its tenant's (for Graph's listings).
    fn add_generated(&mut self, users: &GeneratedUsers, kind: Generated) {
        let prefix = users.aad_object_id_prefix.clone();
        let sets = self
            .sets_by_tenant
            .entry(users.tenant_id.to_ascii_lowercase())
            .or_default();
        if !sets.contains(&prefix) {
            sets.push(prefix.clone());
        }
        self.generated.insert(prefix, kind);
    }

    /// Gives the tenant's directory `count` generated users named by `cohort`, who do not have
    /// the app, replacing any earlier count for that cohort.
    pub(crate) fn generate_directory_users(
        &mut self,
        tenant_id: &str,
        cohort: &str,
        count: usize,
    ) -> GeneratedUsers {
        let users = GeneratedUsers::directory_users(tenant_id, cohort, count);
        self.add_generated(&users, Generated::Directory(users.clone()));
        users
    }

    /// Gives the tenant `count` generated users named by `cohort`, each with the app
    /// installed personally, replacing any earlier count for that cohort.
    pub(crate) fn generate_tenant_users(
        &mut self,
        tenant_id: &str,
        cohort: &str,
        count: usize,
    ) -> GeneratedUsers {
        let users = GeneratedUsers::tenant_users(tenant_id, cohort, count);
        self.add_generated(&users, Generated::Installed(users.clone()));
        users
    }

    /// A generated set by the object-id prefix its users share, and what the set is.
    pub(super) fn generated_set(&self, prefix: &str) -> Option<(&GeneratedUsers, &Generated)> {
        let kind = self.generated.get(prefix)?;
        let users = match kind {
            Generated::Roster { team_id } => self.teams.get(team_id)?.generated.as_ref()?,
            Generated::Installed(users) | Generated::Directory(users) => users,
        };
        Some((users, kind))
    }

    /// The generated set a user belongs to, their index in it, and what the set is.
    pub(super) fn generated_member(
        &self,
        key: &UserKey,
    ) -> Option<(&GeneratedUsers, usize, &Generated)> {
        let (prefix, index) = population::split(&key.aad_object_id)?;
        let (users, kind) = self.generated_set(&prefix)?;
        let member = index < users.count && users.tenant_id.eq_ignore_ascii_case(&key.tenant_id);
        member.then_some((users, index, kind))
    }

    /// A generated user, by key.
    pub(super) fn generated_user(&self, key: &UserKey) -> Option<TeamsUser> {
        self.generated_member(key)
            .map(|(users, index, _)| users.user(index))
    }

    /// Whether the user is a tenant's generated user (who has the app without an install
    /// event having been sent).
    pub(super) fn installed_by_default(&self, key: &UserKey) -> bool {
        matches!(
            self.generated_member(key),
            Some((_, _, Generated::Installed(_)))
        )
    }

    /// Whether the user is a member of a team the bot is installed in.
    pub(super) fn in_team_with_bot(&self, key: &UserKey) -> bool {
        if let Some((_, _, Generated::Roster { team_id })) = self.generated_member(key)
            && self
                .teams
                .get(team_id)
                .is_some_and(|team| team.bot_installed)
        {
            return true;
        }
        self.teams.values().any(|team| {
            team.bot_installed
                && team.tenant_id.eq_ignore_ascii_case(&key.tenant_id)
                && team.member_set.contains(&key.aad_object_id)
        })
    }

    /// The roster `GET …/pagedmembers` lists for a conversation, and its tenant: refused as
    /// Teams refuses when the conversation is unknown (404) or the bot is not in it (403).
    pub(crate) fn roster(
        &mut self,
        conversation_id: &str,
    ) -> Result<(Roster, String), ConnectorError> {
        let conversation = self.conversation_mut(conversation_id)?;
        if !conversation.bot_member {
            return Err(ConnectorError::BotNotInConversationRoster);
        }
        let tenant_id = conversation.tenant_id.clone();
        let kind = conversation.kind.clone();
        let roster = match kind {
            ConversationKind::Channel { team_id } => Roster::Team(team_id),
            ConversationKind::Thread { channel_id } => match self
                .conversations
                .get(channel_id.as_str())
                .map(|channel| &channel.kind)
            {
                Some(ConversationKind::Channel { team_id }) => Roster::Team(team_id.clone()),
                _ => Roster::Nobody(conversation_id.to_owned()),
            },
            ConversationKind::Personal { aad_object_id } => self
                .user_by_key(&UserKey::new(&tenant_id, &aad_object_id))
                .map_or_else(|| Roster::Nobody(conversation_id.to_owned()), Roster::One),
            ConversationKind::Group => Roster::Nobody(conversation_id.to_owned()),
        };
        Ok((roster, tenant_id))
    }

    /// How many members the roster has.
    pub(crate) fn roster_len(&self, roster: &Roster) -> usize {
        match roster {
            Roster::Team(team_id) => self.teams.get(team_id).map_or(0, TeamEntry::len),
            Roster::One(_) => 1,
            Roster::Nobody(_) => 0,
        }
    }

    /// Members `offset..offset + size` of the roster.
    pub(crate) fn roster_page(
        &self,
        roster: &Roster,
        offset: usize,
        size: usize,
    ) -> Vec<RosterMember> {
        let team = match roster {
            Roster::Team(team_id) => match self.teams.get(team_id) {
                Some(team) => team,
                None => return Vec::new(),
            },
            Roster::One(user) if offset == 0 && size > 0 => {
                return vec![RosterMember::known(user.clone())];
            }
            Roster::One(_) | Roster::Nobody(_) => return Vec::new(),
        };
        let added = team.members.iter().skip(offset).take(size).map(|aad| {
            let key = UserKey::new(&team.tenant_id, aad);
            let user = self
                .users
                .get(&key)
                .cloned()
                .unwrap_or_else(|| TeamsUser::new(&team.tenant_id, aad, ""));
            RosterMember::known(user)
        });
        let mut page: Vec<RosterMember> = added.collect();
        if let Some(generated) = &team.generated {
            let start = offset.saturating_sub(team.members.len());
            let end = generated.count.min(start + (size - page.len()));
            page.extend((start..end).map(|index| {
                let (user, profile) = generated.member(index);
                RosterMember { user, profile }
            }));
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::Limits;

    fn directory() -> Directory {
        Directory::new(
            "app",
            Limits {
                per_conversation: 10,
                total: 100,
            },
        )
    }

    #[test]
    fn a_roster_lists_added_members_then_generated_ones() {
        let mut directory = directory();
        let team = TeamsTeam::new("t", "g", "Everyone");
        let ann = TeamsUser::new("t", "ann", "Ann Lee");
        directory.register_team(&team);
        directory.add_team_member(&team, &ann);
        let generated = directory.generate_team_members(&team, 5);
        // A generated member added again is not listed twice.
        directory.add_team_member(&team, &generated.user(2));
        let roster = Roster::Team(ids::team_id("t", "g"));
        assert_eq!(directory.roster_len(&roster), 6);

        let first = directory.roster_page(&roster, 0, 2);
        assert_eq!(first[0].user, ann);
        assert_eq!(first[0].profile.surname, "Lee");
        assert_eq!(first[1].user, generated.user(0));
        let rest = directory.roster_page(&roster, 2, 10);
        let ids: Vec<_> = rest.iter().map(|m| m.user.aad_object_id.clone()).collect();
        assert_eq!(
            ids,
            (1..5)
                .map(|i| generated.aad_object_id(i))
                .collect::<Vec<_>>()
        );
        assert!(directory.roster_page(&roster, 6, 10).is_empty());
    }

    #[test]
    fn generated_users_are_found_and_reachable_as_their_set_says() {
        let mut directory = directory();
        let team = TeamsTeam::new("t", "g", "Everyone");
        let roster = directory.generate_team_members(&team, 3);
        let staff = directory.generate_tenant_users("t", "staff", 3);

        let member = roster.user(1);
        assert_eq!(
            directory.find_user("t", &member.aad_object_id),
            Some(member.clone())
        );
        assert_eq!(
            directory.find_user("T", &directory.user_id(&member)),
            Some(member.clone())
        );
        assert_eq!(directory.find_user("t", &roster.aad_object_id(3)), None);
        assert_eq!(directory.find_user("other", &member.aad_object_id), None);

        // The team has no bot yet: its members are out of reach; the tenant's users have the app.
        assert!(matches!(
            directory.create_personal("t", &member.aad_object_id),
            Err(ConnectorError::BotNotInConversationRoster)
        ));
        let chat = directory
            .create_personal("t", &staff.aad_object_id(2))
            .unwrap();
        assert_eq!(chat, directory.personal_conversation_id(&staff.user(2)));
        // Their chats exist before anything was stored for them.
        let other = directory.personal_conversation_id(&staff.user(0));
        assert!(directory.conversation_mut(&other).unwrap().bot_member);
        let stranger = directory.personal_conversation_id(&TeamsUser::new("t", "x", ""));
        assert!(directory.conversation_mut(&stranger).is_err());
    }
}
