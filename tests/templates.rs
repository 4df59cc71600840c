//! Chat templates and tokenization against transformers' `apply_chat_template` (fixtures from
//! tools/make_template_fixtures.py): rendered text and token ids equal, token for token, for
//! kiln's built-ins and real-world templates; and the assistant-only loss mask.

use std::path::PathBuf;

use kiln::data::render::Renderer;
use kiln::data::template::ChatTemplate;
use kiln::data::tokenizer::TextTokenizer;
use kiln::data::{Example, Message, Role};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                _ => Role::Assistant,
            },
            content: m["content"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[test]
fn templates_match_transformers_token_for_token() {
    let tok = TextTokenizer::load(&dir()).unwrap();
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("templates.json")).unwrap()).unwrap();
    let (bos, eos) = (tok.bos.clone().unwrap().text, tok.eos.clone().unwrap().text);
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let t = ChatTemplate::new(fx["templates"][name].as_str().unwrap(), name).unwrap();
        let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages(&case["messages"]), gen_prompt, &bos, &eos);
        if let Some(err) = case["error"].as_str() {
            let e = got.expect_err(name).to_string();
            assert!(e.contains(err), "{name}: kiln error `{e}` lacks transformers' `{err}`");
            continue;
        }
        let text = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(text, case["text"].as_str().unwrap(), "{name} (generation prompt {gen_prompt}): rendered text");
        let ids: Vec<u64> = tok.encode(&text).unwrap().ids.iter().map(|&i| i as u64).collect();
        let want: Vec<u64> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect();
        assert_eq!(ids, want, "{name} (generation prompt {gen_prompt}): token ids");
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} cases compared");
}

#[test]
fn builtin_templates_are_the_fixture_ones() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("templates.json")).unwrap()).unwrap();
    for (name, src) in kiln::data::template::BUILTIN {
        assert_eq!(fx["templates"][name].as_str(), Some(src), "{name}: regenerate the fixtures");
        ChatTemplate::builtin(name).unwrap();
    }
    let e = ChatTemplate::builtin("nope").err().expect("unknown template is an error").to_string();
    assert!(e.contains("chatml, llama3, mistral, alpaca"), "{e}");
}

#[test]
fn model_template_comes_from_the_tokenizer_folder() {
    let tok = TextTokenizer::load(&dir()).unwrap();
    assert!(tok.chat_template.as_deref().unwrap().contains("SmolLM"));
    assert_eq!(tok.eos.as_ref().unwrap().text, "<|im_end|>");
}

fn renderer(template: &str, train_on_inputs: bool) -> Renderer {
    Renderer {
        tokenizer: TextTokenizer::load(&dir()).unwrap(),
        template: Some(ChatTemplate::builtin(template).unwrap()),
        train_on_inputs,
    }
}

/// The text of the trained tokens, run by run.
fn trained_runs(r: &Renderer, t: &kiln::data::render::Tokenized) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (&id, &m) in t.ids.iter().zip(&t.mask) {
        if m {
            cur.push(id as u32);
        } else if !cur.is_empty() {
            runs.push(r.tokenizer.decode(&std::mem::take(&mut cur)).unwrap());
        }
    }
    if !cur.is_empty() {
        runs.push(r.tokenizer.decode(&cur).unwrap());
    }
    runs
}

#[test]
fn only_assistant_turns_are_trained_by_default() {
    let turns = vec![
        Message { role: Role::System, content: "You are a potter.".into() },
        Message { role: Role::User, content: "Why cool slowly?".into() },
        Message { role: Role::Assistant, content: "Quartz changes form.".into() },
        Message { role: Role::User, content: "And glaze?".into() },
        Message { role: Role::Assistant, content: "Silica and flux.".into() },
    ];
    for (tpl, end) in [("chatml", "<|im_end|>\n"), ("llama3", "<|eot_id|>")] {
        let r = renderer(tpl, false);
        let t = r.tokenize(&Example::Chat(turns.clone())).unwrap();
        assert_eq!(t.ids.len(), t.mask.len());
        assert_eq!(
            trained_runs(&r, &t),
            vec![format!("Quartz changes form.{end}"), format!("Silica and flux.{end}")],
            "{tpl}"
        );
        let all = renderer(tpl, true).tokenize(&Example::Chat(turns.clone())).unwrap();
        assert!(all.mask.iter().all(|&m| m) && all.ids == t.ids);
    }
}

#[test]
fn prompt_completion_and_text_masks() {
    let r = renderer("alpaca", false);
    let t = r
        .tokenize(&Example::PromptCompletion { prompt: "Name a flux.".into(), completion: "Feldspar".into() })
        .unwrap();
    assert_eq!(trained_runs(&r, &t), vec!["Feldspar<|im_end|>\n\n".to_string()]);
    // Without a template: prompt then completion, completion and EOS trained.
    let plain = Renderer { tokenizer: TextTokenizer::load(&dir()).unwrap(), template: None, train_on_inputs: false };
    let t = plain
        .tokenize(&Example::PromptCompletion { prompt: "Name a flux:".into(), completion: " whiting".into() })
        .unwrap();
    assert_eq!(trained_runs(&plain, &t), vec![" whiting<|im_end|>".to_string()]);
    // A token straddling the boundary belongs to the side of its first byte (as TRL's prefix
    // rule gives): " wh" starts in the prompt here, so only "iting" is trained.
    let t = plain
        .tokenize(&Example::PromptCompletion { prompt: "Name a flux: ".into(), completion: "whiting".into() })
        .unwrap();
    assert_eq!(trained_runs(&plain, &t), vec!["iting<|im_end|>".to_string()]);
    let t = plain.tokenize(&Example::Text("kiln".into())).unwrap();
    assert!(t.mask.iter().all(|&m| m));
    assert_eq!(plain.tokenizer.decode(&t.ids.iter().map(|&i| i as u32).collect::<Vec<_>>()).unwrap(), "kiln<|im_end|>");
    let e = plain.tokenize(&Example::Chat(vec![])).unwrap_err().to_string();
    assert!(e.contains("--template"), "{e}");
}

#[test]
fn a_template_writing_far_more_than_its_messages_is_stopped() {
    let msgs = [Message { role: Role::User, content: "hi".into() }];
    for (src, what) in [
        // 100 MB from a 21-byte template.
        ("{{ 'x' * 100000000 }}", "one repeat"),
        // Many small writes add up as well.
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "a loop"),
    ] {
        let t = ChatTemplate::new(src, "bomb.jinja").unwrap();
        let e = t.render(&msgs, true, "", "").unwrap_err().to_string();
        assert!(e.contains("bomb.jinja") && e.contains("broken or hostile"), "{what}: {e}");
    }
    // A real template is untouched by the limit, including a long message.
    let long = "word ".repeat(200_000);
    let t = ChatTemplate::builtin("chatml").unwrap();
    let out = t.render(&[Message { role: Role::User, content: long.clone() }], true, "", "").unwrap();
    assert!(out.contains(&long));
}

#[test]
fn a_huge_row_is_cut_before_tokenizing_with_the_same_tokens_after_truncation() {
    use kiln::data::batch::{PackStats, truncate};
    let r = renderer("chatml", false);
    // 400 KB of text against a 64-token context: the row is cut at 4 KiB of text before the
    // tokenizer sees it, and the first 64 tokens are those of the whole row.
    let text: String = (0..40_000).map(|i| format!("kiln {i} ")).collect::<String>();
    for e in [
        Example::Text(text.clone()),
        Example::PromptCompletion { prompt: "Say it.".into(), completion: text.clone() },
        Example::Chat(vec![
            Message { role: Role::User, content: text.clone() },
            Message { role: Role::Assistant, content: "ok".into() },
        ]),
    ] {
        let cut = r.tokenize_within(&e, 64).unwrap();
        let whole = r.tokenize(&e).unwrap();
        assert!(cut.ids.len() < whole.ids.len() / 10, "{} vs {}", cut.ids.len(), whole.ids.len());
        let a = truncate(vec![cut], 64, &mut PackStats::default());
        let b = truncate(vec![whole], 64, &mut PackStats::default());
        assert_eq!(a, b);
    }
}
