//! containerd's rule for namespace, container and task identifiers.
//!
//! An identifier is 1 to 76 characters of ASCII letters and digits, where single `.`, `_` or `-`
//! may separate alphanumeric runs (containerd `pkg/identifiers`). The rule keeps ids usable as
//! single path components: no `/`, no `..`, no leading dot, nothing a shell or runc would choke on.

use std::fmt;

/// Longest identifier containerd accepts.
pub const MAX_LENGTH: usize = 76;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidIdentifier {
    /// The identifier is empty.
    Empty,
    /// The identifier is longer than [`MAX_LENGTH`].
    TooLong(usize),
    /// The identifier has a character or separator sequence outside the rule.
    Malformed(String),
}

impl fmt::Display for InvalidIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("identifier must not be empty"),
            Self::TooLong(len) => {
                write!(
                    f,
                    "identifier is {len} characters, longer than {MAX_LENGTH}"
                )
            }
            Self::Malformed(id) => write!(
                f,
                "identifier {id:?} must be letters and digits separated by single '.', '_' or '-'"
            ),
        }
    }
}

impl std::error::Error for InvalidIdentifier {}

/// Checks `id` against containerd's identifier rule.
pub fn validate(id: &str) -> Result<(), InvalidIdentifier> {
    if id.is_empty() {
        return Err(InvalidIdentifier::Empty);
    }
    if id.len() > MAX_LENGTH {
        return Err(InvalidIdentifier::TooLong(id.len()));
    }
    let mut previous_was_separator = true; // an id may not start with a separator
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            previous_was_separator = false;
        } else if matches!(c, '.' | '_' | '-') && !previous_was_separator {
            previous_was_separator = true;
        } else {
            return Err(InvalidIdentifier::Malformed(id.to_string()));
        }
    }
    if previous_was_separator {
        return Err(InvalidIdentifier::Malformed(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_style_ids() {
        for id in ["a", "t1", "my-container_1.2", "default", &"f".repeat(64)] {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_paths_traversal_and_odd_separators() {
        for id in [
            "../etc", "a/b", "..", ".", "-a", "a-", "a..b", "a b", "a\0b", "ä", "a--b", "/abs",
        ] {
            assert!(
                matches!(validate(id), Err(InvalidIdentifier::Malformed(_))),
                "{id:?}"
            );
        }
        assert_eq!(validate(""), Err(InvalidIdentifier::Empty));
        assert_eq!(
            validate(&"a".repeat(77)),
            Err(InvalidIdentifier::TooLong(77))
        );
    }
}
