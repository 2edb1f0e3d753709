//! Compile-time checks the code of `#[mq_listener]` calls, re-exported via `__private`.
//!
//! The proc-macro crate cannot depend on `mq-core` (a proc-macro crate only exports macros, and
//! the words belong to `mq-core`'s enums), so it knows no word list. It emits, spanned at the
//! user's token, calls of these `const fn`s in constants and statics, which rustc evaluates
//! while compiling the user's crate: a bad word or a forbidden pair panics there, and the
//! panic is reported as a compile error at that token with the message below. The words and
//! the rule stay in `mq_core::subscription`, used by the runtime as well.

use mq_core::subscription::{check_model_and_mode as rule, ConsumeMode, MessageModel};

const MODEL_PREFIX: &str = "`model` must be one of: ";
const MODE_PREFIX: &str = "`mode` must be one of: ";

/// Bytes of "`model` must be one of: clustering, broadcasting", joined at compile time.
const MODEL_BYTES: [u8; joined_len(MODEL_PREFIX, &MessageModel::WORDS)] =
    joined(MODEL_PREFIX, &MessageModel::WORDS);
const MODE_BYTES: [u8; joined_len(MODE_PREFIX, &ConsumeMode::WORDS)] =
    joined(MODE_PREFIX, &ConsumeMode::WORDS);
const MODEL_EXPECTED: &str = text(&MODEL_BYTES);
const MODE_EXPECTED: &str = text(&MODE_BYTES);

/// The message model `word` names; a compile error at the caller when it names none.
#[track_caller]
pub const fn model(word: &str) -> MessageModel {
    match MessageModel::from_word(word) {
        Some(m) => m,
        None => panic!("{}", MODEL_EXPECTED),
    }
}

/// The consume mode `word` names; a compile error at the caller when it names none.
#[track_caller]
pub const fn mode(word: &str) -> ConsumeMode {
    match ConsumeMode::from_word(word) {
        Some(m) => m,
        None => panic!("{}", MODE_EXPECTED),
    }
}

/// The message model `word` names, for the registration's static. Never a compile error: the
/// macro checks the word with [`model`] in a constant of its own, because an error inside the
/// static would be reported a second time, in `inventory`'s terms, where the static uses it.
pub const fn model_or_default(word: &str) -> MessageModel {
    match MessageModel::from_word(word) {
        Some(m) => m,
        None => MessageModel::Clustering,
    }
}

/// The consume mode `word` names, for the registration's static (see [`model_or_default`]).
pub const fn mode_or_default(word: &str) -> ConsumeMode {
    match ConsumeMode::from_word(word) {
        Some(m) => m,
        None => ConsumeMode::Concurrently,
    }
}

/// A compile error at the caller when the model and mode written (`None`: the default) may
/// not be combined. An unknown word passes: [`model`] or [`mode`] reports it, once.
#[track_caller]
pub const fn check_model_and_mode(model: Option<&str>, mode: Option<&str>) {
    // `None`: the enums' `#[default]`s (`Default::default` is not a `const fn`).
    let model = match model {
        Some(w) => MessageModel::from_word(w),
        None => Some(MessageModel::Clustering),
    };
    let mode = match mode {
        Some(w) => ConsumeMode::from_word(w),
        None => Some(ConsumeMode::Concurrently),
    };
    if let (Some(model), Some(mode)) = (model, mode) {
        if let Err(reason) = rule(model, mode) {
            panic!("{}", reason);
        }
    }
}

/// Length of `prefix` followed by `words` separated by ", ".
const fn joined_len(prefix: &str, words: &[&str]) -> usize {
    let mut len = prefix.len();
    let mut i = 0;
    while i < words.len() {
        if i > 0 {
            len += 2;
        }
        len += words[i].len();
        i += 1;
    }
    len
}

/// `prefix` followed by `words` separated by ", " (`N` from [`joined_len`]).
const fn joined<const N: usize>(prefix: &str, words: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    at = copy(&mut out, at, prefix.as_bytes());
    let mut i = 0;
    while i < words.len() {
        if i > 0 {
            at = copy(&mut out, at, b", ");
        }
        at = copy(&mut out, at, words[i].as_bytes());
        i += 1;
    }
    out
}

const fn copy<const N: usize>(out: &mut [u8; N], mut at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        out[at] = bytes[i];
        at += 1;
        i += 1;
    }
    at
}

/// Joined `&str`s are UTF-8; evaluated at compile time, so a mistake here fails the build.
const fn text(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("joined words are not UTF-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_list_the_words_of_mq_core() {
        assert_eq!(
            MODEL_EXPECTED,
            "`model` must be one of: clustering, broadcasting"
        );
        assert_eq!(
            MODE_EXPECTED,
            "`mode` must be one of: concurrently, orderly"
        );
    }

    #[test]
    fn known_words_and_allowed_pairs_pass() {
        assert_eq!(model("broadcasting"), MessageModel::Broadcasting);
        assert_eq!(mode("orderly"), ConsumeMode::Orderly);
        assert_eq!(model_or_default("broadcasting"), MessageModel::Broadcasting);
        assert_eq!(mode_or_default("orderly"), ConsumeMode::Orderly);
        check_model_and_mode(Some("broadcasting"), None);
        check_model_and_mode(None, Some("orderly"));
        check_model_and_mode(Some("sideways"), Some("orderly"));
    }

    #[test]
    #[should_panic(expected = "orderly consumption cannot be combined with broadcasting")]
    fn orderly_broadcasting_fails() {
        check_model_and_mode(Some("broadcasting"), Some("orderly"));
    }
}
