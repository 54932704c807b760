//! Users by the thousand: team rosters and tenants whose members are computed, not stored.
//!
//! A broadcast test needs a team of 100,000 or a tenant of a million; materialising them
//! would cost seconds and hundreds of megabytes for nothing. User `i` of a generated set is a
//! function of the set and `i`: the object id is a UUID (version 8, "custom") whose first 24
//! characters name the set and whose last 12 hex digits are `i`, so an id read back from a
//! request leads to its set with one lookup and its index with one parse.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::directory::{DirectoryUser, TeamsTeam, TeamsUser, UserType};

/// Length of the part of a generated object id that names its set, `xxxxxxxx-xxxx-8xxx-8xxx-`.
const PREFIX_LEN: usize = 24;

/// The largest index 12 hex digits hold.
const MAX_INDEX: usize = (1 << 48) - 1;

const GIVEN_NAMES: [&str; 16] = [
    "Adele",
    "Alex",
    "Allan",
    "Debra",
    "Diego",
    "Emily",
    "Enrico",
    "Grady",
    "Henrietta",
    "Irvin",
    "Isaiah",
    "Johanna",
    "Joni",
    "Lee",
    "Lidia",
    "Megan",
];
const SURNAMES: [&str; 16] = [
    "Vance",
    "Wilber",
    "Deyoung",
    "Berger",
    "Siciliani",
    "Braun",
    "Cattaneo",
    "Archie",
    "Mueller",
    "Sayers",
    "Langer",
    "Lauer",
    "Sherman",
    "Gu",
    "Holloway",
    "Bowen",
];

/// A generated set of users of one tenant: a team's roster or a tenant's users. User `i`
/// (`0 <= i < count`) has object id `aad_object_id_prefix` followed by `i` as 12 lower-case
/// hex digits; names and addresses follow from `i` too. Over HTTP, camelCase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedUsers {
    /// The users' tenant.
    pub tenant_id: String,
    /// The first 24 characters of every user's object id (`xxxxxxxx-xxxx-8xxx-8xxx-`).
    pub aad_object_id_prefix: String,
    /// How many users there are.
    pub count: usize,
}

/// What a generated user's roster entry says about them besides their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) given_name: String,
    pub(crate) surname: String,
    /// Both `email` and `userPrincipalName`.
    pub(crate) email: Option<String>,
}

impl Profile {
    /// What a roster says of a user known only by name: no address, which Teams may leave
    /// out too.
    pub(crate) fn from_name(name: &str) -> Self {
        let name = name.trim();
        let (given, surname) = name.split_once(' ').unwrap_or((name, ""));
        Profile {
            given_name: given.to_owned(),
            surname: surname.trim().to_owned(),
            email: None,
        }
    }
}

/// The set-naming prefix for a scope of a tenant, e.g. a team's roster.
fn prefix(tenant_id: &str, scope: &str) -> String {
    let digest = Sha256::digest(
        format!(
            "generated\0{}\0{}",
            tenant_id.to_ascii_lowercase(),
            scope.to_ascii_lowercase()
        )
        .as_bytes(),
    );
    let hex: String = digest[..9].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-8{}-8{}-",
        &hex[..8],
        &hex[8..12],
        &hex[12..15],
        &hex[15..18]
    )
}

/// The set prefix and index of a generated object id; `None` for any other id.
pub(crate) fn split(aad_object_id: &str) -> Option<(String, usize)> {
    let id = aad_object_id.to_ascii_lowercase();
    if id.len() != PREFIX_LEN + 12 || !id.is_ascii() || &id[14..15] != "8" || &id[19..20] != "8" {
        return None;
    }
    let index = usize::from_str_radix(&id[PREFIX_LEN..], 16).ok()?;
    uuid::Uuid::try_parse(&id).ok()?;
    Some((id[..PREFIX_LEN].to_owned(), index))
}

/// A mail domain for the tenant, so that generated addresses look like an organisation's.
fn domain(tenant_id: &str) -> String {
    let short: String = tenant_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if short.is_empty() {
        "tenant.onmicrosoft.com".to_owned()
    } else {
        format!("{short}.onmicrosoft.com")
    }
}

impl GeneratedUsers {
    /// The generated members of a team's roster (on top of any user added by hand).
    pub fn team_members(team: &TeamsTeam, count: usize) -> Self {
        GeneratedUsers {
            tenant_id: team.tenant_id.clone(),
            aad_object_id_prefix: prefix(&team.tenant_id, &format!("team\0{}", team.aad_group_id)),
            count: count.min(MAX_INDEX),
        }
    }

    /// A named set (`cohort`) of users of a tenant; different names give different users.
    pub fn tenant_users(tenant_id: &str, cohort: &str, count: usize) -> Self {
        GeneratedUsers {
            tenant_id: tenant_id.to_owned(),
            aad_object_id_prefix: prefix(tenant_id, &format!("tenant\0{cohort}")),
            count: count.min(MAX_INDEX),
        }
    }

    /// A named set (`cohort`) of users of a tenant's directory who do not have the app: what
    /// Graph lists and finds, and whom it can install the app for.
    pub fn directory_users(tenant_id: &str, cohort: &str, count: usize) -> Self {
        GeneratedUsers {
            tenant_id: tenant_id.to_owned(),
            aad_object_id_prefix: prefix(tenant_id, &format!("directory\0{cohort}")),
            count: count.min(MAX_INDEX),
        }
    }

    /// User `index` as Graph shows them: an enabled member whose `userPrincipalName` and
    /// `mail` are both their address.
    pub fn directory_user(&self, index: usize) -> DirectoryUser {
        let profile = self.profile(index);
        let address = profile.email.unwrap_or_default();
        DirectoryUser {
            tenant_id: self.tenant_id.clone(),
            id: self.aad_object_id(index),
            user_principal_name: address.clone(),
            mail: Some(address),
            display_name: format!("{} {}", profile.given_name, profile.surname),
            account_enabled: true,
            user_type: UserType::Member,
        }
    }

    /// The index of the user with this address (`userPrincipalName` or `mail`), if they are
    /// one of these users.
    pub fn index_of_address(&self, address: &str) -> Option<usize> {
        let (local, _) = address.split_once('@')?;
        let (_, index) = local.rsplit_once('.')?;
        let index: usize = index.parse().ok()?;
        let matches = index < self.count
            && self
                .profile(index)
                .email
                .is_some_and(|email| email.eq_ignore_ascii_case(address));
        matches.then_some(index)
    }

    /// User `index`'s object id (also for indexes past `count`, which are not users).
    pub fn aad_object_id(&self, index: usize) -> String {
        format!("{}{index:012x}", self.aad_object_id_prefix)
    }

    /// User `index`.
    pub fn user(&self, index: usize) -> TeamsUser {
        self.member(index).0
    }

    /// User `index` and what a roster says about them.
    pub(crate) fn member(&self, index: usize) -> (TeamsUser, Profile) {
        let profile = self.profile(index);
        let user = TeamsUser::new(
            &self.tenant_id,
            self.aad_object_id(index),
            format!("{} {}", profile.given_name, profile.surname),
        );
        (user, profile)
    }

    /// Every user, in index order.
    pub fn users(&self) -> impl Iterator<Item = TeamsUser> + '_ {
        (0..self.count).map(|index| self.user(index))
    }

    /// The index of the user with this object id, if they are one of these users.
    pub fn index_of(&self, aad_object_id: &str) -> Option<usize> {
        split(aad_object_id)
            .filter(|(prefix, index)| *prefix == self.aad_object_id_prefix && *index < self.count)
            .map(|(_, index)| index)
    }

    pub(crate) fn profile(&self, index: usize) -> Profile {
        let given = GIVEN_NAMES[index % GIVEN_NAMES.len()];
        let surname = SURNAMES[(index / GIVEN_NAMES.len()) % SURNAMES.len()];
        let email = format!(
            "{}.{}.{index}@{}",
            given.to_ascii_lowercase(),
            surname.to_ascii_lowercase(),
            domain(&self.tenant_id)
        );
        Profile {
            given_name: given.to_owned(),
            surname: surname.to_owned(),
            email: Some(email),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_uuids_that_name_their_set_and_index() {
        let team = TeamsTeam::new("Tenant-1", "group-1", "Everyone");
        let roster = GeneratedUsers::team_members(&team, 100_000);
        let id = roster.aad_object_id(99_999);
        let parsed = uuid::Uuid::try_parse(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert!(id.ends_with("0000001869f"), "{id}");
        assert_eq!(
            split(&id.to_ascii_uppercase()),
            Some((roster.aad_object_id_prefix.clone(), 99_999))
        );
        assert_eq!(roster.index_of(&id), Some(99_999));
        assert_eq!(roster.index_of(&roster.aad_object_id(100_000)), None);
        assert_eq!(split("7faf8ab2-3d56-4244-b585-20c8a42ed2b8"), None);
        assert_eq!(split("not an id"), None);

        // The same team gives the same ids (whatever the case); another scope other ids.
        let again = GeneratedUsers::team_members(&TeamsTeam::new("tenant-1", "GROUP-1", ""), 1);
        assert_eq!(again.aad_object_id_prefix, roster.aad_object_id_prefix);
        let staff = GeneratedUsers::tenant_users("tenant-1", "group-1", 1);
        assert_ne!(staff.aad_object_id_prefix, roster.aad_object_id_prefix);
        assert_eq!(staff.index_of(&id), None);
    }

    #[test]
    fn users_have_names_and_addresses_of_their_tenant() {
        let staff =
            GeneratedUsers::tenant_users("72f988bf-86f1-41af-91ab-2d7cd011db47", "staff", 3);
        let users: Vec<TeamsUser> = staff.users().collect();
        assert_eq!(users.len(), 3);
        assert_eq!(users[1].name, "Alex Vance");
        assert_eq!(users[1].tenant_id, staff.tenant_id);
        assert_eq!(
            staff.profile(17).email.as_deref(),
            Some("alex.wilber.17@72f988bf.onmicrosoft.com")
        );
        assert_eq!(
            staff.index_of_address("ALEX.Wilber.17@72f988bf.onmicrosoft.com"),
            None,
            "past the count"
        );
        let directory =
            GeneratedUsers::directory_users("72f988bf-86f1-41af-91ab-2d7cd011db47", "staff", 20);
        assert_ne!(
            directory.aad_object_id_prefix, staff.aad_object_id_prefix,
            "a directory cohort is not the tenant cohort of the same name"
        );
        let user = directory.directory_user(17);
        assert_eq!(
            user.user_principal_name,
            "alex.wilber.17@72f988bf.onmicrosoft.com"
        );
        assert_eq!(
            user.mail.as_deref(),
            Some(user.user_principal_name.as_str())
        );
        assert_eq!(
            directory.index_of_address("ALEX.Wilber.17@72f988bf.onmicrosoft.com"),
            Some(17)
        );
        assert_eq!(
            directory.index_of_address("alex.wilber.16@72f988bf.onmicrosoft.com"),
            None
        );
        assert_eq!(
            directory.index_of_address("nobody@72f988bf.onmicrosoft.com"),
            None
        );
    }
}
