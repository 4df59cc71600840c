//! The training loop on a small random Llama with the fixture BPE tokenizer and a generated
//! chat dataset: gradient accumulation is exactly batching, a resumed run reproduces the
//! uninterrupted one, every method lowers the loss, a diverging run stops with its step, and
//! the configuration layers (defaults < TOML < flags) and the PEFT adapter round-trip.

use std::path::{Path, PathBuf};

use kiln::adapters::LoraSet;
use kiln::data::tokenizer::TextTokenizer;
use kiln::model::Llama;
use kiln::train::prepare::prepare;
use kiln::train::{Method, Summary, TrainConfig, Trainer};

mod common;

fn tiny_model(dir: &Path) -> PathBuf {
    common::tiny_model(dir, 7)
}

/// Chat rows asking for sums, answered in a fixed format.
fn dataset(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("sums.jsonl");
    let mut s = String::new();
    for i in 0..n {
        let (a, b) = (i * 7 % 23, i * 5 % 17);
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": format!("add {a} and {b}")},
            {"role": "assistant", "content": format!("sum = {}", a + b)}]});
        s.push_str(&format!("{row}\n"));
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn config(dir: &Path, extra: &str) -> TrainConfig {
    let model = tiny_model(dir);
    let data = dataset(dir, 48);
    let text = format!(
        "model = {model:?}\ndata = [{data:?}]\nout = {out:?}\nmax_seq_len = 256\nlearning_rate = 0.003\nbatch_size = 2\nmax_steps = 6\n",
        out = dir.join("out")
    );
    let f = dir.join("kiln.toml");
    std::fs::write(&f, text).unwrap();
    // `extra` plays the command-line flags, overriding the file.
    TrainConfig::resolve(Some(&f), extra.parse::<toml::Table>().unwrap()).unwrap()
}

fn trainer(cfg: &TrainConfig) -> Trainer {
    let path = cfg.model.clone().unwrap();
    let mut model = Llama::load(&path, cfg.method == Method::Full).unwrap();
    if let Some(ty) = cfg.quant_type().unwrap() {
        model.quantize_linears(ty).unwrap();
    }
    let tok = TextTokenizer::load(&path).unwrap();
    let data = prepare(cfg, tok, cfg.max_seq_len.unwrap()).unwrap();
    Trainer::new(cfg.clone(), model, data).unwrap()
}

fn run(cfg: &TrainConfig) -> (Trainer, Summary) {
    let mut t = trainer(cfg);
    let s = t.run(&mut |_| {}).unwrap();
    (t, s)
}

fn assert_close(what: &str, a: f64, b: f64, tol: f64) {
    assert!(a.is_finite() && b.is_finite() && (a - b).abs() <= tol * b.abs().max(1e-3), "{what}: {a} vs {b}");
}

#[test]
fn accumulation_equals_batching() {
    // Packing off, so rows differ in length and padding differs between the two layouts:
    // a mean of per-micro-batch means would not match; the token-weighted mean does.
    let d = tempdir("accum");
    let base = config(&d, "packing = false\nbatch_size = 4\ngrad_accum = 1\n");
    let mut acc = base.clone();
    (acc.batch_size, acc.grad_accum) = (1, 4);
    let (mut t1, s1) = run(&base);
    let (mut t2, s2) = run(&acc);
    assert_eq!(s1.losses.len(), 6);
    for ((st, a), (_, b)) in s1.losses.iter().zip(&s2.losses) {
        assert_close(&format!("step {st} loss"), *b, *a, 1e-5);
    }
    for ((n, a), (_, b)) in t1.params().iter().zip(t2.params()) {
        let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * scale, "{n}: {x} vs {y}");
        }
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    for (name, extra) in [("resume", ""), ("resume-8bit", "optim = \"adamw8bit\"\n")] {
        resume_case(name, extra);
    }
}

fn resume_case(name: &str, extra: &str) {
    let d = tempdir(name);
    // With LoRA dropout: the masks must repeat after a resume too; with 8-bit moments, the
    // checkpoint's dequantized moments must requantize to the same codes.
    let cfg = config(&d, &format!("save_steps = 3\neval_steps = 3\nlora_dropout = 0.1\n{extra}"));
    let (_, full) = run(&cfg);
    let ck = cfg.out.join("checkpoints/step-3");
    assert!(ck.join("state.json").is_file() && ck.join("optimizer.safetensors").is_file());
    // A fresh process picks the run up at step 3, as after a kill.
    let mut t = trainer(&cfg);
    assert_eq!(t.resume(&ck).unwrap(), 3);
    let resumed = t.run(&mut |_| {}).unwrap();
    assert_eq!(resumed.losses.len(), 6, "the summary includes the steps before the checkpoint");
    for ((st, a), (_, b)) in full.losses.iter().zip(&resumed.losses).skip(3) {
        assert_close(&format!("step {st} loss after resume"), *b, *a, 1e-6);
    }
    let metrics = std::fs::read_to_string(cfg.out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6], "metrics.jsonl keeps one record per step");
    // A checkpoint of another configuration is refused, naming the setting and both values.
    let mut other = cfg.clone();
    other.learning_rate = 0.001;
    let err = trainer(&other).resume(&ck).err().unwrap().to_string();
    assert!(err.contains("learning_rate: 0.003 in the checkpoint, 0.001 now"), "{err}");
    // A longer run may resume it: the schedule is re-planned, with a note.
    let mut longer = cfg.clone();
    longer.max_steps = Some(9);
    let mut t = trainer(&longer);
    assert_eq!(t.resume(&ck).unwrap(), 3);
    assert!(
        t.resume_notes.iter().any(|n| n.contains("6 steps") && n.contains("re-planned for 9")),
        "{:?}",
        t.resume_notes
    );
}

#[test]
fn a_run_whose_every_step_is_skipped_fails() {
    let d = tempdir("all-skipped");
    let cfg = config(
        &d,
        "skip_nonfinite = true
max_steps = 2
",
    );
    let mut t = trainer(&cfg);
    // NaN weights: every step's loss is NaN, so every step is skipped.
    let e = t.model.embed.value().clone();
    let nan = kiln::core::Tensor::from_vec(vec![f32::NAN; e.numel()], e.dims().to_vec()).unwrap();
    t.model.embed = kiln::core::Var::constant(nan.to_dtype(e.dtype()).unwrap());
    let err = t.run(&mut |_| {}).expect_err("an all-skipped run fails").to_string();
    assert!(err.contains("every one of the 2 steps was skipped") && err.contains("nothing was trained"), "{err}");
}

#[test]
fn every_method_lowers_the_loss() {
    for (name, extra) in [
        ("lora", "method = \"lora\"\n"),
        ("qlora", "method = \"qlora\"\nquantize = \"q8_0\"\n"),
        ("qlora-nf4", "method = \"qlora\"\nquantize = \"nf4\"\n"),
        ("full", "method = \"full\"\nlearning_rate = 0.001\n"),
        ("dropout", "lora_dropout = 0.1\n"),
        ("adapter", "method = \"adapter\"\nadapter_size = 16\n"),
        ("full-8bit", "method = \"full\"\noptim = \"adamw8bit\"\nlearning_rate = 0.001\n"),
        (
            "rslora",
            "use_rslora = true\ntarget_modules = \"q_proj,v_proj\"\nlr_scheduler = \"cosine\"\nwarmup_steps = 2\n",
        ),
    ] {
        let d = tempdir(name);
        let cfg = config(&d, &format!("{extra}max_steps = 12\ngradient_checkpointing = true\n"));
        assert_eq!(cfg.max_steps, Some(12));
        let (_, s) = run(&cfg);
        let (first, last) = (s.evals[0].1, s.evals.last().unwrap().1);
        eprintln!("{name}: eval loss {first:.4} → {last:.4}");
        assert!(last < first * 0.9, "{name}: eval loss {first} → {last}");
    }
}

#[test]
fn a_diverging_run_stops_with_its_step() {
    let d = tempdir("nan");
    let cfg = config(&d, "learning_rate = 1e6\nmax_grad_norm = 0.0\nsave_steps = 1\nmax_steps = 20\n");
    let mut t = trainer(&cfg);
    let err = t.run(&mut |_| {}).expect_err("a learning rate of 1e6 must diverge").to_string();
    let what = err.contains("loss is") || err.contains("the gradient of");
    assert!(err.contains("step ") && what && err.contains("checkpoint"), "{err}");
}

#[test]
fn config_layers_and_bad_values() {
    let d = tempdir("cfg");
    let f = d.join("k.toml");
    std::fs::write(&f, "data = [\"a.jsonl\"]\nlearning_rate = 0.001\nlora_r = 4\n").unwrap();
    let mut flags = toml::Table::new();
    flags.insert("lora_r".into(), toml::Value::Integer(16));
    let c = TrainConfig::resolve(Some(&f), flags).unwrap();
    assert_eq!((c.learning_rate, c.lora_r, c.batch_size), (0.001, 16, 4), "file < flags, defaults elsewhere");
    let back: TrainConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
    assert_eq!(back.lora_r, 16, "the written config.toml reads back");
    for (bad, field) in [
        ("learning_rat = 1", "learning_rat"),
        ("learning_rate = -1.0", "learning_rate"),
        ("target_modules = \"q_proj,foo\"", "foo"),
        ("method = \"dora\"", "dora"),
        ("optim = \"sgd\"", "sgd"),
        ("quantize = \"q4_0\"", "quantize"),
        ("batch_size = 0", "batch_size"),
    ] {
        std::fs::write(&f, format!("data = [\"a.jsonl\"]\n{bad}\n")).unwrap();
        let e = TrainConfig::resolve(Some(&f), toml::Table::new()).err().unwrap().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn peft_adapter_round_trips() {
    let d = tempdir("peft");
    let cfg = config(&d, "target_modules = \"q_proj,v_proj,down_proj\"\nmax_steps = 2\n");
    let (t, _) = run(&cfg);
    let lora = t.lora.as_ref().unwrap();
    lora.save_peft(&d.join("adapter"), "tiny", 0.0, &[]).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(v["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
    let back = LoraSet::load_peft(&d.join("adapter"), &t.model.config).unwrap();
    let (a, b) = (lora.named_params(), back.named_params());
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.value().to_vec_f32().unwrap(), y.value().to_vec_f32().unwrap(), "{n}");
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn merged_export_equals_the_unmerged_adapter() {
    use kiln::core::{DType, Tape, Tensor};
    use kiln::model::{Inputs, default_positions};
    let d = tempdir("export");
    let cfg = config(&d, "max_steps = 4\n");
    let (t, _) = run(&cfg);
    let tok = TextTokenizer::load(cfg.model.as_ref().unwrap()).unwrap();
    let dir = d.join("merged");
    std::fs::create_dir_all(&dir).unwrap();
    kiln::export::export_merged(&t.model, t.lora.as_ref(), Some(&tok), DType::F32, &dir).unwrap();
    let merged = Llama::load(&dir, false).unwrap();
    let merged_tok = TextTokenizer::load(&dir).unwrap();
    assert_eq!(merged_tok.encode("add 3 and 4").unwrap().ids, tok.encode("add 3 and 4").unwrap().ids);
    assert_eq!(merged_tok.chat_template, tok.chat_template);
    let ids = Tensor::from_vec((0..24i32).map(|i| i * 37 % 700).collect::<Vec<_>>(), [2, 12]).unwrap();
    let pos = default_positions(2, 12).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let a = t.model.forward(&tape, &inp, t.lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    let b = merged.forward(&tape, &inp, None, false).unwrap().value().to_vec_f32().unwrap();
    let base = t.model.forward(&tape, &inp, None, false).unwrap().value().to_vec_f32().unwrap();
    let max = |x: &[f32], y: &[f32]| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(max(&a, &b) < 1e-4, "merged vs unmerged: {}", max(&a, &b));
    assert!(max(&a, &base) > 1e-3, "the adapter must matter for this check to mean anything");
}

#[test]
fn bottleneck_adapters_start_at_the_base_model_and_round_trip() {
    use kiln::core::{Tape, Tensor};
    use kiln::model::{Inputs, default_positions};
    let d = tempdir("bottleneck");
    let cfg = config(&d, "method = \"adapter\"\nadapter_size = 8\nmax_steps = 3\n");
    let base = Llama::load(cfg.model.as_ref().unwrap(), false).unwrap();
    let ids = Tensor::from_vec((0..16i32).map(|i| i * 41 % 700).collect::<Vec<_>>(), [2, 8]).unwrap();
    let pos = default_positions(2, 8).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let logits = |m: &Llama| m.forward(&tape, &inp, None, false).unwrap().value().to_vec_f32().unwrap();
    let mut fresh = Llama::load(cfg.model.as_ref().unwrap(), false).unwrap();
    fresh.add_bottlenecks(8, 1).unwrap();
    assert_eq!(logits(&base), logits(&fresh), "a zero up-projection leaves the model unchanged");
    let (mut t, _) = run(&cfg);
    let trained = logits(&t.model);
    assert_ne!(trained, logits(&base), "training moved the adapters");
    kiln::adapters::bottleneck::save(&t.params(), 8, "tiny", &d.join("adapter")).unwrap();
    assert_eq!(kiln::adapters::bottleneck::size_of(&d.join("adapter")).unwrap(), Some(8));
    let mut loaded = Llama::load(cfg.model.as_ref().unwrap(), false).unwrap();
    loaded.load_bottlenecks(&d.join("adapter"), 8).unwrap();
    assert_eq!(logits(&loaded), trained);
}

#[test]
fn gguf_export_round_trips() {
    use kiln::core::quant::GgmlType;
    use kiln::core::{Tape, Tensor};
    use kiln::model::{Inputs, default_positions};
    let d = tempdir("gguf-export");
    let cfg = config(&d, "max_steps = 3\n");
    let (t, _) = run(&cfg);
    let src = cfg.model.clone().unwrap();
    let ids = Tensor::from_vec((0..20i32).map(|i| i * 53 % 700).collect::<Vec<_>>(), [2, 10]).unwrap();
    let pos = default_positions(2, 10).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let want = t.model.forward(&tape, &inp, t.lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (ty, tol) in [(GgmlType::F32, 1e-5f32), (GgmlType::Q8_0, 2e-2)] {
        let out = d.join(format!("model-{}.gguf", ty.name()));
        kiln::export::export_gguf(&t.model, t.lora.as_ref(), &src, ty, false, &out).unwrap();
        let (back, tok) = kiln::model::load_with_tokenizer(&out, false).unwrap();
        let got = back.forward(&tape, &inp, None, false).unwrap().value().to_vec_f32().unwrap();
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < tol, "{}: logits differ by {err} of their scale", ty.name());
        let orig = TextTokenizer::load(&src).unwrap();
        assert_eq!(tok.encode("add 12 and 5").unwrap().ids, orig.encode("add 12 and 5").unwrap().ids);
        assert_eq!(tok.chat_template, orig.chat_template);
        assert_eq!(tok.eos.as_ref().map(|s| s.id), orig.eos.as_ref().map(|s| s.id));
    }
}

#[test]
fn gguf_lora_export_is_a_llama_cpp_adapter() {
    use kiln::core::quant::GgmlType;
    use kiln::formats::gguf::{GgufFile, MetaValue};
    let d = tempdir("gguf-lora");
    let cfg = config(&d, "max_steps = 2\ntarget_modules = \"q_proj,v_proj\"\nlora_r = 4\nlora_alpha = 8.0\n");
    let (t, _) = run(&cfg);
    let lora = t.lora.as_ref().unwrap();
    let out = d.join("adapter.gguf");
    kiln::export::export_gguf_lora(&t.model.config, lora, GgmlType::F32, &out).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get("general.type").and_then(MetaValue::as_str), Some("adapter"));
    assert_eq!(g.get("adapter.type").and_then(MetaValue::as_str), Some("lora"));
    assert_eq!(g.get("adapter.lora.alpha").and_then(MetaValue::as_f64), Some(8.0));
    assert_eq!(g.tensors.len(), 2 * 2 * 2, "A and B for q and v of 2 layers");
    let a = g.tensor("blk.1.attn_v.weight.lora_a").unwrap();
    assert_eq!(a.shape(), vec![4, 64]);
    let got = g.view(a, kiln::core::DType::F32).unwrap().to_vec_f32().unwrap();
    let want = lora.get(1, kiln::adapters::Target::V).unwrap().a.value().to_vec_f32().unwrap();
    assert_eq!(got, want);
    assert_eq!(g.tensor("blk.0.attn_q.weight.lora_b").unwrap().shape(), vec![64, 4]);
}

#[test]
fn checkpoints_beyond_the_limit_are_pruned_but_the_best_is_kept() {
    let d = tempdir("prune");
    let cfg = config(&d, "max_steps = 6\nsave_steps = 1\neval_steps = 1\nsave_total_limit = 2\n");
    let (_, s) = run(&cfg);
    let kept: Vec<usize> = kiln::train::checkpoint::list(&cfg.out).into_iter().map(|(st, _)| st).collect();
    let best = s.best_eval.unwrap().0;
    let mut want = vec![5, 6];
    if !want.contains(&best) {
        want.insert(0, best);
    }
    assert_eq!(kept, want, "the newest two plus the best (step {best})");
}

#[test]
fn train_embeddings_saves_and_reloads_the_full_modules() {
    use kiln::core::{Tape, Tensor};
    use kiln::model::{Inputs, default_positions};
    let d = tempdir("embeddings");
    let cfg = config(&d, "train_embeddings = true\nmax_steps = 3\n");
    let base = Llama::load(cfg.model.as_ref().unwrap(), false).unwrap();
    let (mut t, _) = run(&cfg);
    let names: Vec<String> = t.params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.embed_tokens.weight".to_string()), "{names:?}");
    assert_ne!(t.model.embed.value().to_vec_f32().unwrap(), base.embed.value().to_vec_f32().unwrap());
    let extra: Vec<_> = t.params().into_iter().filter(|(n, _)| !n.contains(".lora_")).collect();
    let dir = d.join("adapter");
    t.lora.as_ref().unwrap().save_peft(&dir, "tiny", 0.0, &extra).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(v["modules_to_save"], serde_json::json!(["embed_tokens"]), "tied model: the embedding only");
    let mut fresh = Llama::load(cfg.model.as_ref().unwrap(), false).unwrap();
    let lora = kiln::model::load_adapter(&mut fresh, &dir).unwrap();
    let ids = Tensor::from_vec((0..12i32).map(|i| i * 59 % 700).collect::<Vec<_>>(), [1, 12]).unwrap();
    let pos = default_positions(1, 12).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let a = t.model.forward(&tape, &inp, t.lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    let b = fresh.forward(&tape, &inp, lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    assert_eq!(a, b);
}

#[test]
fn added_special_tokens_grow_the_vocabulary_and_learn() {
    use kiln::core::{Tape, Tensor};
    use kiln::model::{Inputs, default_positions};
    let d = tempdir("add-tokens");
    // The fixture tokenizer has 700 ids and the model 709 rows: the first nine new tokens fit
    // in the spare rows, the tenth (<|tool|>, id 709) grows the vocabulary; <|im_start|>
    // already exists.
    let extra_tokens: Vec<String> = (1..=9).map(|i| format!("\"<|t{i}|>\"")).collect();
    let mut cfg = config(
        &d,
        &format!("add_special_tokens = [{}, \"<|tool|>\", \"<|im_start|>\"]\nmax_steps = 4\n", extra_tokens.join(", ")),
    );
    // Rows that use the new token, so its embedding gets gradient.
    let data = d.join("tool.jsonl");
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"messages": [{"role": "user", "content": format!("call {i}")},
            {"role": "assistant", "content": format!("<|tool|> run {i}")}]})
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    cfg.data = vec![data.display().to_string()];
    let path = cfg.model.clone().unwrap();
    let mut model = Llama::load(&path, false).unwrap();
    let mut tok = TextTokenizer::load(&path).unwrap();
    let log = kiln::train::prepare::prepare_model(&mut cfg, &mut model, &mut tok).unwrap();
    assert_eq!(model.config.vocab_size, 710, "{log:?}");
    assert!(cfg.train_embeddings, "a grown vocabulary trains the embeddings");
    let tool = tok.encode("<|tool|>").unwrap().ids;
    assert_eq!(tool, vec![709], "the new token is one id past the old vocabulary");
    let mean_row = model.embed.value().to_vec_f32().unwrap()[709 * 64..].to_vec();
    let data = prepare(&cfg, tok.clone(), 256).unwrap();
    let mut t = Trainer::new(cfg.clone(), model, data).unwrap();
    t.run(&mut |_| {}).unwrap();
    let trained = t.model.embed.value().to_vec_f32().unwrap();
    assert_ne!(&trained[709 * 64..], &mean_row[..], "the new row learned");
    let extra: Vec<_> = t.params().into_iter().filter(|(n, _)| !n.contains(".lora_")).collect();
    let dir = d.join("adapter");
    t.lora.as_ref().unwrap().save_peft(&dir, "tiny", 0.0, &extra).unwrap();
    tok.save_hf(&dir).unwrap();
    let mut fresh = Llama::load(&path, false).unwrap();
    let lora = kiln::model::load_adapter(&mut fresh, &dir).unwrap();
    assert_eq!(fresh.config.vocab_size, 710);
    let back = kiln::model::adapter_tokenizer(&dir).unwrap().unwrap();
    assert_eq!(back.encode("<|tool|> run 3").unwrap().ids, tok.encode("<|tool|> run 3").unwrap().ids);
    let ids = Tensor::from_vec(vec![709, 5, 77, 709, 12], [1, 5]).unwrap();
    let pos = default_positions(1, 5).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let a = t.model.forward(&tape, &inp, t.lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    let b = fresh.forward(&tape, &inp, lora.as_ref(), false).unwrap().value().to_vec_f32().unwrap();
    assert_eq!(a, b);
}

/// Whether `python3` can import the `gguf` package. CI installs it (tools/test.sh), so there
/// a missing package fails the test; elsewhere the check is skipped with the reason printed.
fn python_gguf() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have python3 with gguf and numpy (tools/test.sh installs them)"
        );
        eprintln!("SKIP: python3 cannot import gguf and numpy (pip install gguf numpy)");
    }
    ok
}

/// kiln's GGUF writer read back by an independent reader, the `gguf` package: same metadata,
/// tensor names, types and shapes, and gguf's dequantization equals kiln's.
#[test]
fn gguf_export_reads_in_the_gguf_package() {
    use kiln::core::quant::GgmlType;
    use kiln::formats::gguf::{GgufFile, MetaValue};
    if !python_gguf() {
        return;
    }
    let d = tempdir("gguf-py");
    let cfg = config(&d, "max_steps = 2\n");
    let (t, _) = run(&cfg);
    let src = cfg.model.clone().unwrap();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/gguf_dump.py");
    for (ty, mixed, file_type) in [(GgmlType::F32, false, 0), (GgmlType::Q8_0, false, 7), (GgmlType::Q5K, true, 17)] {
        let out = d.join(format!("model-{}.gguf", ty.name()));
        kiln::export::export_gguf(&t.model, t.lora.as_ref(), &src, ty, mixed, &out).unwrap();
        let prefix = d.join(format!("dump-{}", ty.name()));
        let st = std::process::Command::new("python3").arg(&tools).arg(&out).arg(&prefix).status().unwrap();
        assert!(st.success(), "gguf_dump.py failed on {}", out.display());
        let dump: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap()).unwrap();
        let values: Vec<f32> = std::fs::read(prefix.with_extension("f32"))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let g = GgufFile::open(&out).unwrap();
        let meta = &dump["metadata"];
        assert_eq!(meta["general.architecture"], "llama");
        assert_eq!(meta["llama.block_count"].as_u64(), g.get("llama.block_count").and_then(|v| v.as_u64()));
        assert_eq!(meta["general.file_type"].as_u64(), Some(file_type));
        let n_tokens = match g.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(a)) => a.len() as u64,
            other => panic!("tokenizer.ggml.tokens: {other:?}"),
        };
        assert_eq!(meta["tokenizer.ggml.tokens"]["len"].as_u64(), Some(n_tokens));
        assert_eq!(meta["tokenizer.chat_template"].as_str(), g.get("tokenizer.chat_template").and_then(|v| v.as_str()));
        assert_eq!(meta.as_object().unwrap().len(), g.metadata.len(), "metadata key count");
        let tensors = dump["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), g.tensors.len());
        for (p, k) in tensors.iter().zip(&g.tensors) {
            assert_eq!(p["name"], k.name.as_str());
            assert_eq!(p["type"], k.ty.name(), "{}", k.name);
            let dims: Vec<u64> = p["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(dims, k.dims, "{}", k.name);
            let ours = g.dequantize(&k.name).unwrap().to_vec_f32().unwrap();
            let at = p["offset"].as_u64().unwrap() as usize;
            let theirs = &values[at..at + ours.len()];
            let worst = ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs() / (1e-6 + a.abs())));
            assert!(worst < 1e-6, "{} ({}): kiln and gguf dequantize differently ({worst})", k.name, k.ty.name());
        }
    }
}

#[test]
fn checkpoint_states_are_checked_and_mutations_never_panic() {
    use kiln::train::checkpoint::parse_state;
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/checkpoint_state");
    let p = Path::new("state.json");
    let old = std::fs::read(seeds.join("old-format.json")).unwrap();
    let st = parse_state(&old, p).expect("a state.json of the old format parses");
    assert!(st.settings.is_empty() && st.checksums.is_none() && st.base_model.is_none());
    let cur = std::fs::read(seeds.join("current.json")).unwrap();
    assert_eq!(parse_state(&cur, p).unwrap().steps_per_epoch, Some(2));
    for (from, to, want) in [
        ("\"step\": 2", "\"step\": 99", "step 99 of 4"),
        ("\"data_group\": 1", "\"data_group\": 0", "data_epoch/data_group"),
        ("\"total_steps\": 4", "\"total_steps\": 0", "total_steps"),
        ("\"fedcba9876543210\",\n  \"checksums\": {", "\"x\",\n  \"checksums\": {\"a\": \"zz\", ", "checksums"),
    ] {
        let text = String::from_utf8(cur.clone()).unwrap();
        assert!(text.contains(from), "{from}");
        let err = parse_state(text.replace(from, to).as_bytes(), p).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains(want), "{want}: {err}");
    }
    // Seeded byte mutations (what the cargo-fuzz target does at length): an error or a
    // consistent state, never a panic.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..4000 {
        let mut b = if i % 2 == 0 { old.clone() } else { cur.clone() };
        for _ in 0..1 + i % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % b.len();
            b[at] = (x >> 32) as u8;
        }
        if let Ok(st) = parse_state(&b, p) {
            assert!(st.step <= st.total_steps && st.best_step.is_none_or(|s| s <= st.step));
        }
    }
}

#[test]
fn stepping_by_hand_is_the_run() {
    use kiln::train::Stepped;
    let d = tempdir("step-by-hand");
    let cfg = config(&d, "max_steps = 4\n");
    let (_, whole) = run(&cfg);
    let mut t = trainer(&cfg);
    let mut losses = Vec::new();
    while let Stepped::Applied(s) = t.step().unwrap() {
        assert_eq!(s.step, losses.len() + 1);
        losses.push((s.step, s.loss));
        if s.step == s.total {
            break;
        }
    }
    // The same step, so the same losses as the loop of `run` (no metrics file: none opened).
    assert_eq!(losses, whole.losses);
    let e = t.step().expect_err("past the last step").to_string();
    assert!(e.contains("the run has 4 steps"), "{e}");
}

#[test]
fn caller_batches_train_through_the_same_step() {
    use kiln::data::batch::{Sequence, to_batch};
    use kiln::train::{Batches, Stepped};
    let d = tempdir("caller-batches");
    let model = Llama::load(&tiny_model(&d), false).unwrap();
    // One fixed row of a repeating pattern: the loss on it must fall.
    let ids: Vec<i32> = (0..24).map(|i| 3 + i % 5).collect();
    let row = Sequence { labels: ids.clone(), pos: (0..24).collect(), seg: vec![0; 24], ids };
    let batch = to_batch(std::slice::from_ref(&row), 0).unwrap();
    let cfg = TrainConfig {
        out: d.join("out"),
        max_steps: Some(8),
        learning_rate: 3e-3,
        lr_scheduler: kiln::train::Scheduler::Constant,
        ..TrainConfig::default()
    };
    let next = Box::new(move |_| Ok(vec![batch.clone()]));
    let batches = Batches { next, eval: vec![row], pad: 0, steps_per_epoch: 2.0 };
    let mut t = Trainer::with_batches(cfg, model, batches).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    t.open_metrics().unwrap();
    let before = t.evaluate_logged(0).unwrap().unwrap().log.eval_loss;
    for i in 1..=8 {
        let Stepped::Applied(s) = t.step().unwrap() else { panic!("step {i} skipped") };
        assert_eq!(s.epoch, i as f64 / 2.0);
    }
    let after = t.evaluate_logged(8).unwrap().unwrap().log.eval_loss;
    assert!(after < before, "held-out loss {before} → {after}");
    let lines = std::fs::read_to_string(d.join("out/metrics.jsonl")).unwrap();
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["eval", "train", "train", "train", "train", "train", "train", "train", "train", "eval"]);
    // Preference tuning needs pairs, which only a prepared data set has.
    let pref = TrainConfig { max_steps: Some(1), objective: kiln::train::Objective::Dpo, ..TrainConfig::default() };
    let none = Batches { next: Box::new(|_| Ok(Vec::new())), eval: Vec::new(), pad: 0, steps_per_epoch: 1.0 };
    let model = Llama::load(&tiny_model(&d), false).unwrap();
    assert!(Trainer::with_batches(pref, model, none).is_err());
}
