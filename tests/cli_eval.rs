//! `kiln eval`, `kiln score`, `kiln chat` and `kiln generate`'s sampling end to end on a small
//! random model with the fixture tokenizer, and `kiln train --eval-metrics`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn ok(o: &Output) -> String {
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{so}\n{se}");
    so.into_owned()
}

fn fails(o: &Output, needle: &str) {
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {}", String::from_utf8_lossy(&o.stdout));
    assert!(se.contains(needle), "error should mention `{needle}`: {se}");
    assert!(!se.contains("panicked"), "{se}");
}

/// A tiny model, 24 prompt/completion rows, and a LoRA adapter trained on them.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-eval-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 5);
    let data = d.join("data.jsonl");
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour of item {i}?"), "completion": format!("blue {}", i % 3)})
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let out = d.join("run");
    let o = common::kiln_train(&m, &data, &out)
        .args(["--max-steps", "12", "--batch-size", "4", "--learning-rate", "5e-3", "--eval-split", "0"])
        .args(["--lora-r", "8", "--eval-metrics", "accuracy,bleu,rouge", "--eval-max-new-tokens", "6"])
        .output()
        .unwrap();
    ok(&o);
    (d, m, data, out.join("adapter"))
}

#[test]
fn eval_compare_base_scores_both_and_writes_predictions() {
    let (d, model, data, adapter) = setup("compare");
    let preds = d.join("preds.jsonl");
    let o = kiln()
        .args(["eval", "--json", "--compare-base", "--max-new-tokens", "6", "--eval-samples", "10"])
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--data")
        .arg(&data)
        .arg("--predictions-out")
        .arg(&preds)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    for side in ["base", "tuned"] {
        let m = &v[side]["metrics"];
        assert_eq!(v[side]["n"], 10, "{v}");
        for k in ["loss", "ppl", "accuracy", "bleu"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "{side}.{k}: {v}");
        }
        for k in ["rouge1", "rouge2", "rougeL"] {
            assert!(m[k]["f"].as_f64().is_some(), "{side}.{k}: {v}");
        }
        assert!(
            (m["ppl"].as_f64().unwrap() - m["loss"].as_f64().unwrap().exp()).abs() < 1e-6 * m["ppl"].as_f64().unwrap()
        );
    }
    // The adapter was trained on these rows: its loss is lower than the base model's.
    let (lb, lt) = (v["base"]["metrics"]["loss"].as_f64().unwrap(), v["tuned"]["metrics"]["loss"].as_f64().unwrap());
    assert!(lt < lb, "tuned loss {lt} should be below base loss {lb}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[3]["reference"], "blue 0");
    assert!(lines[3]["prediction"].is_string() && lines[3]["base_prediction"].is_string());
    // The accuracy reported is the exact-match rate of the predictions written.
    let hits = lines.iter().filter(|l| l["prediction"].as_str().unwrap().trim() == l["reference"]).count();
    assert!((v["tuned"]["metrics"]["accuracy"].as_f64().unwrap() - hits as f64 / 10.0).abs() < 1e-12);
    // The table form has the three columns.
    let o = kiln()
        .args(["eval", "--compare-base", "--metrics", "loss", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let t = ok(&o);
    assert!(t.contains("base") && t.contains("tuned") && t.contains("Δ") && t.contains("loss"), "{t}");
    // --compare-base without an adapter, unknown metrics: clear errors.
    let o = kiln().args(["eval", "--compare-base", "--model"]).arg(&model).arg("--data").arg(&data).output().unwrap();
    fails(&o, "--compare-base needs --adapter");
    let o =
        kiln().args(["eval", "--metrics", "meteor", "--model"]).arg(&model).arg("--data").arg(&data).output().unwrap();
    fails(&o, "meteor");
}

#[test]
fn training_logs_generation_metrics_at_evaluations() {
    let (d, _, _, _) = setup("train-metrics");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evals: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "eval").collect();
    // --eval-split 0 holds nothing out, so there is nothing to evaluate …
    assert!(evals.is_empty(), "{evals:?}");
    // … with a held-out split, each evaluation carries accuracy, BLEU and ROUGE.
    let m = common::tiny_model(&d.join("m2"), 5);
    let out = d.join("run2");
    let o = kiln()
        .args(["train", "--max-steps", "2", "--eval-split", "0.25", "--eval-metrics", "accuracy,bleu,rouge"])
        .args(["--eval-max-new-tokens", "4", "--eval-samples", "3", "--model"])
        .arg(&m)
        .arg("--data")
        .arg(d.join("data.jsonl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = ok(&o) + &String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("BLEU"), "{log}");
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2, "before and after");
    for e in &evals {
        assert!(e["eval_loss"].is_number() && e["accuracy"].is_number() && e["bleu"].is_number(), "{e}");
        assert!(e["rougeL"]["f"].is_number(), "{e}");
    }
    let o = kiln()
        .args(["train", "--dry-run", "--eval-metrics", "loss", "--model"])
        .arg(&m)
        .arg("--data")
        .arg(d.join("data.jsonl"))
        .output()
        .unwrap();
    fails(&o, "eval_metrics");
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[test]
fn score_reads_text_and_jsonl_and_refuses_bad_files() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-score");
    std::fs::create_dir_all(&d).unwrap();
    let p = write(&d.join("p.txt"), "the cat sat\nParis\nblue 2\n");
    let r = write(&d.join("r.jsonl"), "{\"text\": \"the cat sat\"}\n{\"text\": \"paris\"}\n{\"text\": \"blue 1\"}\n");
    let r_txt = write(&d.join("r.txt"), "the cat sat\nparis\nblue 1\n");
    let run = |args: &[&str], p: &Path, r: &Path| {
        kiln().arg("score").args(args).arg("--predictions").arg(p).arg("--references").arg(r).output().unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&ok(&run(&["--json"], &p, &r))).unwrap();
    assert_eq!(v["n"], 3);
    assert!((v["metrics"]["accuracy"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12, "{v}");
    let want = kiln::eval::bleu::corpus_bleu(&["the cat sat", "Paris", "blue 2"], &["the cat sat", "paris", "blue 1"]);
    assert!((v["metrics"]["bleu"].as_f64().unwrap() - want.score).abs() < 1e-9);
    assert!(v["metrics"]["rouge1"]["f"].as_f64().unwrap() > 0.5);
    // Text references give the same; --case-insensitive counts "Paris" = "paris".
    let v2: serde_json::Value = serde_json::from_str(&ok(&run(&["--json"], &p, &r_txt))).unwrap();
    assert_eq!(v["metrics"], v2["metrics"]);
    let v3: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "--case-insensitive", "--metrics", "accuracy"], &p, &r))).unwrap();
    assert!((v3["metrics"]["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12, "{v3}");
    assert!(v3["metrics"].get("bleu").is_none(), "only the metrics asked for: {v3}");
    // Mismatched counts, empty files, bad JSON lines, a missing field, a model metric.
    let short = write(&d.join("short.txt"), "one\n");
    fails(&run(&[], &short, &r), "must pair up");
    let empty = write(&d.join("empty.txt"), "");
    fails(&run(&[], &empty, &r), "empty file");
    let bad = write(&d.join("bad.jsonl"), "{\"text\": \"a\"}\n{oops\n{\"text\": \"c\"}\n");
    fails(&run(&[], &p, &bad), "bad.jsonl:2: invalid JSON");
    let nofield = write(&d.join("nofield.jsonl"), "{\"text\": \"a\"}\n{\"answer\": \"b\"}\n{\"text\": \"c\"}\n");
    fails(&run(&[], &p, &nofield), "nofield.jsonl:2: text");
    fails(&run(&["--metrics", "loss"], &p, &r), "needs a model");
}

#[test]
fn chat_keeps_the_conversation_and_obeys_commands() {
    let (_, model, _, adapter) = setup("chat");
    let mut child = kiln()
        .args(["chat", "--compare", "--max-new-tokens", "5", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(&adapter)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "colour of item 4?\n/params temperature=0.7 top_k=5 seed=3\nand item 5?\n/params top_p=7\n/system Be brief.\n/reset\n/bogus\nhello\n/quit\nnever read\n";
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = ok(&o);
    // Three user messages, each answered by base then tuned.
    assert_eq!(out.matches("[base] ").count(), 3, "{out}");
    assert_eq!(out.matches("[tuned] ").count(), 3, "{out}");
    assert!(out.contains("temperature=0.7 top_k=5 top_p=1 repetition_penalty=1 max_new_tokens=5 seed=3"), "{out}");
    assert!(out.contains("(error: top_p 7 must be in (0, 1])"), "{out}");
    assert!(out.contains("system message set") && out.contains("(conversation reset)"), "{out}");
    assert!(out.contains("unknown command /bogus"), "{out}");
    // --compare needs an adapter.
    let o = kiln().args(["chat", "--compare", "--model"]).arg(&model).stdin(Stdio::null()).output().unwrap();
    fails(&o, "--compare needs --adapter");
}

#[test]
fn generate_samples_reproducibly_and_stops_at_stop_strings() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-generate");
    let _ = std::fs::remove_dir_all(&d);
    let model = common::tiny_model(&d, 9);
    let run_gen = |extra: &[&str]| -> serde_json::Value {
        let o = kiln()
            .args(["generate", "--json", "--prompt", "colour of item 3?", "--max-new-tokens", "24", "--model"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap();
        serde_json::from_str(&ok(&o)).unwrap()
    };
    let sampled =
        ["--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--repetition-penalty", "1.2", "--seed", "7"];
    let (a, b) = (run_gen(&sampled), run_gen(&sampled));
    assert_eq!(a["tokens"], b["tokens"], "same seed, same tokens");
    assert!(a["prompt_tokens_per_s"].as_f64().unwrap() > 0.0 && a["tokens_per_s"].as_f64().unwrap() > 0.0);
    // A random model rarely emits EOS: cut its greedy text at a stop string taken from it.
    let full = run_gen(&[]);
    let text = full["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "{full}");
    let stop: String = chars[3..5].iter().collect();
    let cut = run_gen(&["--stop", &stop]);
    let want = &text[..text.find(&stop).unwrap()];
    assert_eq!(cut["text"].as_str().unwrap(), want, "stop {stop:?} in {text:?}");
    assert_eq!(cut["stop"], "stop_string");
    let o = kiln().args(["generate", "--top-p", "0", "--prompt", "x", "--model"]).arg(&model).output().unwrap();
    fails(&o, "--top-p 0");
}

/// Sets every f32 of tensor `name` in `dir/model.safetensors` to NaN.
fn poison(dir: &Path, name: &str) {
    let p = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "F32", "{name}: {t}");
    let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
    for c in bytes[8 + n + a..8 + n + b].chunks_exact_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn generation_refuses_nan_logits_long_prompts_and_bad_flags() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-generate-guards");
    let _ = std::fs::remove_dir_all(&d);
    let model = common::tiny_model(&d, 9);
    let run = |args: &[&str]| kiln().arg("generate").arg("--model").arg(&model).args(args).output().unwrap();
    // Flags are checked before the model loads.
    for (args, msg) in [
        (&["--prompt", "x", "--stop", ""][..], "--stop \"\""),
        (&["--prompt", "x", "--temperature=-1"], "--temperature -1"),
        (&["--prompt", "x", "--temperature", "inf"], "--temperature inf"),
        (&["--prompt", "x", "--top-p", "1.5"], "--top-p 1.5"),
        (&["--prompt", "x", "--repetition-penalty", "0"], "--repetition-penalty 0"),
    ] {
        fails(&run(args), msg);
    }
    // The tiny model's context is 2048 tokens: a prompt past it is refused, naming its file …
    let long = d.join("long.txt");
    std::fs::write(&long, "glaze ".repeat(3000)).unwrap();
    let o = run(&["--raw", "--prompt-file", long.to_str().unwrap()]);
    fails(&o, "long.txt");
    fails(&o, "context is 2048");
    // … and new tokens past what remains are clamped, with a note.
    let o = run(&["--raw", "--json", "--prompt", &"glaze ".repeat(600), "--max-new-tokens", "100000"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let (p, n) = (v["prompt_tokens"].as_u64().unwrap(), v["tokens"].as_array().unwrap().len() as u64);
    assert!(p + n <= 2048, "{p} + {n}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("clamped"), "{}", String::from_utf8_lossy(&o.stderr));
    // NaN weights: an error naming the step, not NUL bytes and exit 0.
    poison(&model, "model.norm.weight");
    let o = run(&["--prompt", "hello"]);
    fails(&o, "not finite");
    fails(&o, "step 0");
    assert!(!o.stdout.contains(&0u8), "no NUL bytes printed");
}

/// A chat session keeps its KV cache between turns and runs only the new tokens; the second
/// turn's answer equals a fresh generation over the whole conversation.
#[test]
fn a_chat_session_reuses_its_cache_and_answers_the_same() {
    use kiln::data::template::ChatTemplate;
    use kiln::data::{Message, Role};
    use kiln::infer::{Cache, GenOptions, chat_prompt, generate_text};
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-eval-session");
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 9);
    let (model, tok) = kiln::model::load_with_tokenizer(&m, false).unwrap();
    let t = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), "fixture").unwrap();
    let opts = GenOptions { max_new_tokens: 12, ..Default::default() };
    let mut session = Cache::new(&model);
    let mut msgs = vec![Message { role: Role::User, content: "colour of item 3?".into() }];
    let p1 = chat_prompt(&tok, &t, &msgs).unwrap();
    let g1 = generate_text(&model, &mut session, &tok, &p1, &opts, &[], None, &mut |_| {}).unwrap();
    assert!(session.cached() > p1.len(), "the prompt and the answer are held");
    msgs.push(Message { role: Role::Assistant, content: g1.text.trim().to_string() });
    msgs.push(Message { role: Role::User, content: "and item 4?".into() });
    let p2 = chat_prompt(&tok, &t, &msgs).unwrap();
    let common = p1.iter().zip(&p2).take_while(|(a, b)| a == b).count();
    assert_eq!(common, p1.len(), "the template renders the first turn identically");
    let g2 = generate_text(&model, &mut session, &tok, &p2, &opts, &[], None, &mut |_| {}).unwrap();
    let fresh = generate_text(&model, &mut Cache::new(&model), &tok, &p2, &opts, &[], None, &mut |_| {}).unwrap();
    assert_eq!(g2.generated.tokens, fresh.generated.tokens);
    for (a, b) in g2.generated.logprobs.iter().zip(&fresh.generated.logprobs) {
        assert!((a - b).abs() < 1e-4, "log-probs {a} vs {b}");
    }
    // Cleared, the session starts over.
    session.clear();
    assert_eq!(session.cached(), 0);
}

#[test]
fn chat_refuses_a_turn_past_the_context_and_an_endless_line() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-chat-guards");
    let _ = std::fs::remove_dir_all(&d);
    let model = common::tiny_model(&d, 9);
    let chat = |stdin: Stdio| {
        kiln()
            .args(["chat", "--max-new-tokens", "4", "--model"])
            .arg(&model)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A message past the 2048-token context is refused and dropped; the next one is answered.
    let mut c = chat(Stdio::piped());
    let input = format!("{}\nhi\n/quit\n", "glaze ".repeat(3000));
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let so = ok(&o);
    assert!(so.contains("(error: the prompt is") && so.contains("context is 2048"), "{so}");
    assert_eq!(String::from_utf8_lossy(&o.stderr).matches("tokens/s").count(), 1, "one answer");
    // An endless line on standard input ends with an error, in bounded memory.
    let o = chat(Stdio::from(std::fs::File::open("/dev/zero").unwrap())).wait_with_output().unwrap();
    fails(&o, "longer than");
}
