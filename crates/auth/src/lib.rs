//! Users, password hashing and per-vhost permissions, shared by every protocol.
//!
//! Semantics follow RabbitMQ's internal auth backend:
//! - passwords are stored as `base64(salt ++ sha256(salt ++ password))` with a
//!   4-byte salt (`rabbit_password_hashing_sha256`), so `definitions.json`
//!   exported from RabbitMQ imports unchanged;
//! - a permission is three regular expressions (configure, write, read) per
//!   vhost, matched *unanchored* against the resource name, as RabbitMQ does
//!   (`^$` grants nothing, `.*` grants everything);
//! - users listed in `loopback_users` (by default `guest`) may only log in
//!   from a loopback address.
//!
//! # Layout
//! - [`AuthStore`]: the user database behind one lock, cheap to clone via `Arc`.
//! - [`PasswordHash`]: the stored hash and its verification.
//! - [`Permission`]: one vhost's three regexes.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine as _;
use parking_lot::RwLock;
use regex::Regex;
use sha2::{Digest, Sha256};

/// Why a login or a management call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password; the two are not told apart on purpose.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The user is restricted to loopback connections and connected from elsewhere.
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
    /// The named user does not exist.
    #[error("no such user: '{0}'")]
    NoSuchUser(String),
    /// A permission pattern is not a valid regular expression.
    #[error("invalid permission pattern '{pattern}': {reason}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// The regex engine's message.
        reason: String,
    },
    /// A stored password hash could not be decoded.
    #[error("invalid password hash")]
    BadHash,
}

/// Which of a permission's three patterns an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare or delete a resource.
    Configure,
    /// Publish to an exchange, bind a queue (write on the queue).
    Write,
    /// Consume from a queue, bind from an exchange (read on the exchange).
    Read,
}

/// A stored password: RabbitMQ's salted SHA-256 scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(Vec<u8>);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

impl PasswordHash {
    /// Hash `password` with a fresh random 4-byte salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; 4] = rand::random();
        Self::with_salt(salt, password)
    }

    fn with_salt(salt: [u8; 4], password: &str) -> Self {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password.as_bytes());
        let mut out = salt.to_vec();
        out.extend_from_slice(&h.finalize());
        Self(out)
    }

    /// Parse the base64 form used in RabbitMQ's definitions (`password_hash`).
    pub fn from_base64(s: &str) -> Result<Self, AuthError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| AuthError::BadHash)?;
        // An empty hash means "no password login" in RabbitMQ.
        if !raw.is_empty() && raw.len() != 4 + 32 {
            return Err(AuthError::BadHash);
        }
        Ok(Self(raw))
    }

    /// The base64 form used in RabbitMQ's definitions.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Whether `password` matches, in constant time over the digest.
    pub fn verify(&self, password: &str) -> bool {
        let Some(salt) = self.0.get(..4) else {
            return false;
        };
        let mut salt4 = [0u8; 4];
        salt4.copy_from_slice(salt);
        let candidate = Self::with_salt(salt4, password);
        candidate.0.len() == self.0.len()
            && candidate
                .0
                .iter()
                .zip(&self.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// One vhost's configure/write/read patterns for a user.
#[derive(Debug, Clone)]
pub struct Permission {
    /// Pattern for declare/delete.
    pub configure: String,
    /// Pattern for publish and bind-to.
    pub write: String,
    /// Pattern for consume, get and bind-from.
    pub read: String,
    compiled: [Regex; 3],
}

impl Permission {
    /// Compile three patterns; an invalid one is an error, not a silent
    /// deny. An empty pattern grants nothing, as RabbitMQ reads it as `^$`.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, AuthError> {
        let compile = |p: &str| {
            let p = if p.is_empty() { "^$" } else { p };
            Regex::new(p).map_err(|e| AuthError::BadPattern {
                pattern: p.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
            configure: configure.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
        })
    }

    /// Full access: `.*` for all three.
    pub fn all() -> Self {
        Self::new(".*", ".*", ".*").expect("static pattern")
    }

    /// Whether `resource` is allowed for `access` (unanchored match, as RabbitMQ).
    pub fn allows(&self, access: Access, resource: &str) -> bool {
        let re = match access {
            Access::Configure => &self.compiled[0],
            Access::Write => &self.compiled[1],
            Access::Read => &self.compiled[2],
        };
        re.is_match(resource)
    }
}

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Stored password hash.
    pub password_hash: PasswordHash,
    /// Tags such as `administrator`, `management`, `monitoring`.
    pub tags: Vec<String>,
    /// Permissions per vhost name.
    pub permissions: HashMap<String, Permission>,
}

/// Told about every change to a user (the server keeps users in its
/// store through this). Called after the change, with no lock held.
pub trait AuthObserver: Send + Sync + std::fmt::Debug {
    /// `name` now is `user` (its password hash, tags and permissions), or
    /// was deleted (`None`).
    fn user_changed(&self, name: &str, user: Option<&User>);
}

/// The user database.
#[derive(Debug)]
pub struct AuthStore {
    users: RwLock<HashMap<String, User>>,
    loopback_users: RwLock<Vec<String>>,
    observer: std::sync::OnceLock<std::sync::Arc<dyn AuthObserver>>,
}

impl Default for AuthStore {
    /// The out-of-the-box database: `guest`/`guest`, administrator, full
    /// access to `/`, loopback only.
    fn default() -> Self {
        let store = Self::empty();
        store.add_user("guest", "guest", vec!["administrator".into()]);
        store
            .set_permissions("guest", "/", Permission::all())
            .expect("guest exists");
        store.set_loopback_users(vec!["guest".into()]);
        store
    }
}

impl AuthStore {
    /// A database with no users at all.
    pub fn empty() -> Self {
        Self {
            users: RwLock::new(HashMap::new()),
            loopback_users: RwLock::new(Vec::new()),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Report every change from now on to `observer` (set once).
    pub fn set_observer(&self, observer: std::sync::Arc<dyn AuthObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Replace every user with `users` (as loaded from a store); not
    /// reported to the observer.
    pub fn replace_all(&self, users: Vec<User>) {
        *self.users.write() = users.into_iter().map(|u| (u.name.clone(), u)).collect();
    }

    fn changed(&self, name: &str) {
        if let Some(o) = self.observer.get() {
            let user = self.user(name);
            o.user_changed(name, user.as_ref());
        }
    }

    /// Replace the list of users that may log in from loopback only.
    pub fn set_loopback_users(&self, users: Vec<String>) {
        *self.loopback_users.write() = users;
    }

    /// Check a login. `peer` is the client's address.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), AuthError> {
        let users = self.users.read();
        let Some(u) = users.get(user) else {
            return Err(AuthError::InvalidCredentials);
        };
        if !u.password_hash.verify(password) {
            return Err(AuthError::InvalidCredentials);
        }
        self.check_origin(user, peer)
    }

    /// Whether `user` may log in from `peer` as far as `loopback_users`
    /// goes (for logins without a password to check: anonymous MQTT
    /// clients are `guest`).
    pub fn check_origin(&self, user: &str, peer: IpAddr) -> Result<(), AuthError> {
        if !is_loopback(peer) && self.loopback_users.read().iter().any(|l| l == user) {
            return Err(AuthError::LoopbackOnly(user.to_owned()));
        }
        Ok(())
    }

    /// Whether `user` may use `vhost` at all (has any permission entry there).
    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        self.users
            .read()
            .get(user)
            .is_some_and(|u| u.permissions.contains_key(vhost))
    }

    /// Whether `user` has `access` on `resource` in `vhost`. The default
    /// exchange is checked under RabbitMQ's name for it, `amq.default`.
    pub fn check(&self, user: &str, vhost: &str, access: Access, resource: &str) -> bool {
        let resource = if resource.is_empty() {
            "amq.default"
        } else {
            resource
        };
        self.users
            .read()
            .get(user)
            .and_then(|u| u.permissions.get(vhost))
            .is_some_and(|p| p.allows(access, resource))
    }

    /// Create or replace a user with a password.
    pub fn add_user(&self, name: &str, password: &str, tags: Vec<String>) {
        self.put_user(name, PasswordHash::new(password), tags);
    }

    /// Create or replace a user with an already hashed password, keeping
    /// its permissions if it existed.
    pub fn put_user(&self, name: &str, password_hash: PasswordHash, tags: Vec<String>) {
        {
            let mut users = self.users.write();
            let permissions = users
                .remove(name)
                .map(|u| u.permissions)
                .unwrap_or_default();
            users.insert(
                name.to_owned(),
                User {
                    name: name.to_owned(),
                    password_hash,
                    tags,
                    permissions,
                },
            );
        }
        self.changed(name);
    }

    /// Remove a user.
    pub fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        self.users
            .write()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
        self.changed(name);
        Ok(())
    }

    /// Change a user's password.
    pub fn change_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        {
            let mut users = self.users.write();
            let u = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            u.password_hash = PasswordHash::new(password);
        }
        self.changed(name);
        Ok(())
    }

    /// Replace a user's tags.
    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AuthError> {
        {
            let mut users = self.users.write();
            let u = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            u.tags = tags;
        }
        self.changed(name);
        Ok(())
    }

    /// Set a user's permissions in a vhost.
    pub fn set_permissions(
        &self,
        name: &str,
        vhost: &str,
        perm: Permission,
    ) -> Result<(), AuthError> {
        {
            let mut users = self.users.write();
            let u = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            u.permissions.insert(vhost.to_owned(), perm);
        }
        self.changed(name);
        Ok(())
    }

    /// Remove a user's permissions in a vhost.
    pub fn clear_permissions(&self, name: &str, vhost: &str) -> Result<(), AuthError> {
        {
            let mut users = self.users.write();
            let u = users
                .get_mut(name)
                .ok_or_else(|| AuthError::NoSuchUser(name.to_owned()))?;
            u.permissions.remove(vhost);
        }
        self.changed(name);
        Ok(())
    }

    /// Remove every user's permissions in a vhost (the vhost was deleted).
    pub fn clear_vhost(&self, vhost: &str) {
        let touched: Vec<String> = self
            .users
            .write()
            .values_mut()
            .filter_map(|u| u.permissions.remove(vhost).map(|_| u.name.clone()))
            .collect();
        for name in touched {
            self.changed(&name);
        }
    }

    /// A snapshot of all users, sorted by name.
    pub fn users(&self) -> Vec<User> {
        let mut v: Vec<User> = self.users.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One user, if it exists.
    pub fn user(&self, name: &str) -> Option<User> {
        self.users.read().get(name).cloned()
    }
}

/// Whether an address is loopback, counting IPv4-mapped IPv6 (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn guest_is_loopback_only() {
        let a = AuthStore::default();
        assert_eq!(a.authenticate("guest", "guest", LOCAL), Ok(()));
        assert_eq!(
            a.authenticate("guest", "guest", REMOTE),
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(a.authenticate("guest", "guest", mapped), Ok(()));
        assert_eq!(
            a.authenticate("guest", "nope", LOCAL),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn other_users_may_log_in_remotely() {
        let a = AuthStore::default();
        a.add_user("ops", "s3cret", vec![]);
        assert_eq!(a.authenticate("ops", "s3cret", REMOTE), Ok(()));
        assert!(!a.can_access_vhost("ops", "/"));
    }

    #[test]
    fn rabbitmq_hash_verifies() {
        // The worked example from RabbitMQ's password-hashing docs:
        // salt 908DC60A, password "test12".
        let doc = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
        let h = PasswordHash::with_salt([0x90, 0x8D, 0xC6, 0x0A], "test12");
        assert_eq!(h.to_base64(), doc);
        let round = PasswordHash::from_base64(doc).unwrap();
        assert!(round.verify("test12"));
        assert!(!round.verify("test13"));
        assert!(PasswordHash::from_base64("AAAA").is_err());
    }

    #[test]
    fn permissions_are_unanchored_regexes() {
        let a = AuthStore::default();
        a.add_user("svc", "pw", vec![]);
        a.set_permissions(
            "svc",
            "/",
            Permission::new("^svc-", "orders", "^$").unwrap(),
        )
        .unwrap();
        assert!(a.check("svc", "/", Access::Configure, "svc-queue"));
        assert!(!a.check("svc", "/", Access::Configure, "other"));
        assert!(a.check("svc", "/", Access::Write, "new-orders-x"));
        assert!(!a.check("svc", "/", Access::Read, "anything"));
        assert!(!a.check("svc", "other-vhost", Access::Write, "orders"));
        // The default exchange is checked as amq.default.
        a.set_permissions(
            "svc",
            "/",
            Permission::new("", "^amq\\.default$", "").unwrap(),
        )
        .unwrap();
        assert!(a.check("svc", "/", Access::Write, ""));
        // An empty pattern grants nothing (RabbitMQ reads it as ^$).
        assert!(!a.check("svc", "/", Access::Configure, "anything"));
        assert!(!a.check("svc", "/", Access::Read, "q"));
        assert!(Permission::new("(", ".*", ".*").is_err());
    }
}
