//! RSA keys, the published JWKS, and the tokens signed with them.
//!
//! Bot Framework signs the tokens it sends to bots with keys published at
//! `/v1/.well-known/keys`, each carrying an `endorsements` list naming the channels it may
//! speak for. The emulator publishes two keys — one endorsed for `msteams`, one only for
//! `webchat` — and keeps a third, unpublished key for forgeries. Generating 2048-bit keys
//! takes a noticeable fraction of a second even optimised, and tests start many emulators,
//! so the keys are made once per process and shared by every emulator in it.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// How "Teams" spoils the token it puts on an activity, to test that the bot rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenVariant {
    /// A correct token: RS256 with the published, `msteams`-endorsed key.
    Valid,
    /// Signed by an unpublished key, but carrying the published key's `kid`.
    WrongSigningKey,
    /// `aud` is not the bot's app id.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `exp` an hour ago (well beyond the usual 5 minutes of clock skew).
    Expired,
    /// Header `{"alg":"none"}` and an empty signature.
    AlgNone,
    /// HS256 keyed with the published key's public PEM (the classic algorithm confusion).
    Hs256WithPublicKey,
    /// The `serviceurl` claim differs from the activity's `serviceUrl`.
    ServiceUrlMismatch,
    /// No `Authorization` header at all.
    NoAuthorization,
    /// Signed by an unpublished key whose `kid` is not in the JWKS.
    UnknownKid,
    /// Signed by a published key whose JWKS entry is endorsed for `webchat` only.
    KeyWithoutEndorsement,
}

/// One RSA key pair with everything needed to publish it and sign with it.
pub(crate) struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public_pem: String,
    n: String,
    e: String,
}

impl SigningKey {
    fn generate() -> Self {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .expect("generating a 2048-bit RSA key only fails if the OS RNG fails");
        let der = private
            .to_pkcs1_der()
            .expect("a freshly generated RSA key always encodes as PKCS#1");
        let public = private.to_public_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("an RSA public key always encodes as SPKI PEM");
        // Microsoft's kids are base64url SHA-1 thumbprints (27 characters); 20 bytes of a
        // SHA-256 of the public key gives ids of the same shape.
        let digest = Sha256::digest(public_pem.as_bytes());
        SigningKey {
            kid: URL_SAFE_NO_PAD.encode(&digest[..20]),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            public_pem,
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }
    }

    fn jwk(&self, endorsements: &[&str]) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n,
            "e": self.e,
            "endorsements": endorsements,
        })
    }

    fn sign<T: Serialize>(&self, kid: &str, claims: &T) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        header.x5t = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("RS256 signing with a valid RSA key cannot fail")
    }
}

/// The process-wide keys.
pub(crate) struct KeySet {
    /// Published, endorsed for `msteams`: signs valid inbound tokens and access tokens.
    pub(crate) teams: SigningKey,
    /// Published, endorsed for `webchat` only.
    pub(crate) webchat: SigningKey,
    /// Never published.
    pub(crate) unpublished: SigningKey,
}

/// The keys, generated on first use (three in parallel: the machine has few cores but the
/// generation is CPU-bound and independent).
pub(crate) fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::thread::scope(|scope| {
            let webchat = scope.spawn(SigningKey::generate);
            let unpublished = scope.spawn(SigningKey::generate);
            let teams = SigningKey::generate();
            KeySet {
                teams,
                webchat: webchat.join().expect("key generation thread panicked"),
                unpublished: unpublished.join().expect("key generation thread panicked"),
            }
        })
    })
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("teams_kid", &self.teams.kid)
            .field("webchat_kid", &self.webchat.kid)
            .finish_non_exhaustive()
    }
}

/// Claims of the token Bot Framework puts on an activity it sends to a bot.
#[derive(Debug, Serialize)]
struct InboundClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    exp: i64,
    nbf: i64,
    iat: i64,
    serviceurl: &'a str,
}

/// Claims of an Entra client-credentials access token (for the Bot Connector or Graph).
#[derive(Debug, Serialize)]
struct AccessClaims<'a> {
    aud: &'a str,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    appid: &'a str,
    appidacr: &'a str,
    idp: String,
    tid: &'a str,
    sub: &'a str,
    uti: String,
    ver: &'a str,
    /// The application permissions granted in the tenant (Graph tokens carry them).
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<&'a [&'a str]>,
}

/// The audience of Bot Connector access tokens, whatever the emulator's own address.
const CONNECTOR_AUDIENCE: &str = "https://api.botframework.com";

/// The tenant multi-tenant bots get their Bot Connector tokens from (`botframework.com`).
const BOT_FRAMEWORK_TENANT: &str = "d6d49420-f39b-4df7-a1dc-d59a935871db";

/// The `tid` of a token asked for at `/{tenant}/oauth2/v2.0/token`: multi-tenant bots get
/// tokens from the Bot Framework tenant.
pub(crate) fn token_tenant(tenant: &str) -> String {
    if tenant.eq_ignore_ascii_case("botframework.com") {
        BOT_FRAMEWORK_TENANT.to_owned()
    } else {
        tenant.to_owned()
    }
}

impl KeySet {
    /// The JWKS document, as served at `/v1/.well-known/keys`.
    pub(crate) fn jwks(&self) -> Value {
        json!({
            "keys": [
                self.teams.jwk(&["msteams", "skype", "webchat"]),
                self.webchat.jwk(&["webchat"]),
            ]
        })
    }

    /// The token "Teams" sends with an activity, spoiled as `variant` says; `None` for
    /// [`TokenVariant::NoAuthorization`].
    pub(crate) fn inbound_token(
        &self,
        issuer: &str,
        app_id: &str,
        service_url: &str,
        variant: TokenVariant,
    ) -> Option<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mismatched_url = format!("{service_url}mismatch/");
        let mut claims = InboundClaims {
            iss: issuer,
            aud: app_id,
            exp: now + 3600,
            nbf: now,
            iat: now,
            serviceurl: service_url,
        };
        let token = match variant {
            TokenVariant::NoAuthorization => return None,
            TokenVariant::Valid => self.teams.sign(&self.teams.kid, &claims),
            TokenVariant::WrongSigningKey => self.unpublished.sign(&self.teams.kid, &claims),
            TokenVariant::UnknownKid => self.unpublished.sign(&self.unpublished.kid, &claims),
            TokenVariant::KeyWithoutEndorsement => self.webchat.sign(&self.webchat.kid, &claims),
            TokenVariant::WrongAudience => {
                claims.aud = "00000000-0000-0000-0000-000000000000";
                self.teams.sign(&self.teams.kid, &claims)
            }
            TokenVariant::WrongIssuer => {
                claims.iss = "https://sts.windows.net/not-bot-framework/";
                self.teams.sign(&self.teams.kid, &claims)
            }
            TokenVariant::Expired => {
                claims.iat = now - 2 * 3600;
                claims.nbf = now - 2 * 3600;
                claims.exp = now - 3600;
                self.teams.sign(&self.teams.kid, &claims)
            }
            TokenVariant::ServiceUrlMismatch => {
                claims.serviceurl = &mismatched_url;
                self.teams.sign(&self.teams.kid, &claims)
            }
            TokenVariant::AlgNone => {
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
                let payload = URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&claims).expect("claims serialize to JSON"));
                format!("{header}.{payload}.")
            }
            TokenVariant::Hs256WithPublicKey => {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(self.teams.kid.clone());
                let key = EncodingKey::from_secret(self.teams.public_pem.as_bytes());
                jsonwebtoken::encode(&header, &claims, &key).expect("HS256 signing cannot fail")
            }
        };
        Some(token)
    }

    /// An access token as Entra would issue it to the bot for the Bot Connector.
    pub(crate) fn access_token(&self, app_id: &str, tenant: &str, lifetime_secs: i64) -> String {
        self.sign_access(CONNECTOR_AUDIENCE, app_id, tenant, lifetime_secs, None)
    }

    /// An access token for Graph (audience `graph_root`), with the tenant's granted
    /// application permissions as `roles`, as Entra issues them.
    pub(crate) fn graph_token(
        &self,
        graph_root: &str,
        app_id: &str,
        tenant: &str,
        lifetime_secs: i64,
        roles: &[&str],
    ) -> String {
        self.sign_access(graph_root, app_id, tenant, lifetime_secs, Some(roles))
    }

    fn sign_access(
        &self,
        audience: &str,
        app_id: &str,
        tenant: &str,
        lifetime_secs: i64,
        roles: Option<&[&str]>,
    ) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let tid = token_tenant(tenant);
        let claims = AccessClaims {
            aud: audience,
            iss: format!("https://sts.windows.net/{tid}/"),
            iat: now,
            nbf: now,
            exp: now + lifetime_secs,
            appid: app_id,
            appidacr: "1",
            idp: format!("https://sts.windows.net/{tid}/"),
            tid: &tid,
            sub: app_id,
            uti: uuid::Uuid::new_v4().simple().to_string(),
            ver: "1.0",
            roles,
        };
        self.teams.sign(&self.teams.kid, &claims)
    }
}
