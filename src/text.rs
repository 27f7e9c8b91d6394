//! Equality of short texts for the hot paths: field names, `absent` markers and dictionary
//! values are a few bytes, compared in place instead of with a call to `memcmp` each.

use std::hash::{Hash, Hasher};

/// Whether two texts are equal. Texts of a few bytes (field names, `absent` markers, host names)
/// are compared in place, a word at a time, without a call to `memcmp`.
#[inline]
pub fn same_text(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// [`same_text`] for bytes (keys made of several values).
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        // Two loads that may overlap cover the whole text.
        8.. => {
            (0..n - 8).step_by(8).all(|at| word(a, at) == word(b, at))
                && word(a, n - 8) == word(b, n - 8)
        }
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a.iter().zip(b).all(|(x, y)| x == y),
    }
}

/// A text as a hash-map key, or as what is looked up in a map keyed by `String` or
/// `CompactString`: hashed as `str` is, compared with [`same_text`].
#[derive(Clone, Copy, Debug)]
pub struct ShortStr<'a>(pub &'a str);

impl Hash for ShortStr<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for ShortStr<'_> {
    fn eq(&self, other: &Self) -> bool {
        same_text(self.0, other.0)
    }
}

impl Eq for ShortStr<'_> {}

impl hashbrown::Equivalent<String> for ShortStr<'_> {
    fn equivalent(&self, key: &String) -> bool {
        same_text(key, self.0)
    }
}

impl hashbrown::Equivalent<compact_str::CompactString> for ShortStr<'_> {
    fn equivalent(&self, key: &compact_str::CompactString) -> bool {
        same_text(key, self.0)
    }
}

/// Bytes looked up in a map keyed by `Box<[u8]>`: hashed as `[u8]` is, compared with
/// [`same_bytes`].
#[derive(Clone, Copy, Debug)]
pub struct ShortBytes<'a>(pub &'a [u8]);

impl Hash for ShortBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl hashbrown::Equivalent<Box<[u8]>> for ShortBytes<'_> {
    fn equivalent(&self, key: &Box<[u8]>) -> bool {
        same_bytes(key, self.0)
    }
}

impl From<&ShortBytes<'_>> for Box<[u8]> {
    fn from(bytes: &ShortBytes<'_>) -> Box<[u8]> {
        Box::from(bytes.0)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn texts_compare_as_strings() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "reqPath",
            "reqTimeS",
            "reqTimeSec",
            "tlsOverheadTimeMSec",
            "www.example.com/a/very/long/host/and/path",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same_text(a, b), a == b, "{a:?} {b:?}");
                let mut changed = b.to_string().into_bytes();
                for i in 0..changed.len() {
                    changed[i] ^= 1;
                    let changed_text = std::str::from_utf8(&changed).unwrap();
                    assert_eq!(same_text(a, changed_text), a == changed_text);
                    changed[i] ^= 1;
                }
            }
        }
    }

    #[test]
    fn short_texts_hash_as_what_they_look_up() {
        let hasher = hashbrown::DefaultHashBuilder::default();
        for text in ["", "x", "reqTimeSec", "tlsOverheadTimeMSec"] {
            let hash = hasher.hash_one(ShortStr(text));
            assert_eq!(hash, hasher.hash_one(text.to_string()));
            assert_eq!(
                hash,
                hasher.hash_one(compact_str::CompactString::from(text))
            );
            assert_eq!(
                hasher.hash_one(ShortBytes(text.as_bytes())),
                hasher.hash_one(Box::<[u8]>::from(text.as_bytes()))
            );
        }
    }
}
