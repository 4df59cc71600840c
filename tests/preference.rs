//! Preference tuning (DPO, IPO, conservative DPO, ORPO) against TRL: losses and LoRA gradients on
//! the tiny Llama fixture (tests/fixtures/preference, written by tools/make_pref_fixtures.py),
//! the shared-prompt layout against separate sequences, and `kiln train --objective dpo|orpo`
//! end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::adapters::{LoraConfig, LoraSet, Target};
use kiln::core::{Tape, Tensor};
use kiln::data::render::Tokenized;
use kiln::formats::WeightStore;
use kiln::model::{Inputs, Llama};
use kiln::train::pref::{self, PairSeq, PairStats, PrefSpec};
use kiln::train::{Objective, PrefLoss};

mod common;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn ids(store: &WeightStore, name: &str) -> Vec<i32> {
    store.get(name).unwrap().to_cpu().unwrap().as_slice::<i32>().unwrap().to_vec()
}

/// Prompt + answer with the answer marked, as TRL's collator lays it out.
fn side(prompt: &[i32], answer: &[i32]) -> Tokenized {
    Tokenized {
        ids: prompt.iter().chain(answer).copied().collect(),
        mask: std::iter::repeat_n(false, prompt.len()).chain(std::iter::repeat_n(true, answer.len())).collect(),
    }
}

fn pairs(store: &WeightStore) -> Vec<PairSeq> {
    let mut st = PairStats::default();
    (0..3)
        .map(|i| {
            let p = ids(store, &format!("pair{i}.prompt"));
            let (c, r) = (ids(store, &format!("pair{i}.chosen")), ids(store, &format!("pair{i}.rejected")));
            pref::lay_out(side(&p, &c), side(&p, &r), 64, &mut st).unwrap()
        })
        .collect()
}

fn lora(model: &Llama, store: &WeightStore) -> LoraSet {
    let cfg = LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.0 };
    let mut l = LoraSet::new(&model.config, cfg, 0).unwrap();
    for layer in 0..model.config.num_layers {
        for t in Target::ALL {
            let m = format!("model.layers.{layer}.{}", t.module());
            l.set(layer, t, store.get(&format!("lora_A.{m}")).unwrap(), store.get(&format!("lora_B.{m}")).unwrap())
                .unwrap();
        }
    }
    l
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "NaN/inf in kiln output");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn losses_and_lora_gradients_match_trl() {
    let model = Llama::load(&fixture("tiny-llama"), false).unwrap();
    let store = WeightStore::open(&fixture("preference/trl.safetensors")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("preference/trl.json")).unwrap()).unwrap();
    let pairs = pairs(&store);
    // The second pair (prompt 3 tokens, answers 5 and 4 sharing two): 8 + 7 tokens as two
    // sequences, 11 in one row (the four common tokens before the branch point once).
    assert_eq!((pairs[1].len(), pairs[1].unshared_len), (11, 15));
    let b = pref::pair_batch(&pairs.iter().collect::<Vec<_>>(), 0).unwrap();
    let refs = pref::reference_logps(&model, &b).unwrap();
    let cases = [
        ("dpo_sigmoid", Objective::Dpo, PrefLoss::Sigmoid, 0.0),
        ("dpo_ipo", Objective::Dpo, PrefLoss::Ipo, 0.0),
        ("dpo_smooth", Objective::Dpo, PrefLoss::Sigmoid, 0.2),
        ("orpo", Objective::Orpo, PrefLoss::Sigmoid, 0.0),
    ];
    for (case, objective, loss, label_smoothing) in cases {
        let mut l = lora(&model, &store);
        let spec = PrefSpec { objective, loss, beta: 0.1, label_smoothing };
        let tape = Tape::new();
        let (lv, st) = pref::pair_forward(&tape, &model, Some(&l), &b, &refs, &spec, None, false).unwrap();
        let want = store.get(&format!("{case}.loss")).unwrap().to_vec_f64().unwrap()[0];
        assert!((st.loss - want).abs() <= 2e-5 * want.abs(), "{case}: loss {} vs TRL {want}", st.loss);
        let m = &meta["cases"][case];
        if let Some(acc) = m["rewards/accuracies"].as_f64() {
            assert!((st.reward_accuracy - acc).abs() < 1e-6, "{case}: accuracy {} vs {acc}", st.reward_accuracy);
            let (c, r) = (m["rewards/chosen"].as_f64().unwrap(), m["rewards/rejected"].as_f64().unwrap());
            assert!(
                (st.rewards_chosen - c).abs() < 1e-5 + 1e-4 * c.abs(),
                "{case}: chosen {} vs {c}",
                st.rewards_chosen
            );
            assert!(
                (st.rewards_rejected - r).abs() < 1e-5 + 1e-4 * r.abs(),
                "{case}: rejected {}",
                st.rewards_rejected
            );
        }
        let grads = tape.backward(&lv).unwrap();
        let mut worst = 0.0f64;
        for (name, v) in l.named_params() {
            // base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight → <case>.grad_A.<module>
            let module = name.trim_start_matches("base_model.model.").split(".lora_").next().unwrap();
            let which = if name.contains(".lora_A.") { "A" } else { "B" };
            let want = store.get(&format!("{case}.grad_{which}.{module}")).unwrap().to_vec_f32().unwrap();
            let got = grads.get(v).unwrap().to_vec_f32().unwrap();
            worst = worst.max(rel_err(&got, &want));
        }
        assert!(worst < 1e-4, "{case}: worst LoRA gradient relative error {worst:e}");
        eprintln!("{case}: loss {:.8} vs TRL {want:.8}; worst LoRA gradient relative error {worst:.2e}", st.loss);
        l.reseed_dropout(0);
    }
}

#[test]
fn shared_prompt_rows_give_the_log_probs_of_separate_sequences() {
    // Long prompts with answers that share a prefix, several pairs padded into one batch:
    // each pair's log-probs from the shared layout equal those of the two sequences run on
    // their own.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pref-shared");
    let _ = std::fs::remove_dir_all(&dir);
    let model = Llama::load(&common::tiny_model(&dir, 5), false).unwrap();
    let mut rng = kiln::core::rng::Rng::new(3);
    let mut tok = |n: usize| (0..n).map(|_| rng.below(700) as i32 + 3).collect::<Vec<i32>>();
    let mut st = PairStats::default();
    let mut sides = Vec::new();
    let mut laid = Vec::new();
    for (np, shared, nc, nr) in [(13, 0, 4, 7), (5, 3, 2, 6), (21, 1, 9, 1), (2, 0, 1, 1)] {
        let (p, s) = (tok(np), tok(shared));
        let c: Vec<i32> = s.iter().copied().chain(tok(nc)).collect();
        let r: Vec<i32> = s.iter().copied().chain(tok(nr)).collect();
        let (sc, sr) = (side(&p, &c), side(&p, &r));
        laid.push(pref::lay_out(sc.clone(), sr.clone(), 128, &mut st).unwrap());
        sides.push((sc, sr));
    }
    let b = pref::pair_batch(&laid.iter().collect::<Vec<_>>(), 0).unwrap();
    let shared = pref::reference_logps(&model, &b).unwrap();
    for (i, (c, r)) in sides.iter().enumerate() {
        for (k, s) in [c, r].into_iter().enumerate() {
            let n = s.ids.len();
            let targets: Vec<i32> =
                (0..n).map(|t| if t + 1 < n && s.mask[t + 1] { s.ids[t + 1] } else { -100 }).collect();
            let (idt, pos) = (
                Tensor::from_vec(s.ids.clone(), [1, n]).unwrap(),
                Tensor::from_vec((0..n as i32).collect::<Vec<_>>(), [1, n]).unwrap(),
            );
            let inp = Inputs { ids: &idt, pos: &pos, seg: None, shared_prefix: false, base_only: true };
            let nll = model
                .token_nll(&Tape::no_grad(), &inp, &Tensor::from_vec(targets, [1, n]).unwrap(), None, false)
                .unwrap();
            let lp = -nll.value().to_vec_f64().unwrap().iter().sum::<f64>();
            let got = if k == 0 { shared[i].0 } else { shared[i].1 };
            assert!((got - lp).abs() < 1e-4 * (1.0 + lp.abs()), "pair {i} side {k}: shared {got} vs alone {lp}");
        }
    }
    assert!(st.tokens < st.unshared_tokens);
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn ok(o: &Output) -> String {
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{so}\n{se}");
    format!("{so}{se}")
}

fn train(model: &Path, data: &Path, out: &Path, args: &[&str]) -> Output {
    let batch: &[&str] = if args.contains(&"--batch-size") { &[] } else { &["--batch-size", "4"] };
    common::kiln_train(model, data, out)
        .args(["--learning-rate", "1e-2", "--max-seq-len", "96"])
        .args(batch)
        .args(args)
        .output()
        .unwrap()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pref_setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pref-cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 4);
    // A consistent preference: a short "yes N" over a rambling refusal.
    let rows: String = (0..40)
        .map(|i| {
            let chosen = format!("yes {}", i % 7);
            let rejected = format!("well, I am not sure about {i}, maybe later");
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("question {i}?"), "chosen": chosen, "rejected": rejected})
            )
        })
        .collect();
    let data = d.join("pref.jsonl");
    std::fs::write(&data, rows).unwrap();
    (d, m, data)
}

#[test]
fn dpo_run_logs_rewards_and_raises_reward_accuracy() {
    let (d, model, data) = pref_setup("dpo");
    let out = d.join("out");
    let log = ok(&train(&model, &data, &out, &["--method", "dpo", "--max-steps", "8", "--eval-steps", "4"]));
    assert!(log.contains("dpo: 32 pairs") && log.contains("reward accuracy"), "{log}");
    let m = metrics(&out);
    for v in &m {
        for k in ["rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"] {
            assert!(v[k].is_number(), "{k} missing from {v}");
        }
    }
    let evals: Vec<&serde_json::Value> = m.iter().filter(|v| v["kind"] == "eval").collect();
    let (first, last) = (evals.first().unwrap(), evals.last().unwrap());
    // Before any step the adapter is zero: policy = reference, loss ln 2, no reward.
    assert!((first["eval_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
    assert_eq!(first["reward_accuracy"].as_f64(), Some(0.0));
    assert!(last["reward_accuracy"].as_f64().unwrap() >= 0.75, "held-out reward accuracy did not rise: {last}");
    assert!(last["reward_margin"].as_f64().unwrap() > 0.0, "{last}");
    assert!(last["eval_loss"].as_f64().unwrap() < first["eval_loss"].as_f64().unwrap());
    assert!(std::fs::read_to_string(out.join("loss.svg")).unwrap().contains("reward accuracy"));
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("objective = \"dpo\"") && cfg.contains("method = \"lora\""), "{cfg}");
    // `kiln eval` on the held-out pairs with the saved adapter reproduces the last evaluation.
    let o = kiln()
        .args(["eval", "--json", "--max-seq-len", "96", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(out.join("adapter"))
        .arg("--data")
        .arg(out.join("eval.jsonl"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(ok(&o).lines().next().unwrap_or_default()).unwrap();
    assert_eq!(v["n"], 8);
    for (k, e) in
        [("reward_accuracy", "reward_accuracy"), ("reward_margin", "reward_margin"), ("dpo_loss", "eval_loss")]
    {
        let (got, want) = (v["metrics"][k].as_f64().unwrap(), last[e].as_f64().unwrap());
        assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{k}: eval {got} vs training {want}");
    }
}

#[test]
fn precomputed_reference_gives_the_same_steps() {
    let (d, model, data) = pref_setup("precompute");
    let losses = |out: &Path, extra: &[&str]| -> Vec<f64> {
        let args: Vec<&str> = ["--objective", "dpo", "--max-steps", "3"].iter().chain(extra).copied().collect();
        let log = ok(&train(&model, &data, out, &args));
        if !extra.is_empty() {
            assert!(log.contains("precomputed once"), "{log}");
        }
        metrics(out).iter().filter(|v| v["kind"] == "train").map(|v| v["loss"].as_f64().unwrap()).collect()
    };
    let (a, b) = (losses(&d.join("a"), &[]), losses(&d.join("b"), &["--precompute-ref"]));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "per-step {a:?} vs precomputed {b:?}");
    }
}

#[test]
fn orpo_and_ipo_runs_train() {
    let (d, model, data) = pref_setup("orpo");
    for (name, args) in [
        ("orpo", vec!["--method", "orpo", "--max-steps", "6"]),
        ("ipo", vec!["--method", "dpo+lora", "--dpo-loss", "ipo", "--max-steps", "3"]),
        ("smooth", vec!["--objective", "dpo", "--label-smoothing", "0.1", "--max-steps", "3"]),
    ] {
        let out = d.join(name);
        ok(&train(&model, &data, &out, &args));
        let m = metrics(&out);
        let tr: Vec<f64> = m.iter().filter(|v| v["kind"] == "train").map(|v| v["loss"].as_f64().unwrap()).collect();
        assert!(tr.iter().all(|l| l.is_finite()) && tr.last() < tr.first(), "{name}: losses {tr:?}");
    }
}

#[test]
fn preference_misuse_fails_clearly() {
    let (d, model, data) = pref_setup("misuse");
    let sft = d.join("sft.jsonl");
    std::fs::write(&sft, "{\"prompt\": \"a\", \"completion\": \"b\"}\n".repeat(10)).unwrap();
    for (args, data, want) in [
        (vec!["--objective", "dpo"], &sft, "needs preference rows"),
        (vec![], &data, "are for --objective dpo or orpo"),
        (vec!["--objective", "orpo", "--label-smoothing", "0.1"], &data, "label_smoothing"),
        (vec!["--method", "dpo", "--objective", "orpo"], &data, "disagree"),
        (vec!["--method", "dpo+lora+full"], &data, "at most one"),
        (vec!["--objective", "dpo", "--beta", "0"], &data, "beta"),
    ] {
        let o = train(&model, data, &d.join("out"), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn chat_pairs_count_only_the_answer_turns() {
    use kiln::data::example::{Example, Message, Role};
    use kiln::data::render::Renderer;
    use kiln::data::template::ChatTemplate;
    use kiln::data::tokenizer::TextTokenizer;
    let tok = TextTokenizer::load(&fixture("tokenizer")).unwrap();
    let template = ChatTemplate::choose(None, tok.chat_template.as_deref()).unwrap();
    assert!(template.is_some());
    let r = Renderer { tokenizer: tok, template, train_on_inputs: false };
    let m = |role, c: &str| Message { role, content: c.into() };
    let e = Example::Preference {
        prompt: vec![m(Role::User, "hi"), m(Role::Assistant, "EARLIER REPLY"), m(Role::User, "colour?")],
        chosen: vec![m(Role::Assistant, "blue sky")],
        rejected: vec![m(Role::Assistant, "no idea at all")],
    };
    let mut st = PairStats::default();
    let p = pref::tokenize_pair(&r, &e, 512, &mut st).unwrap().unwrap();
    let text = |flag: u8| -> String {
        let ids: Vec<u32> =
            p.targets.iter().zip(&p.flags).filter(|(_, f)| **f & flag != 0).map(|(&t, _)| t as u32).collect();
        r.tokenizer.decode(&ids).unwrap()
    };
    let (c, rj) = (text(1), text(2));
    assert!(c.contains("blue sky") && !c.contains("no idea") && !c.contains("EARLIER"), "chosen targets: {c:?}");
    assert!(rj.contains("no idea at all") && !rj.contains("blue") && !rj.contains("EARLIER"), "rejected: {rj:?}");
    assert_eq!(p.n_chosen, p.flags.iter().filter(|f| **f & 1 != 0).count());
    // The prompt is laid out once: the row is shorter than the two conversations.
    assert!(p.len() < p.unshared_len / 2 + 12, "{} of {}", p.len(), p.unshared_len);
    // Too long for max_len: the answers' tails go first; a prompt alone too long is dropped.
    let mut st = PairStats::default();
    let short = pref::tokenize_pair(&r, &e, p.len() - 3, &mut st).unwrap().unwrap();
    assert!(short.len() <= p.len() - 3 && st.truncated == 1);
    assert!(pref::tokenize_pair(&r, &e, 8, &mut st).unwrap().is_none() && st.dropped == 1);
}

#[test]
fn smollm2_dpo_on_the_bundled_preferences_raises_held_out_reward_accuracy() {
    // The real default model on data/demo_prefs.jsonl (tools/make_pref_data.py): a short DPO
    // run (12 steps of 8 pairs) must make the model prefer the correct answers of held-out
    // questions it was not trained on more often than the base did, with a positive margin.
    let Some(gguf) = common::smollm2() else { return };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo_prefs.jsonl");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pref-smollm2");
    let _ = std::fs::remove_dir_all(&out);
    let o = common::kiln_train(&gguf, &data, &out)
        .args(["--method", "dpo", "--max-steps", "12", "--batch-size", "8", "--learning-rate", "5e-4"])
        .args(["--eval-samples", "40", "--eval-steps", "12", "--max-seq-len", "128"])
        .output()
        .unwrap();
    let log = ok(&o);
    let m = metrics(&out);
    let evals: Vec<&serde_json::Value> = m.iter().filter(|v| v["kind"] == "eval").collect();
    let (base, tuned) = (evals[0], evals[evals.len() - 1]);
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    eprintln!("{base}\n{tuned}");
    assert!(f(tuned, "reward_accuracy") >= 0.7, "held-out reward accuracy: {tuned}\n{log}");
    assert!(f(tuned, "reward_margin") > 0.1, "{tuned}");
    assert!(f(tuned, "policy_accuracy") >= f(base, "policy_accuracy"), "base {base}\ntuned {tuned}");
    assert!(f(tuned, "eval_loss") < f(base, "eval_loss") - 0.05, "base {base}\ntuned {tuned}");
}

#[test]
fn accumulation_and_resume_give_the_same_steps() {
    // batch 4 = batch 2 × accumulation 2 (DPO and ORPO, whose NLL is a token mean over the
    // step), and a run resumed from its step-2 checkpoint continues with the same losses.
    let (d, model, data) = pref_setup("accum");
    let run = |name: &str, extra: &[&str]| -> Vec<(f64, f64)> {
        let out = d.join(name);
        ok(&train(&model, &data, &out, extra));
        metrics(&out)
            .iter()
            .filter(|v| v["kind"] == "train")
            .map(|v| (v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap()))
            .collect()
    };
    for method in ["dpo", "orpo"] {
        let whole = run(&format!("{method}-whole"), &["--method", method, "--max-steps", "3"]);
        let parts = run(
            &format!("{method}-parts"),
            &["--method", method, "--max-steps", "3", "--batch-size", "2", "--grad-accum", "2"],
        );
        for (a, b) in whole.iter().zip(&parts) {
            assert!((a.0 - b.0).abs() < 1e-5 * a.0.abs().max(1.0), "{method}: {whole:?} vs {parts:?}");
            assert!((a.1 - b.1).abs() < 1e-4 * a.1.abs().max(1.0), "{method}: {whole:?} vs {parts:?}");
        }
    }
    let full = run("r-full", &["--method", "dpo", "--max-steps", "4", "--save-steps", "2"]);
    let out = d.join("r-full");
    let ck = out.join("checkpoints/step-2").display().to_string();
    let log = ok(&train(&model, &data, &out, &["--method", "dpo", "--max-steps", "4", "--resume", &ck]));
    assert!(log.contains("resumed from"), "{log}");
    let again: Vec<f64> =
        metrics(&out).iter().filter(|v| v["kind"] == "train").map(|v| v["loss"].as_f64().unwrap()).collect();
    let first: Vec<f64> = full.iter().map(|x| x.0).collect();
    assert_eq!(first, again, "resumed losses differ");
}
