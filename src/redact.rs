//! Keeps credentials out of logs.
//!
//! Targets and dial errors are printed in `tracing` events. A target may be a
//! URL with userinfo (`redis://:secret@host/`) or a connection string with a
//! password (`host=db password=secret`); both are masked before printing.

use std::fmt;

/// `value`'s `Debug` form with URL passwords and `password=` values masked.
pub(crate) fn redacted<T: fmt::Debug + ?Sized>(value: &T) -> String {
    redact(&format!("{value:?}"))
}

/// Masks URL userinfo passwords (`scheme://user:pass@`) and
/// `password=value` / `pass=value` / `pwd=value` pairs.
pub(crate) fn redact(text: &str) -> String {
    mask_key_values(&mask_userinfo(text))
}

fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority runs to the next '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn mask_key_values(text: &str) -> String {
    const KEYS: [&str; 4] = ["password=", "passwd=", "pass=", "pwd="];
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let key = KEYS.iter().find(|k| {
            lower[i..].starts_with(**k)
                && (i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric())
        });
        match key {
            Some(key) => {
                out.push_str(&text[i..i + key.len()]);
                out.push_str("***");
                i += key.len();
                while i < text.len() {
                    let b = text.as_bytes()[i];
                    if b.is_ascii_whitespace() || matches!(b, b'&' | b';' | b'"' | b'\'' | b',') {
                        break;
                    }
                    i += 1;
                }
            }
            None => {
                let ch = text[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URL passwords are masked, user names and hosts kept.
    #[test]
    fn masks_url_userinfo() {
        assert_eq!(
            redact("redis://admin:hunter2@127.0.0.1:6379/0"),
            "redis://admin:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("\"postgres://u:p%40ss@db/x\""),
            "\"postgres://u:***@db/x\""
        );
        assert_eq!(redact("http://127.0.0.1:80/a@b"), "http://127.0.0.1:80/a@b");
        assert_eq!(redact("tcp://user@host"), "tcp://user@host");
    }

    /// Connection-string passwords are masked.
    #[test]
    fn masks_key_value_passwords() {
        assert_eq!(
            redact("host=db user=app password=hunter2 port=5432"),
            "host=db user=app password=*** port=5432"
        );
        assert_eq!(redact("Password=x;Server=db"), "Password=***;Server=db");
        assert_eq!(redact("bypass=1"), "bypass=1");
    }
}
