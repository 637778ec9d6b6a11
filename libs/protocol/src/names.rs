//! The rule for the names users give things that become part of paths, model aliases
//! and metric labels (persona ids, collection names): one rule, one message. And how a
//! model name splits into a model and a persona alias.

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

/// `<model>:<persona>` split at its last `:`, except that a fine-tuned model's own
/// name (`ft:<base>:<suffix>:<job>`, four parts) is no alias.
pub fn split_model_alias(name: &str) -> (&str, Option<&str>) {
    let parts = name.split(':').count();
    let fine_tuned = name.starts_with("ft:");
    match name.rsplit_once(':') {
        Some((model, persona)) if !(fine_tuned && parts <= 4) => (model, Some(persona)),
        _ => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_split_at_the_last_colon_but_fine_tuned_names_are_whole() {
        assert_eq!(split_model_alias("smollm2"), ("smollm2", None));
        assert_eq!(
            split_model_alias("smollm2:jester"),
            ("smollm2", Some("jester"))
        );
        let ft = "ft:smollm2:pirate:ftjob-abc";
        assert_eq!(split_model_alias(ft), (ft, None));
        assert_eq!(
            split_model_alias("ft:smollm2::ftjob-abc"),
            ("ft:smollm2::ftjob-abc", None)
        );
        assert_eq!(
            split_model_alias("ft:smollm2:pirate:ftjob-abc:jester"),
            (ft, Some("jester"))
        );
    }
}
