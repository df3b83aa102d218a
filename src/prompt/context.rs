//! Conversation context in the user slot: the turns before the judged one, each marked with
//! who said it, so ShieldGemma judges the last user turn (or the answer to it) in the light of
//! what came before.
//!
//! The form (docs/context.md shows it):
//!
//! ```text
//! The conversation so far:
//! User: <earlier user turn>
//! Chatbot: <earlier answer>
//!
//! The latest user message:
//! <the user turn being judged, or answered>
//! ```
//!
//! Without context the slot holds the user turn alone, byte for byte as before.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Who spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user.
    User,
    /// The assistant (the chatbot, in the templates' words).
    Assistant,
}

impl Role {
    /// The mark the context gives the role.
    fn mark(self) -> &'static str {
        match self {
            Role::User => "User: ",
            Role::Assistant => "Chatbot: ",
        }
    }
}

/// One earlier turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContextTurn {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
}

impl ContextTurn {
    /// A turn of `role`.
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
        }
    }
}

const OPENING: &str = "The conversation so far:\n";
const LATEST: &str = "\nThe latest user message:\n";

/// The user slot's text: `user` alone without context, else the context then `user`.
pub fn user_slot<'a>(context: &[ContextTurn], user: &'a str) -> Cow<'a, str> {
    if context.is_empty() {
        return Cow::Borrowed(user);
    }
    let mut slot = String::from(OPENING);
    for turn in context {
        slot.push_str(turn.role.mark());
        slot.push_str(&turn.text);
        slot.push('\n');
    }
    slot.push_str(LATEST);
    slot.push_str(user);
    Cow::Owned(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_context_the_slot_is_the_user_turn() {
        assert!(matches!(user_slot(&[], "hi"), Cow::Borrowed("hi")));
    }

    #[test]
    fn each_turn_is_marked_with_its_role() {
        let context = [
            ContextTurn::new(Role::User, "Remember the chemical?"),
            ContextTurn::new(Role::Assistant, "Yes.\nIt is X."),
        ];
        assert_eq!(
            user_slot(&context, "Now the quantities."),
            "The conversation so far:\nUser: Remember the chemical?\nChatbot: Yes.\nIt is X.\n\n\
             The latest user message:\nNow the quantities."
        );
    }
}
