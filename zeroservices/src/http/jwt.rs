//! [`JwtAuth`]: bearer tokens (`Authorization: Bearer <JWT>`) signed with a shared secret
//! (HS256, `ZS_JWT_SECRET`) or a key pair (RS256 or EdDSA, `ZS_JWT_PUBLIC_KEY`).

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::access::User;
use crate::{Error, Result};

/// The claims a token must carry: `sub` (the user), `exp` (checked, 60 s of leeway), and
/// optionally `roles` (an array of strings).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// How bearer tokens are verified: the keys accepted, each with its algorithm.
///
/// A token must name one of these algorithms in its header, be signed with the key, carry `sub`
/// and an `exp` in the future (60 s of leeway for clock skew); `roles`, an array of strings, is
/// optional. Anything else is a 401.
#[derive(Clone)]
pub struct JwtAuth {
    keys: Arc<Vec<(Algorithm, DecodingKey)>>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|(a, _)| *a).collect();
        f.debug_struct("JwtAuth")
            .field("algorithms", &algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// HS256 tokens signed with `secret` (at least 32 bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self> {
        if secret.len() < 32 {
            return Err(Error::bad_request(
                "a JWT secret of at least 32 bytes (256 bits)",
            ));
        }
        Self::hs256_unchecked(secret)
    }

    /// [`JwtAuth::hs256`] without the length check (a setting warns instead of failing, so
    /// that its error never prints the secret).
    pub(crate) fn hs256_unchecked(secret: &[u8]) -> Result<Self> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|_| Error::bad_request("a JWT secret must not be empty"))?;
        Ok(Self {
            keys: Arc::new(vec![(Algorithm::HS256, key)]),
        })
    }

    /// Tokens signed with the private key of this PEM public key: RS256 for an RSA key, EdDSA
    /// for an Ed25519 key.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self> {
        let key = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else {
            return Err(Error::bad_request(
                "a PEM public key (RSA or Ed25519), `-----BEGIN PUBLIC KEY-----`",
            ));
        };
        Ok(Self {
            keys: Arc::new(vec![key]),
        })
    }

    /// These keys and `other`'s: a token verified by either is accepted.
    pub fn and(self, other: JwtAuth) -> Self {
        let mut keys = Vec::clone(&self.keys);
        keys.extend(other.keys.iter().cloned());
        Self {
            keys: Arc::new(keys),
        }
    }

    /// The user of a valid token; an error says what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<User> {
        let invalid =
            |what: &dyn fmt::Display| Error::bad_request(format!("invalid token: {what}"));
        let header = decode_header(token).map_err(|e| invalid(&e))?;
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(invalid(&format!("algorithm {:?} not accepted", header.alg)));
        };
        let mut validation = Validation::new(*alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, key, &validation).map_err(|e| invalid(&e))?;
        Ok(User::new(data.claims.sub).roles(data.claims.roles))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    // Key pairs made for these tests only (`openssl genpkey`), nowhere else in use.
    const ED_PRIVATE: &str = include_str!("../../tests/keys/ed25519-test-only.pem");
    const ED_PUBLIC: &str = include_str!("../../tests/keys/ed25519-test-only.pub");
    const RSA_PRIVATE: &str = include_str!("../../tests/keys/rsa-test-only.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/keys/rsa-test-only.pub");

    fn exp(from_now: i64) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now + from_now
    }

    fn sign(alg: Algorithm, key: &EncodingKey, exp: i64) -> String {
        let claims = json!({"sub": "ann", "roles": ["admin"], "exp": exp});
        encode(&Header::new(alg), &claims, key).unwrap()
    }

    #[test]
    fn eddsa_and_rs256_tokens() {
        let ed = JwtAuth::public_key_pem(ED_PUBLIC.as_bytes()).unwrap();
        let rsa = JwtAuth::public_key_pem(RSA_PUBLIC.as_bytes()).unwrap();
        let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let ann = User::new("ann").roles(["admin"]);
        let ed_token = sign(Algorithm::EdDSA, &ed_key, exp(600));
        let rsa_token = sign(Algorithm::RS256, &rsa_key, exp(600));
        assert_eq!(ed.verify(&ed_token).unwrap(), ann);
        assert_eq!(rsa.verify(&rsa_token).unwrap(), ann);
        // Each key accepts its own algorithm only; both together accept both.
        assert!(ed.verify(&rsa_token).is_err());
        assert!(rsa.verify(&ed_token).is_err());
        let both = ed.and(rsa);
        assert!(both.verify(&ed_token).is_ok() && both.verify(&rsa_token).is_ok());
        // Expired (beyond the leeway).
        let expired = sign(Algorithm::EdDSA, &ed_key, exp(-3600));
        assert!(both.verify(&expired).is_err());
        // HS256 signed with the public key's bytes (algorithm confusion) is refused.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
            exp(600),
        );
        assert!(both.verify(&confused).is_err());
        assert!(JwtAuth::public_key_pem(b"-----BEGIN PUBLIC KEY-----\nnope").is_err());
    }

    #[test]
    fn hs256_secrets_are_long_enough() {
        assert!(JwtAuth::hs256(b"short").is_err());
        assert!(JwtAuth::hs256(&[7; 32]).is_ok());
    }
}
