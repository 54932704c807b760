//! `GET {serviceUrl}v3/conversations/{id}/pagedmembers?pageSize=N&continuationToken=T`:
//! a conversation's roster (for a team: everyone in it), one page at a time, as Teams serves
//! it: `{"continuationToken"?, "members": [...]}`, the token absent on the last page.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::directory::{Roster, RosterMember};
use crate::error::ConnectorError;
use crate::ids;

/// Teams counts a smaller `pageSize` as this…
const MIN_PAGE_SIZE: usize = 50;
/// …and caps a larger one here (msteams-docs, get-teams-context.md).
const MAX_PAGE_SIZE: usize = 500;
/// Without `pageSize`: the docs name no server default; teams.ts asks for 200.
const DEFAULT_PAGE_SIZE: usize = 200;

/// The first byte of every token. It makes every token start with `+`, a character a query
/// string must percent-encode: a client that forgets to encode the token (teams.net
/// encodes it) sends a space instead and gets 400 on its second page every time, rather than
/// now and then as real, opaque tokens would have it.
const TOKEN_VERSION: u8 = 0xfb;

/// What a `pagedmembers` call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageQuery {
    size: usize,
    token: Option<Token>,
}

impl Default for PageQuery {
    /// The first page, of the default size.
    fn default() -> Self {
        PageQuery {
            size: DEFAULT_PAGE_SIZE,
            token: None,
        }
    }
}

/// A decoded continuation token: where the next page starts, in which roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    roster: [u8; 4],
    offset: u32,
}

fn roster_fingerprint(roster: &Roster) -> [u8; 4] {
    let digest = Sha256::digest(roster.identity().to_ascii_lowercase().as_bytes());
    [digest[0], digest[1], digest[2], digest[3]]
}

fn encode_token(token: Token) -> String {
    let mut bytes = vec![TOKEN_VERSION];
    bytes.extend_from_slice(&token.roster);
    bytes.extend_from_slice(&token.offset.to_be_bytes());
    STANDARD.encode(bytes)
}

fn decode_token(text: &str) -> Result<Token, ConnectorError> {
    let invalid = || ConnectorError::BadArgument(format!("Invalid continuation token: {text:?}"));
    let bytes = STANDARD.decode(text).map_err(|_| invalid())?;
    let [version, r0, r1, r2, r3, o0, o1, o2, o3] = bytes.as_slice() else {
        return Err(invalid());
    };
    if *version != TOKEN_VERSION {
        return Err(invalid());
    }
    Ok(Token {
        roster: [*r0, *r1, *r2, *r3],
        offset: u32::from_be_bytes([*o0, *o1, *o2, *o3]),
    })
}

/// Reads `pageSize` and `continuationToken` from the query string; a malformed one is 400.
pub(crate) fn parse_query(query: Option<&str>) -> Result<PageQuery, ConnectorError> {
    let PageQuery {
        mut size,
        mut token,
    } = PageQuery::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "pageSize" => {
                let asked: i64 = value.trim().parse().map_err(|_| {
                    ConnectorError::BadArgument(format!("pageSize must be a number, not {value:?}"))
                })?;
                size = usize::try_from(asked)
                    .unwrap_or(0)
                    .clamp(MIN_PAGE_SIZE, MAX_PAGE_SIZE);
            }
            "continuationToken" if !value.is_empty() => token = Some(decode_token(&value)?),
            _ => {}
        }
    }
    Ok(PageQuery { size, token })
}

/// Where the page starts: 0, or where the token says, if it is a token of this roster.
fn start(roster: &Roster, query: &PageQuery) -> Result<usize, ConnectorError> {
    let Some(token) = query.token else {
        return Ok(0);
    };
    if token.roster != roster_fingerprint(roster) {
        return Err(ConnectorError::BadArgument(
            "The continuation token belongs to another conversation.".to_owned(),
        ));
    }
    Ok(usize::try_from(token.offset).unwrap_or(usize::MAX))
}

/// A roster entry as Teams serves it. Fields the emulator does not know (the address of a
/// user it knows only by name) are left out, as Teams leaves out what it does not have.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberEntry<'a> {
    id: String,
    name: &'a str,
    aad_object_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    given_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    surname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_principal_name: Option<&'a str>,
    tenant_id: &'a str,
    user_role: &'static str,
}

impl<'a> MemberEntry<'a> {
    fn new(app_id: &str, member: &'a RosterMember) -> Self {
        let user = &member.user;
        let profile = &member.profile;
        MemberEntry {
            id: ids::user_id(app_id, &user.tenant_id, &user.aad_object_id),
            name: &user.name,
            aad_object_id: &user.aad_object_id,
            given_name: &profile.given_name,
            surname: &profile.surname,
            email: profile.email.as_deref(),
            user_principal_name: profile.email.as_deref(),
            tenant_id: &user.tenant_id,
            user_role: "user",
        }
    }
}

/// A page of a roster: `{"continuationToken"?, "members": [...]}`. The last page has no
/// token at all (the swagger: "If there are no additional results the response will not
/// contain a continuation token").
#[derive(Debug)]
pub(crate) struct Page {
    continuation_token: Option<String>,
    members: Vec<RosterMember>,
    /// Whose pairwise `29:` ids the members get.
    app_id: String,
}

impl Page {
    /// The page `query` asks for of a roster with `len` members, whose entries `page` gives.
    pub(crate) fn read(
        app_id: &str,
        roster: &Roster,
        len: usize,
        query: &PageQuery,
        page: impl FnOnce(usize, usize) -> Vec<RosterMember>,
    ) -> Result<Page, ConnectorError> {
        let offset = start(roster, query)?;
        let members = page(offset, query.size);
        let next = offset.saturating_add(members.len());
        let continuation_token = (next < len)
            .then(|| u32::try_from(next).ok())
            .flatten()
            .map(|offset| {
                encode_token(Token {
                    roster: roster_fingerprint(roster),
                    offset,
                })
            });
        Ok(Page {
            continuation_token,
            members,
            app_id: app_id.to_owned(),
        })
    }
}

/// Serialised straight from the members, without an intermediate JSON tree: a broadcast may
/// read 200 pages of 500 in a row.
impl Serialize for Page {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            continuation_token: Option<&'a str>,
            members: Vec<MemberEntry<'a>>,
        }
        Body {
            continuation_token: self.continuation_token.as_deref(),
            members: self
                .members
                .iter()
                .map(|member| MemberEntry::new(&self.app_id, member))
                .collect(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_held_between_50_and_500() {
        let size = |query: &str| parse_query(Some(query)).map(|q| q.size);
        assert_eq!(size("").unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(size("pageSize=10").unwrap(), 50);
        assert_eq!(size("pageSize=-3").unwrap(), 50);
        assert_eq!(size("pageSize=120").unwrap(), 120);
        assert_eq!(size("pageSize=1000000").unwrap(), 500);
        assert!(size("pageSize=lots").is_err());
    }

    #[test]
    fn tokens_start_with_a_character_to_encode_and_name_their_roster() {
        let team = Roster::Team("19:abc@thread.tacv2".to_owned());
        let token = encode_token(Token {
            roster: roster_fingerprint(&team),
            offset: 400,
        });
        assert!(token.starts_with('+'), "{token}");
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("continuationToken", &token)
            .finish();
        let query = parse_query(Some(&encoded)).unwrap();
        assert_eq!(start(&team, &query).unwrap(), 400);

        // Unencoded, the `+` arrives as a space.
        assert!(parse_query(Some(&format!("continuationToken={token}"))).is_err());
        assert!(parse_query(Some("continuationToken=asdfqwerueiqpiewr")).is_err());
        let other = Roster::Team("19:other@thread.tacv2".to_owned());
        assert!(start(&other, &query).is_err());
    }
}
