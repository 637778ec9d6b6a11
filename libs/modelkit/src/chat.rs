//! Chat prompts rendered from the model's own Jinja chat template (the one in the GGUF
//! or `tokenizer_config.json`), with `minijinja` and Python string methods
//! (`.strip()`, `.startswith()`, ...) as Hugging Face templates expect.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template's syntax; minijinja names the line.
    #[error("the chat template does not compile: {0:#}")]
    Compile(Error),
    /// Rendering failed, or the template itself raised an error (e.g. roles that do not
    /// alternate).
    #[error("the chat template refused the conversation: {0:#}")]
    Render(Error),
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are what the template sees under
    /// those names.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(ChatTemplateError::Compile)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the
    /// assistant's answer begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(ChatTemplateError::Render)?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(ChatTemplateError::Render)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_default_system_message() {
        let template = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let prompt = template
            .render(&[ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = template
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                ],
                false,
            )
            .unwrap();
        assert!(with_system.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        assert!(!with_system.contains("Default"));
    }

    #[test]
    fn python_methods_and_raised_errors_work() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ messages[0].content.strip() }}";
        let template = ChatTemplate::new(source, "", "").unwrap();
        assert_eq!(
            template
                .render(&[ChatMessage::new("user", "  hi  ")], false)
                .unwrap(),
            "hi"
        );
        let err = template
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("first message must be from the user"),
            "{err}"
        );
        assert!(
            ChatTemplate::new("{% for %}", "", "")
                .unwrap_err()
                .to_string()
                .contains("does not compile")
        );
    }
}
