//! The rule for the names users give things that become part of paths, model aliases
//! and metric labels (persona ids, collection names): one rule, one message.

use crate::ErrorBody;

/// The longest such name.
pub const MAX_NAME: usize = 64;

/// Checks that `value` is 1 to [`MAX_NAME`] lowercase letters, digits, `-` or `_`,
/// starting with a letter or digit; the error names `field`.
pub fn check_name(field: &str, value: &str) -> Result<(), ErrorBody> {
    let mut chars = value.chars();
    let valid = value.len() <= MAX_NAME
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ErrorBody::invalid(
            field,
            format!(
                "{field} must be 1 to {MAX_NAME} lowercase letters, digits, `-` or `_`, \
                 starting with a letter or digit, got {value:?}"
            ),
        ))
    }
}
