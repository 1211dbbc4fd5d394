//! Verification: what a provider checks before it reads one byte of the body as JSON. Every signature and
//! token is compared in constant time against every configured secret (current and previous), so a rotation
//! needs no downtime and timing never tells which secret matched. The header helpers live here too, because a
//! delivery id travels in the headers beside the signature and is validated before anything trusts it.

use std::borrow::Cow;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Rejected;
use crate::model;

type HmacSha256 = Hmac<Sha256>;

/// Standard Webhooks: how far a timestamp may be from now.
const STANDARD_TOLERANCE_SECS: i64 = 5 * 60;

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The first of `names` present: forks such as Forgejo send their own header and their ancestor's.
pub(super) fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| header(headers, n))
}

/// The delivery id, if the forge sent one; one that is present but invalid is refused rather than dropped,
/// since it names the audit row.
pub(super) fn delivery(headers: &HeaderMap, names: &[&str]) -> Result<Option<String>, Rejected> {
    match first_header(headers, names) {
        Some(d) if model::is_valid_delivery_id(d) => Ok(Some(d.to_string())),
        Some(_) => Err(Rejected::Malformed(format!(
            "{} is not a valid delivery id",
            names[0]
        ))),
        None => Ok(None),
    }
}

/// The delivery id of a forge that always sends one: without it, replays could not be recognised.
pub(super) fn required_delivery(headers: &HeaderMap, names: &[&str]) -> Result<String, Rejected> {
    delivery(headers, names)?.ok_or_else(|| {
        Rejected::Malformed(format!(
            "missing delivery id header ({}); the forge always sends one",
            names.join(" or ")
        ))
    })
}

/// `sha256=<hex>`, GitHub's and Bitbucket's form: any other algorithm is refused, not downgraded to. Returns
/// the verified HMAC.
pub(super) fn check_sha256_prefixed(
    secrets: &[Vec<u8>],
    body: &[u8],
    sig: &str,
) -> Result<[u8; 32], Rejected> {
    let hex_sig = sig.strip_prefix("sha256=").ok_or(Rejected::BadSignature)?;
    check_hex(secrets, body, hex_sig)
}

/// A bare hex HMAC-SHA256 of the body (Gitea's and Forgejo's form); returns the verified HMAC.
pub(super) fn check_hex(secrets: &[Vec<u8>], body: &[u8], hex_sig: &str) -> Result<[u8; 32], Rejected> {
    let mut sig = [0u8; 32];
    if hex::decode_to_slice(hex_sig, &mut sig).is_err() {
        return Err(Rejected::BadSignature);
    }
    if verify_hmac_sha256(secrets.iter().map(Vec::as_slice), &[body], &sig) {
        Ok(sig)
    } else {
        Err(Rejected::BadSignature)
    }
}

/// A shared token sent as it is (GitLab's plain mode, a registry's bearer token): it proves the sender knows
/// the secret, and covers nothing of the body.
pub(super) fn check_token(secrets: &[Vec<u8>], token: &str) -> Result<(), Rejected> {
    let mut ok = false;
    // Every secret is compared, whatever the result, so timing does not say which one matched.
    for s in secrets {
        ok |= bool::from(token.as_bytes().ct_eq(s));
    }
    if ok {
        Ok(())
    } else {
        Err(Rejected::BadSignature)
    }
}

/// `parts` are fed to the MAC in order, so a signed text made of pieces (`id.timestamp.body`) is never
/// concatenated into a copy of the body.
fn verify_hmac_sha256<'a>(keys: impl IntoIterator<Item = &'a [u8]>, parts: &[&[u8]], sig: &[u8]) -> bool {
    if sig.len() != 32 {
        return false;
    }
    let mut ok = false;
    // Every key is tried, whatever the result, so timing does not say which one matched.
    for key in keys {
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            continue;
        };
        for p in parts {
            mac.update(p);
        }
        ok |= mac.verify_slice(sig).is_ok();
    }
    ok
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// `sha256=<hex>` over `body` with `secret`: what GitHub and Bitbucket send (used by the demo and tests).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// The key a Standard Webhooks secret stands for: `whsec_<base64>` decodes to its bytes; anything else
/// (including a `whsec_` secret that is not base64) is used as it is, borrowed rather than copied.
fn standard_key(secret: &[u8]) -> Cow<'_, [u8]> {
    match secret.strip_prefix(b"whsec_") {
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(key) => Cow::Owned(key),
            Err(_) => Cow::Borrowed(secret),
        },
        None => Cow::Borrowed(secret),
    }
}

/// `v1,<base64>`: a Standard Webhooks signature of `id.timestamp.body`.
pub fn sign_standard(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(
        &standard_key(secret),
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Verifies the Standard Webhooks headers: any `v1` signature in the list, made with any secret, within the
/// timestamp window. Returns the message id, which is the delivery id.
pub(super) fn verify_standard(
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<String, Rejected> {
    let sigs = header(headers, "webhook-signature").ok_or(Rejected::MissingSignature("webhook-signature"))?;
    let id = header(headers, "webhook-id")
        .ok_or_else(|| Rejected::Malformed("missing webhook-id header".into()))?;
    if !model::is_valid_delivery_id(id) {
        return Err(Rejected::Malformed("webhook-id is not a valid message id".into()));
    }
    let ts = header(headers, "webhook-timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| Rejected::Malformed("missing or non-numeric webhook-timestamp header".into()))?;
    let keys: Vec<Cow<'_, [u8]>> = secrets.iter().map(|s| standard_key(s)).collect();
    let ts_text = ts.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", body];
    let mut ok = false;
    // A sender may list several signatures (during its own key rotation); a bounded number are looked at.
    for entry in sigs.split(' ').filter(|e| !e.is_empty()).take(16) {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        ok |= verify_hmac_sha256(keys.iter().map(|k| k.as_ref()), &parts, &sig);
    }
    if !ok {
        return Err(Rejected::BadSignature);
    }
    // Checked after the signature, so an unsigned request learns nothing about the clock.
    if now_secs.abs_diff(ts) > STANDARD_TOLERANCE_SECS.unsigned_abs() {
        return Err(Rejected::Stale);
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::test_support::*;

    #[test]
    fn githubs_published_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        assert_eq!(
            sign_github(SECRET, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let hex_sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let mac = check_hex(&[SECRET.to_vec()], b"Hello, World!", hex_sig).expect("verifies");
        assert_eq!(
            hex::encode(mac),
            hex_sig,
            "the verified HMAC is what the replay memory keeps"
        );
        assert_eq!(
            check_hex(&[SECRET.to_vec()], b"Hello, World?", hex_sig),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn standard_webhooks_published_vector() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &format!("v1,bm90IHRoaXMgb25l {sig}")),
        ]);
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 + 299),
            Ok("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 + 301),
            Err(Rejected::Stale)
        );
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 - 301),
            Err(Rejected::Stale)
        );
        assert_eq!(
            verify_standard(
                &[b"whsec_AAAAAAAAAAAAAAAAAAAAAAAA".to_vec()],
                &h,
                body,
                1614265330
            ),
            Err(Rejected::BadSignature)
        );
    }
}
