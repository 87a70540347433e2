//! Users and password authentication (SCRAM-SHA-256).
//!
//! A user's password is never stored: `CREATE USER ... PASSWORD` keeps the SCRAM verifier
//! Postgres keeps (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5803), from
//! which a login can be checked but the password not recovered, nor a client impersonated.
//! The users live in the store's metadata, committed with an epoch like any catalog change.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use eddy_common::SqlState;
use eddy_executor::store::CatalogChange;
use parking_lot::RwLock;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// The metadata key holding every user.
const USERS_KEY: &str = "auth/users";
/// Iterations of PBKDF2 for new verifiers: Postgres's default.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// The user a trust connection without a user name is, and the one Eddy always lists.
pub const BOOTSTRAP_USER: &str = "root";

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Anyone may connect as anyone (the default, meant for loopback).
    #[default]
    Trust,
    /// Every connection proves its user's password with SCRAM-SHA-256.
    Scram,
}

/// One user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// The SCRAM verifier, or `None` for a user without a password (who cannot log in when
    /// passwords are required).
    pub verifier: Option<String>,
    pub superuser: bool,
}

/// A password given in a statement; its `Debug` hides it so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// `CREATE USER`, `ALTER USER`, `DROP USER` (and the same with `ROLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStatement {
    Create {
        name: String,
        if_not_exists: bool,
        password: Option<Secret>,
        superuser: bool,
    },
    Alter {
        name: String,
        /// `PASSWORD 'x'` sets one, `PASSWORD NULL` removes it; absent leaves it.
        password: Option<Option<Secret>>,
        superuser: Option<bool>,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
}

/// Every user, shared by the connections (which check passwords) and the catalog.
#[derive(Debug, Default)]
pub struct Users {
    users: RwLock<BTreeMap<String, UserRecord>>,
}

impl Users {
    /// The users stored in `store`.
    ///
    /// # Errors
    /// When the store cannot be read or holds an unreadable user list.
    pub fn load(store: &eddy_executor::store::Store) -> Result<Self> {
        let users = match store.meta(USERS_KEY)? {
            Some(bytes) => {
                let list: Vec<UserRecord> = serde_json::from_slice(&bytes).map_err(|e| {
                    ServerError::new(SqlState::Internal, format!("the stored user list is unreadable: {e}"))
                })?;
                list.into_iter().map(|u| (u.name.clone(), u)).collect()
            }
            None => BTreeMap::new(),
        };
        Ok(Self { users: RwLock::new(users) })
    }

    pub fn get(&self, name: &str) -> Option<UserRecord> {
        self.users.read().get(name).cloned()
    }

    /// Every user name, the bootstrap user included.
    pub fn names(&self) -> Vec<String> {
        let users = self.users.read();
        let mut names: Vec<String> = users.keys().cloned().collect();
        if !users.contains_key(BOOTSTRAP_USER) {
            names.insert(0, BOOTSTRAP_USER.to_string());
        }
        names
    }

    /// Applies one statement and makes it durable before returning its command tag.
    ///
    /// # Errors
    /// Duplicate or unknown users, an unreadable verifier, storage failures.
    pub async fn execute(&self, engine: &crate::engine::Engine, statement: &UserStatement) -> Result<&'static str> {
        let _ddl = engine.ddl_lock.lock().await;
        let mut next = self.users.read().clone();
        let tag = match statement {
            UserStatement::Create { name, if_not_exists, password, superuser } => {
                if next.contains_key(name) {
                    if *if_not_exists {
                        return Ok("CREATE ROLE");
                    }
                    return Err(ServerError::new(SqlState::DuplicateObject, format!("role \"{name}\" already exists")));
                }
                let verifier = password.as_ref().map(|p| verifier_for(&p.0)).transpose()?;
                next.insert(name.clone(), UserRecord { name: name.clone(), verifier, superuser: *superuser });
                "CREATE ROLE"
            }
            UserStatement::Alter { name, password, superuser } => {
                let Some(user) = next.get_mut(name) else {
                    return Err(unknown_role(name));
                };
                if let Some(password) = password {
                    user.verifier = password.as_ref().map(|p| verifier_for(&p.0)).transpose()?;
                }
                if let Some(s) = superuser {
                    user.superuser = *s;
                }
                "ALTER ROLE"
            }
            UserStatement::Drop { names, if_exists } => {
                for name in names {
                    if next.remove(name).is_none() && !*if_exists {
                        return Err(unknown_role(name));
                    }
                }
                "DROP ROLE"
            }
        };
        let list: Vec<&UserRecord> = next.values().collect();
        let value = serde_json::to_vec(&list)
            .map_err(|e| ServerError::new(SqlState::Internal, format!("cannot encode the user list: {e}")))?;
        engine.runtime.commit_catalog(vec![CatalogChange::PutMeta { key: USERS_KEY.to_string(), value }]).await?;
        *self.users.write() = next;
        Ok(tag)
    }
}

fn unknown_role(name: &str) -> ServerError {
    ServerError::new(SqlState::UndefinedObject, format!("role \"{name}\" does not exist"))
}

/// The verifier to store for `password`. A password that already is a SCRAM verifier (what
/// `pg_dumpall` writes) is stored as it is, as Postgres does.
///
/// # Errors
/// When randomness is unavailable or a given verifier is malformed.
pub fn verifier_for(password: &str) -> Result<String> {
    if password.starts_with("SCRAM-SHA-256$") {
        Verifier::parse(password)?;
        return Ok(password.to_string());
    }
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| ServerError::new(SqlState::Internal, "no randomness for a password salt"))?;
    let salted = salted_password(password, &salt, SCRAM_ITERATIONS);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, &client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key.as_ref()),
        B64.encode(server_key)
    ))
}

/// A parsed verifier.
#[derive(Debug, Clone)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    /// # Errors
    /// When `text` is not `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || ServerError::new(SqlState::InvalidParameterValue, "malformed SCRAM-SHA-256 password verifier");
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iterations.parse().map_err(|_| bad())?;
        let decode = |s: &str| B64.decode(s).map_err(|_| bad());
        let v = Self { iterations, salt: decode(salt)?, stored_key: decode(stored)?, server_key: decode(server)? };
        if v.iterations == 0 || v.stored_key.len() != 32 || v.server_key.len() != 32 {
            return Err(bad());
        }
        Ok(v)
    }

    /// A verifier no password matches, for unknown users: they go through the same exchange
    /// as known ones, so a client cannot tell which user names exist.
    fn impossible(name: &str) -> Self {
        let salt = digest::digest(&digest::SHA256, format!("eddy-mock-salt/{name}").as_bytes());
        Self {
            iterations: SCRAM_ITERATIONS,
            salt: salt.as_ref()[..16].to_vec(),
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
        }
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    // Postgres uses the password as it is when SASLprep rejects it.
    let normalized = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, normalized.as_bytes(), &mut out);
    out
}

/// Compares without stopping at the first difference, so timing tells nothing about the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("password authentication failed for user \"{0}\"")]
    WrongPassword(String),
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SASL mechanism {0} is not supported; SCRAM-SHA-256 is")]
    Mechanism(String),
}

impl ScramError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::WrongPassword(_) => "28P01",
            ScramError::Malformed(_) | ScramError::Mechanism(_) => "08P01",
        }
    }
}

/// The server side of one SCRAM-SHA-256 exchange (RFC 5802/7677, without channel binding).
#[derive(Debug)]
pub enum ScramExchange {
    /// Waiting for the client-first message.
    Start {
        user: String,
        verifier: Option<Verifier>,
    },
    /// Sent server-first; waiting for the client's proof.
    ServerFirstSent {
        user: String,
        verifier: Option<Verifier>,
        auth_prefix: String,
        nonce: String,
    },
    Done,
}

impl ScramExchange {
    /// An exchange for `user`; `users` gives its verifier (none for unknown users and users
    /// without a password, whose login then fails at the proof).
    pub fn new(user: &str, users: &Arc<Users>) -> Self {
        let verifier = users.get(user).and_then(|u| u.verifier).and_then(|v| Verifier::parse(&v).ok());
        Self::Start { user: user.to_string(), verifier }
    }

    /// Takes the client-first message; returns server-first.
    ///
    /// # Errors
    /// On a malformed message or an unknown mechanism.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> std::result::Result<Vec<u8>, ScramError> {
        if mechanism != "SCRAM-SHA-256" {
            return Err(ScramError::Mechanism(mechanism.to_string()));
        }
        let ScramExchange::Start { user, verifier } = std::mem::replace(self, ScramExchange::Done) else {
            return Err(ScramError::Malformed("unexpected client-first message"));
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n,," or "y,," (no channel binding); "p=..." asks for binding we do not offer.
        let bare = if let Some(rest) = text.strip_prefix("n,").or_else(|| text.strip_prefix("y,")) {
            let (_authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no gs2 header"))?;
            bare
        } else {
            return Err(ScramError::Malformed("channel binding is not supported"));
        };
        let client_nonce =
            bare.split(',').find_map(|attr| attr.strip_prefix("r=")).ok_or(ScramError::Malformed("no client nonce"))?;
        let mut random = [0u8; 18];
        ring::rand::SystemRandom::new().fill(&mut random).map_err(|_| ScramError::Malformed("no randomness"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(random));
        let shown = verifier.clone().unwrap_or_else(|| Verifier::impossible(&user));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&shown.salt), shown.iterations);
        let auth_prefix = format!("{bare},{server_first}");
        *self = ScramExchange::ServerFirstSent { user, verifier, auth_prefix, nonce };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final message; returns server-final when the proof is right.
    ///
    /// # Errors
    /// [`ScramError::WrongPassword`] when the proof does not match.
    pub fn client_final(&mut self, message: &[u8]) -> std::result::Result<Vec<u8>, ScramError> {
        let ScramExchange::ServerFirstSent { user, verifier, auth_prefix, nonce } =
            std::mem::replace(self, ScramExchange::Done)
        else {
            return Err(ScramError::Malformed("unexpected client-final message"));
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let echoed = without_proof
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if echoed != nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let Some(verifier) = verifier else {
            return Err(ScramError::WrongPassword(user));
        };
        let auth_message = format!("{auth_prefix},{without_proof}");
        let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::WrongPassword(user));
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let computed = digest::digest(&digest::SHA256, &client_key);
        if !constant_time_eq(computed.as_ref(), &verifier.stored_key) {
            return Err(ScramError::WrongPassword(user));
        }
        let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client computing its proof as RFC 5802 says, for the round trip below.
    fn client_proof(password: &str, salt: &[u8], iterations: u32, auth_message: &str) -> String {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored = digest::digest(&digest::SHA256, &client_key);
        let signature = hmac_sha256(stored.as_ref(), auth_message.as_bytes());
        B64.encode(client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect::<Vec<u8>>())
    }

    fn exchange(stored_password: &str, tried: &str) -> std::result::Result<Vec<u8>, ScramError> {
        let verifier = Verifier::parse(&verifier_for(stored_password).expect("verifier")).expect("parse");
        let mut x = ScramExchange::Start { user: "alice".into(), verifier: Some(verifier.clone()) };
        let first = x.client_first("SCRAM-SHA-256", b"n,,n=,r=abc").expect("first");
        let first = String::from_utf8(first).expect("utf8");
        let nonce = first.split(',').next().and_then(|r| r.strip_prefix("r=")).expect("nonce").to_string();
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("n=,r=abc,{first},{without_proof}");
        let proof = client_proof(tried, &verifier.salt, verifier.iterations, &auth);
        x.client_final(format!("{without_proof},p={proof}").as_bytes())
    }

    #[test]
    fn the_right_password_logs_in_and_a_wrong_one_does_not() {
        assert!(exchange("s3cret", "s3cret").is_ok());
        assert!(matches!(exchange("s3cret", "S3cret"), Err(ScramError::WrongPassword(u)) if u == "alice"));
    }

    #[test]
    fn the_verifier_does_not_hold_the_password() {
        let v = verifier_for("hunter2").expect("verifier");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(!v.contains("hunter2"));
        assert_ne!(v, verifier_for("hunter2").expect("verifier"), "each verifier has its own salt");
        assert_eq!(verifier_for(&v).expect("kept"), v, "a verifier given as the password is kept");
    }
}
