//! The OData query options the Graph stand-in takes: `$filter` (equality and `in` clauses
//! joined by `and`/`or`, as Graph's directory and Teams filters are used here), `$select`,
//! `$top`, `$expand`, `$count` and `$skiptoken` (which only the stand-in's own `nextLink`s
//! carry).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use sha2::{Digest as _, Sha256};

use super::error::GraphError;

/// What a query value in a link must have encoded to be read back as it was.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Graph's largest page.
pub(crate) const MAX_TOP: usize = 999;

/// Graph's page when `$top` is not given.
pub(crate) const DEFAULT_TOP: usize = 100;

/// A literal in a filter clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    Text(String),
    Bool(bool),
}

/// `field eq value`, or `field in (values)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clause {
    /// As written (compared without case).
    pub(crate) field: String,
    pub(crate) values: Vec<Literal>,
}

impl Clause {
    pub(crate) fn is(&self, field: &str) -> bool {
        self.field.eq_ignore_ascii_case(field)
    }

    /// Whether a text property matches (Graph compares these without case).
    pub(crate) fn matches_text(&self, value: Option<&str>) -> bool {
        self.values.iter().any(|literal| match (literal, value) {
            (Literal::Text(text), Some(value)) => text.eq_ignore_ascii_case(value),
            _ => false,
        })
    }

    pub(crate) fn matches_bool(&self, value: bool) -> bool {
        self.values.contains(&Literal::Bool(value))
    }

    /// The texts the clause accepts.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.values.iter().filter_map(|literal| match literal {
            Literal::Text(text) => Some(text.as_str()),
            Literal::Bool(_) => None,
        })
    }
}

/// A filter in disjunctive form: any of the branches, each all of its clauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) any_of: Vec<Vec<Clause>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            '\'' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        // `''` is a quote inside a string.
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            text.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => text.push(c),
                        None => return Err("a string is not closed".to_owned()),
                    }
                }
                tokens.push(Token::Text(text));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '\'') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn literal(token: Option<Token>) -> Result<Literal, String> {
    match token {
        Some(Token::Text(text)) => Ok(Literal::Text(text)),
        Some(Token::Word(word)) if word.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
        Some(Token::Word(word)) if word.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
        other => Err(format!("expected a value, found {other:?}")),
    }
}

/// Parses `a eq 'x' and b in ('y', 'z') or c eq true`.
pub(crate) fn parse_filter(input: &str) -> Result<Filter, String> {
    let mut tokens = tokenize(input)?.into_iter().peekable();
    let mut any_of = vec![Vec::new()];
    loop {
        let field = match tokens.next() {
            Some(Token::Word(word)) => word,
            other => return Err(format!("expected a property, found {other:?}")),
        };
        let operator = match tokens.next() {
            Some(Token::Word(word)) => word.to_ascii_lowercase(),
            other => return Err(format!("expected an operator, found {other:?}")),
        };
        let values = match operator.as_str() {
            "eq" => vec![literal(tokens.next())?],
            "in" => {
                if tokens.next() != Some(Token::Open) {
                    return Err("expected ( after in".to_owned());
                }
                let mut values = Vec::new();
                loop {
                    values.push(literal(tokens.next())?);
                    match tokens.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => break,
                        other => return Err(format!("expected , or ), found {other:?}")),
                    }
                }
                values
            }
            other => return Err(format!("the operator '{other}' is not supported")),
        };
        if let Some(branch) = any_of.last_mut() {
            branch.push(Clause { field, values });
        }
        match tokens.next() {
            None => break,
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("and") => {}
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("or") => any_of.push(Vec::new()),
            other => return Err(format!("expected and/or, found {other:?}")),
        }
    }
    Ok(Filter { any_of })
}

/// The query options of a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub(crate) filter: Option<Filter>,
    /// `$filter` as sent, for `nextLink`s.
    pub(crate) raw_filter: Option<String>,
    pub(crate) select: Option<Vec<String>>,
    pub(crate) raw_select: Option<String>,
    pub(crate) top: Option<usize>,
    pub(crate) expand: Vec<String>,
    pub(crate) count: bool,
    pub(crate) skip_token: Option<String>,
}

impl Query {
    /// Reads the query string. Graph v1.0 takes the options with or without their `$`.
    pub(crate) fn parse(query: Option<&str>) -> Result<Query, GraphError> {
        let mut parsed = Query::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let name = name.trim_start_matches('$').to_ascii_lowercase();
            match name.as_str() {
                "filter" => {
                    let filter = parse_filter(&value).map_err(|reason| {
                        GraphError::bad_request(format!("Invalid filter clause: {reason}"))
                    })?;
                    parsed.filter = Some(filter);
                    parsed.raw_filter = Some(value.into_owned());
                }
                "select" => {
                    parsed.select = Some(
                        value
                            .split(',')
                            .map(|field| field.trim().to_owned())
                            .filter(|field| !field.is_empty())
                            .collect(),
                    );
                    parsed.raw_select = Some(value.into_owned());
                }
                "top" => {
                    let top = value
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|top| (1..=MAX_TOP).contains(top));
                    parsed.top = Some(top.ok_or_else(|| {
                        GraphError::unsupported_query(format!(
                            "Invalid page size specified: '{value}'. Must be between 1 and {MAX_TOP} inclusive."
                        ))
                    })?);
                }
                "expand" => {
                    parsed.expand = value
                        .split(',')
                        .map(|field| field.trim().to_owned())
                        .filter(|field| !field.is_empty())
                        .collect();
                }
                "count" => parsed.count = value.eq_ignore_ascii_case("true"),
                "skiptoken" => parsed.skip_token = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(parsed)
    }

    /// The page size asked for.
    pub(crate) fn page_size(&self) -> usize {
        self.top.unwrap_or(DEFAULT_TOP)
    }

    /// Whether `$expand` names this navigation property.
    pub(crate) fn expands(&self, property: &str) -> bool {
        self.expand
            .iter()
            .any(|expanded| expanded.eq_ignore_ascii_case(property))
    }

    /// The query string of the next page's link: the same options, and the skip token,
    /// written as Graph writes its links (`$` kept, spaces and quotes percent-encoded).
    pub(crate) fn next_query(&self, skip_token: &str) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(filter) = &self.raw_filter {
            pairs.push(("$filter", filter.clone()));
        }
        if let Some(select) = &self.raw_select {
            pairs.push(("$select", select.clone()));
        }
        if let Some(top) = self.top {
            pairs.push(("$top", top.to_string()));
        }
        if !self.expand.is_empty() {
            pairs.push(("$expand", self.expand.join(",")));
        }
        if self.count {
            pairs.push(("$count", "true".to_owned()));
        }
        pairs.push(("$skiptoken", skip_token.to_owned()));
        pairs
            .into_iter()
            .map(|(name, value)| format!("{name}={}", utf8_percent_encode(&value, QUERY_VALUE)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// What a skip token is good for: the listing (tenant, path, filter) it continues.
pub(crate) fn listing_fingerprint(tenant: &str, path: &str, filter: Option<&str>) -> String {
    let digest = Sha256::digest(
        format!(
            "{}\0{}\0{}",
            tenant.to_ascii_lowercase(),
            path.to_ascii_lowercase(),
            filter.unwrap_or_default()
        )
        .as_bytes(),
    );
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An opaque token for the listing at `offset`.
pub(crate) fn encode_skip_token(offset: usize, fingerprint: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{offset}.{fingerprint}"))
}

/// The offset a skip token continues at; 400 for a token of another listing or none of ours.
pub(crate) fn decode_skip_token(token: &str, fingerprint: &str) -> Result<usize, GraphError> {
    let invalid = || GraphError::bad_request("The skip token is not valid for this request.");
    let decoded = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (offset, print) = text.split_once('.').ok_or_else(invalid)?;
    if print != fingerprint {
        return Err(invalid());
    }
    offset.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_branches_of_clauses() {
        let filter = parse_filter("accountEnabled eq true and userType eq 'Member'").unwrap();
        assert_eq!(filter.any_of.len(), 1);
        assert!(filter.any_of[0][0].is("accountenabled"));
        assert!(filter.any_of[0][0].matches_bool(true));
        assert!(filter.any_of[0][1].matches_text(Some("member")));

        let filter =
            parse_filter("mail eq 'o''neil@x.com' or mail in ('a@x.com','b@x.com')").unwrap();
        assert_eq!(filter.any_of.len(), 2);
        assert!(filter.any_of[0][0].matches_text(Some("O'Neil@x.com")));
        assert_eq!(filter.any_of[1][0].texts().count(), 2);

        let filter = parse_filter("teamsApp/externalId eq 'cf1b'").unwrap();
        assert!(filter.any_of[0][0].is("teamsApp/externalId"));

        for bad in [
            "",
            "mail",
            "mail eq",
            "mail ne 'x'",
            "mail eq 'x",
            "a eq 'x' xor b eq 'y'",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_is_between_one_and_999_and_skip_tokens_belong_to_their_listing() {
        assert_eq!(Query::parse(Some("$top=999")).unwrap().page_size(), 999);
        assert_eq!(Query::parse(None).unwrap().page_size(), DEFAULT_TOP);
        assert_eq!(Query::parse(Some("top=5")).unwrap().page_size(), 5);
        for bad in ["$top=0", "$top=1000", "$top=x"] {
            let err = Query::parse(Some(bad)).unwrap_err();
            assert_eq!(err.code, "Request_UnsupportedQuery", "{bad}");
        }
        let print = listing_fingerprint("t", "/users", None);
        let token = encode_skip_token(200, &print);
        assert_eq!(decode_skip_token(&token, &print).unwrap(), 200);
        let other = listing_fingerprint("t", "/users", Some("mail eq 'x'"));
        assert!(decode_skip_token(&token, &other).is_err());
        assert!(decode_skip_token("garbage", &print).is_err());

        let query = Query::parse(Some("$filter=mail%20eq%20'a b'&$top=3")).unwrap();
        let next = query.next_query("tok");
        assert_eq!(
            next,
            "$filter=mail%20eq%20%27a%20b%27&$top=3&$skiptoken=tok"
        );
        let again = Query::parse(Some(&next)).unwrap();
        assert_eq!(again.raw_filter, query.raw_filter);
        assert_eq!(again.skip_token.as_deref(), Some("tok"));
    }
}
