//! Arbitrary text as a chat template (as a model file may carry one), compiled and rendered
//! over a fixed conversation: a string or an error — never a panic or an endless render.
#![no_main]

use kiln::data::template::ChatTemplate;
use kiln::data::{Message, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|src: &str| {
    let Ok(t) = ChatTemplate::new(src, "fuzz") else { return };
    let msgs = [
        Message { role: Role::System, content: "be brief".into() },
        Message { role: Role::User, content: "hi {{ 1 }}".into() },
        Message { role: Role::Assistant, content: "hello".into() },
    ];
    let _ = t.render(&msgs, true, "<s>", "</s>");
    let _ = t.render(&msgs[1..2], false, "", "");
});
