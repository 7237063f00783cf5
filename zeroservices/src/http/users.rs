//! [`Users`]: the Basic auth users of a users file (`ZS_BASIC_AUTH_FILE`), each with an Argon2
//! PHC hash and optional roles, and a small cache of verified passwords.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

use crate::access::User;
use crate::{Error, Result};

/// How many verified (user, password) pairs the cache keeps; when full it starts over.
const CACHE_ENTRIES: usize = 1024;

/// One user of the file.
struct Entry {
    /// The PHC string, `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    hash: String,
    roles: Vec<String>,
}

/// The users of a users file: `user:$argon2id$...` per line, optionally followed by
/// `:role1,role2`; `#` comments and blank lines are ignored.
///
/// ```text
/// # user:PHC hash[:roles]
/// ann:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$...:admin,ops
/// bob:$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$...
/// ```
///
/// Hashes come from `zeroservices hash-password` (or any Argon2 tool writing PHC strings).
/// Checking a password is slow by design (tens of milliseconds); the HTTP layer does it off the
/// async runtime and remembers the pairs it verified (at most 1024, keyed by a salted SHA-256
/// of user and password that lives only in memory) so a client sending the same credentials on
/// every request pays for Argon2 once.
pub struct Users {
    /// The users, replaced whole by [`Users::reload`].
    users: RwLock<Arc<HashMap<String, Entry>>>,
    /// The file they were read from, if any (what [`Users::reload`] reads again).
    source: Option<PathBuf>,
    /// A hash of a random password, checked for unknown users: a wrong user name takes as long
    /// as a wrong password, so timing does not tell which user names exist.
    dummy: String,
    /// The per-process salt of the cache keys.
    salt: [u8; 16],
    /// Digests of (user, password) pairs verified already.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Argon2 checks running at once, at most one per core: each takes 19 MiB and a core for
    /// tens of milliseconds, so a flood of wrong passwords queues instead of exhausting memory.
    checks: tokio::sync::Semaphore,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users = self.current();
        let mut names: Vec<&String> = users.keys().collect();
        names.sort();
        f.debug_struct("Users").field("users", &names).finish()
    }
}

impl Users {
    /// Reads a users file; an error names the file and the line of a malformed entry.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::bad_request(format!("cannot read users file {}: {e}", path.display()))
        })?;
        let mut users = Self::parse(&text, &path.display().to_string())?;
        users.source = Some(path.to_owned());
        Ok(users)
    }

    /// Reads the users file again (the one [`Users::load`] read) and replaces the users with
    /// its: added users can log in, removed ones and changed passwords stop working at once
    /// (the cache of verified passwords is emptied). A file that cannot be read or has a
    /// malformed line changes nothing (the error names it). Users made by [`Users::parse`]
    /// have no file: reloading them changes nothing.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.source else {
            return Ok(self.len());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::bad_request(format!("cannot read users file {}: {e}", path.display()))
        })?;
        let users = parse_entries(&text, &path.display().to_string())?;
        let count = users.len();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        lock(&self.verified).clear();
        Ok(count)
    }

    /// The file the users were read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    fn current(&self) -> Arc<HashMap<String, Entry>> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Parses the text of a users file; `source` names it in errors (`users.txt line 3: ...`).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let users = parse_entries(text, source)?;
        let mut salt = [0u8; 16];
        salt.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let dummy = hash_password(&uuid::Uuid::new_v4().to_string())?;
        Ok(Self {
            users: RwLock::new(Arc::new(users)),
            source: None,
            dummy,
            salt,
            verified: Mutex::new(HashSet::new()),
            checks: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16)),
            ),
        })
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether the file has no user.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.current().contains_key(user)
    }

    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// The user, with its roles, when `password` is theirs. Blocking (Argon2) unless the pair
    /// was verified before: call it off the async runtime.
    pub fn verify(&self, user: &str, password: &str) -> Option<User> {
        let users = self.current();
        let Some(entry) = users.get(user) else {
            // As long as for a known user.
            if let Ok(hash) = PasswordHash::new(&self.dummy) {
                let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
            }
            return None;
        };
        let found = || User::new(user).roles(entry.roles.iter().cloned());
        let key = self.key(user, password);
        if lock(&self.verified).contains(&key) {
            return Some(found());
        }
        let hash = PasswordHash::new(&entry.hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        let mut verified = lock(&self.verified);
        if verified.len() >= CACHE_ENTRIES {
            verified.clear();
        }
        verified.insert(key);
        Some(found())
    }

    /// [`Users::verify`] on the blocking pool, a bounded number at once; a pair verified before
    /// is answered at once.
    pub(crate) async fn verify_async(
        self: &Arc<Self>,
        user: String,
        password: String,
    ) -> Result<Option<User>> {
        if let Some(found) = self.cached(&user, &password) {
            return Ok(Some(found));
        }
        let _permit = self
            .checks
            .acquire()
            .await
            .map_err(|_| Error::internal("password checks closed"))?;
        let users = self.clone();
        tokio::task::spawn_blocking(move || users.verify(&user, &password))
            .await
            .map_err(|e| Error::internal(format!("password check failed: {e}")))
    }

    /// Whether `user:password` was verified before (no Argon2: cheap).
    pub(crate) fn cached(&self, user: &str, password: &str) -> Option<User> {
        let users = self.current();
        let entry = users.get(user)?;
        lock(&self.verified)
            .contains(&self.key(user, password))
            .then(|| User::new(user).roles(entry.roles.iter().cloned()))
    }
}

/// The entries of a users file's text; `source` names it in errors.
fn parse_entries(text: &str, source: &str) -> Result<HashMap<String, Entry>> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| Error::bad_request(format!("{source} line {}: {what}", n + 1));
        let (user, rest) = line
            .split_once(':')
            .ok_or_else(|| bad("expected `user:$argon2id$...[:role,...]`"))?;
        if user.is_empty() {
            return Err(bad("the user name is empty"));
        }
        let (hash, roles) = rest.split_once(':').unwrap_or((rest, ""));
        PasswordHash::new(hash)
            .ok()
            .filter(|h| h.algorithm.as_str().starts_with("argon2"))
            .ok_or_else(|| {
                bad("not an Argon2 PHC hash (make one with `zeroservices hash-password`)")
            })?;
        let roles = roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        let entry = Entry {
            hash: hash.to_owned(),
            roles,
        };
        if users.insert(user.to_owned(), entry).is_some() {
            return Err(bad(&format!("user {user} appears twice")));
        }
    }
    Ok(users)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An Argon2id PHC hash of `password` with a random salt and the crate's default parameters,
/// for a users file.
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("cannot hash the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_users_of_a_file() {
        let ann = hash_password("ann-pw").unwrap();
        let bob = hash_password("bob-pw").unwrap();
        assert!(ann.starts_with("$argon2id$"));
        let text = format!("# users\n\nann:{ann}:admin, ops\n  bob:{bob}\n");
        let users = Users::parse(&text, "users.txt").unwrap();
        assert_eq!(users.len(), 2);
        let found = users.verify("ann", "ann-pw").unwrap();
        assert_eq!(found, User::new("ann").roles(["admin", "ops"]));
        assert_eq!(users.cached("ann", "ann-pw"), Some(found));
        assert_eq!(users.verify("bob", "bob-pw"), Some(User::new("bob")));
        assert_eq!(users.verify("bob", "ann-pw"), None);
        assert_eq!(users.cached("bob", "ann-pw"), None);
        assert_eq!(users.verify("eve", "x"), None);
        assert!(!format!("{users:?}").contains("argon2"));
    }

    #[test]
    fn a_malformed_line_is_named() {
        let ann = hash_password("pw").unwrap();
        for (text, line) in [
            (format!("ann:{ann}\nbob\n"), 2),
            ("# c\nann:plaintext\n".to_owned(), 2),
            (format!(":{ann}"), 1),
            (format!("ann:{ann}\n\nann:{ann}"), 3),
            ("ann:$2b$10$abcdefghijklmnopqrstuv".to_owned(), 1),
        ] {
            let err = Users::parse(&text, "users.txt").unwrap_err().to_string();
            assert!(err.contains(&format!("users.txt line {line}:")), "{err}");
        }
    }
}
