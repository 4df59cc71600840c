//! `kiln train` end to end on a small random model with the fixture tokenizer: the outputs of a
//! run, a resume from its checkpoint, the dry-run plan, bad arguments failing cleanly, and the
//! defaults `--help` shows being those of `TrainConfig::default()`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 3);
    let data = d.join("data.jsonl");
    let rows: String = (0..30)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour {i}?"), "completion": format!("blue {}", i % 4)})
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    (d.clone(), m, data)
}

fn run(args: &[&str], model: &Path, data: &Path, out: &Path) -> Output {
    common::kiln_train(model, data, out).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{so}\n{se}");
    format!("{so}{se}")
}

#[test]
fn train_writes_outputs_and_resumes() {
    let (d, model, data) = setup("run");
    let out = d.join("out");
    let args =
        ["--max-steps", "4", "--save-steps", "2", "--eval-steps", "2", "--batch-size", "2", "--learning-rate", "3e-3"];
    let log = ok(&run(&args, &model, &data, &out));
    assert!(log.contains("trained 4 steps") && log.contains("eval loss"), "{log}");
    for f in [
        "config.toml",
        "eval.jsonl",
        "metrics.jsonl",
        "loss.svg",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/step-2/state.json",
        "checkpoints/step-4/optimizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("max_steps = 4") && cfg.contains("lora_r = 8"), "the resolved config: {cfg}");
    // eval.jsonl holds the held-out 20 % (6 of 30 rows) in the data's own format.
    let eval = std::fs::read_to_string(out.join("eval.jsonl")).unwrap();
    assert_eq!(eval.lines().count(), 6);
    assert!(eval.lines().all(|l| l.contains("\"prompt\"") && l.contains("\"completion\"")), "{eval}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let kinds: Vec<String> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "train").count(), 4);
    assert_eq!(kinds.iter().filter(|k| *k == "eval").count(), 3, "evaluations at steps 0, 2 and 4");
    assert!(std::fs::read_to_string(out.join("loss.svg")).unwrap().contains("<polyline"));
    // Resuming from step 2 repeats steps 3 and 4 with the same losses.
    let before: Vec<String> = metrics.lines().filter(|l| l.contains("\"train\"")).map(loss_of).collect();
    let log = ok(&run(
        &[&args[..], &["--resume", out.join("checkpoints/step-2").to_str().unwrap()]].concat(),
        &model,
        &data,
        &out,
    ));
    assert!(log.contains("resumed from") && log.contains("resumed at 2"), "{log}");
    let after = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let after: Vec<String> = after.lines().filter(|l| l.contains("\"train\"")).map(loss_of).collect();
    assert_eq!(before, after);
}

fn loss_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    format!("{:.5}", v["loss"].as_f64().unwrap())
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let (d, model, data) = setup("dry");
    let out = d.join("out");
    let log = ok(&run(&["--dry-run", "--method", "full"], &model, &data, &out));
    for want in ["plan:", "steps", "memory estimate", "weights", "optimizer state", "activations"] {
        assert!(log.contains(want), "missing {want}: {log}");
    }
    assert!(!out.join("metrics.jsonl").exists() && !out.join("config.toml").exists());
}

#[test]
fn bad_arguments_fail_cleanly() {
    let (d, model, data) = setup("bad");
    let out = d.join("out");
    for (args, want) in [
        (vec!["--learning-rate=-1"], "learning_rate"),
        (vec!["--method", "dora"], "dora"),
        (vec!["--target-modules", "q_proj,attn"], "attn"),
        (vec!["--quantize", "q4_0"], "quantize"),
        (vec!["--backend", "tpu"], "tpu"),
        (vec!["--max-seq-len", "3"], "max-seq-len"),
        (vec!["--resume"], "no checkpoint"),
    ] {
        let o = run(&args, &model, &data, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let o = kiln().args(["train", "--data", "/nonexistent.jsonl", "--model"]).arg(&model).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("/nonexistent.jsonl"), "{err}");
}

fn fails(o: &Output, wants: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{wants:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in wants {
        assert!(err.contains(w), "missing {w:?}: {err}");
    }
    err
}

#[test]
fn every_number_is_checked_by_name_and_range() {
    let (d, model, data) = setup("numbers");
    let out = d.join("out");
    for (args, wants) in [
        (vec!["--lora-alpha", "nan"], vec!["--lora-alpha", "NaN", "(0, 1e6]"]),
        (vec!["--epochs", "1e300"], vec!["--epochs", "(0, 1e6]"]),
        (vec!["--learning-rate", "inf"], vec!["--learning-rate", "inf"]),
        (vec!["--lora-dropout", "nan"], vec!["--lora-dropout", "[0, 1)"]),
        (vec!["--max-grad-norm", "inf"], vec!["--max-grad-norm"]),
        // 2^32 × 2^32 wraps a 64-bit product to 0: refused before anything divides by it.
        (vec!["--batch-size", "4294967296", "--grad-accum", "4294967296"], vec!["--batch-size", "1048576"]),
        (vec!["--batch-size", "1048576", "--grad-accum", "1048576"], vec!["tokens per step"]),
        (vec!["--lora-r", "100000000"], vec!["--lora-r", "16777216"]),
    ] {
        fails(&run(&args, &model, &data, &out), &wants);
    }
    // A number from the config file is reported against the file.
    let f = d.join("bad.toml");
    std::fs::write(&f, "lora_alpha = nan\n").unwrap();
    fails(&run(&["--config", f.to_str().unwrap()], &model, &data, &out), &["bad.toml", "lora_alpha"]);
    assert!(!out.exists(), "a refused configuration creates nothing");
}

#[test]
fn the_plan_comes_before_any_tensor() {
    let (d, model, data) = setup("plan");
    let out = d.join("out");
    // Ten million LoRA ranks on a 64-wide model: about 10^10 parameters. The plan is
    // arithmetic, so the dry run answers at once; the run is refused before loading anything.
    let big = ["--lora-r", "10000000", "--max-seq-len", "64"];
    let t = std::time::Instant::now();
    let log = ok(&run(&[&big[..], &["--dry-run", "--memory-limit-mb", "8192"]].concat(), &model, &data, &out));
    assert!(t.elapsed().as_secs() < 30, "the dry run took {:?}", t.elapsed());
    let n = 10_000_000u64 * 2 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128));
    assert!(log.contains(&format!("{n} trainable parameters")), "{n}: {log}");
    assert!(log.contains("GiB in all") && log.contains("this run would be refused"), "{log}");
    let err = fails(
        &run(&[&big[..], &["--memory-limit-mb", "8192"]].concat(), &model, &data, &out),
        &["estimated peak memory", "nothing was loaded"],
    );
    assert!(!err.contains("memory allocation of"), "{err}");
    assert!(!out.exists(), "a refused plan creates nothing");
    // The plan's count is the trainer's count: a normal run reports the same number.
    let log = ok(&run(&["--dry-run", "--lora-r", "4", "--target-modules", "q_proj,down_proj"], &model, &data, &out));
    assert!(log.contains(&format!("{} trainable parameters", 2 * 4 * ((64 + 64) + (128 + 64)))), "{log}");
}

/// A copy of checkpoint `src` in `dst`.
fn copy_dir(src: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn resume_refuses_another_run_or_a_damaged_checkpoint() {
    let (d, model, data) = setup("resume-checks");
    let out = d.join("out");
    let args = ["--max-steps", "4", "--save-steps", "2", "--batch-size", "2", "--learning-rate", "3e-3"];
    ok(&run(&args, &model, &data, &out));
    let good = out.join("checkpoints/step-2");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("state.json")).unwrap()).unwrap();
    for k in ["base_model", "settings", "data_hash", "checksums", "steps_per_epoch"] {
        assert!(!state[k].is_null(), "state.json records {k}: {state}");
    }
    // The first run's flags, with those in `extra` replaced.
    let resume = |ck: &Path, extra: &[&str], model: &Path| {
        let mut all: Vec<&str> = Vec::new();
        for pair in args.chunks(2) {
            if !extra.contains(&pair[0]) {
                all.extend(pair);
            }
        }
        all.extend(extra);
        all.extend(["--resume", ck.to_str().unwrap()]);
        run(&all, model, &data, &d.join("again"))
    };
    let case = |name: &str, damage: &dyn Fn(&Path)| {
        let ck = d.join(name);
        copy_dir(&good, &ck);
        damage(&ck);
        ck
    };
    // A flipped byte in a tensor's data.
    let ck = case("flipped", &|ck| {
        let p = ck.join("params.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 3;
        b[last] ^= 0x10;
        std::fs::write(&p, b).unwrap();
    });
    fails(&resume(&ck, &[], &model), &["params.safetensors/", "fails its checksum"]);
    // An optimizer tensor renamed (same length, so the file stays valid).
    let rename = |ck: &Path| {
        let p = ck.join("optimizer.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        let at = b.windows(9).position(|w| w == b"\"exp_avg.").unwrap();
        b[at + 7] = b'X';
        std::fs::write(&p, b).unwrap();
    };
    let ck = case("renamed", &rename);
    fails(&resume(&ck, &[], &model), &["exp_avX.", "not one the checkpoint recorded"]);
    // Without checksums (an older checkpoint), the name is still checked against the run.
    let ck = case("renamed-old", &|ck| {
        rename(ck);
        edit_json(&ck.join("state.json"), |o| {
            o.remove("checksums");
        });
    });
    fails(&resume(&ck, &[], &model), &["exp_avX.", "not a moment of a trained parameter"]);
    // A state past its own end.
    let ck = case("step99", &|ck| {
        edit_json(&ck.join("state.json"), |o| {
            o.insert("step".into(), 99.into());
        })
    });
    fails(&resume(&ck, &[], &model), &["state.json", "step 99 of 4"]);
    // Another base model (same shapes, other weights), other targets, another learning rate.
    let other = common::tiny_model(&d.join("other"), 4);
    fails(&resume(&good, &[], &other), &["cannot resume", "base model:", "model.safetensors"]);
    fails(&resume(&good, &["--target-modules", "q_proj,v_proj"], &model), &["target_modules:"]);
    let err = fails(&resume(&good, &["--learning-rate", "1e-3"], &model), &["learning_rate: 0.003"]);
    assert!(err.contains("0.001 now"), "{err}");
    assert!(!d.join("again/config.toml").exists(), "a refused resume writes nothing");
    // The run's length may change: the schedule is re-planned, with a note.
    let log = ok(&resume(&good, &["--max-steps", "5"], &model));
    assert!(log.contains("re-planned") && log.contains("trained 5 steps"), "{log}");
    // A checkpoint from before identities were recorded resumes with a warning.
    let ck = case("old-format", &|ck| {
        edit_json(&ck.join("state.json"), |o| {
            for k in ["base_model", "settings", "data_hash", "checksums", "steps_per_epoch"] {
                o.remove(k);
            }
        })
    });
    let log = ok(&resume(&ck, &[], &model));
    assert!(log.contains("warning:") && log.contains("cannot be checked") && log.contains("resumed at 2"), "{log}");
}

/// Overwrites every value of tensor `name` in a safetensors file with NaN (f32 or 16-bit).
fn poison(file: &Path, name: &str) {
    let mut b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let t = &header[name];
    let (lo, hi) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
    let nan: &[u8] = match t["dtype"].as_str().unwrap() {
        "F32" => &[0x00, 0x00, 0xc0, 0x7f],
        "F16" => &[0x00, 0x7e],
        "BF16" => &[0xc0, 0x7f],
        other => panic!("dtype {other}"),
    };
    for (i, x) in b[8 + n + lo..8 + n + hi].iter_mut().enumerate() {
        *x = nan[i % nan.len()];
    }
    std::fs::write(file, b).unwrap();
}

#[test]
fn a_run_whose_every_step_is_skipped_fails_and_writes_no_adapter() {
    let (d, model, data) = setup("all-skipped");
    poison(&model.join("model.safetensors"), "model.norm.weight");
    let out = d.join("out");
    let o = run(&["--max-steps", "2", "--skip-nonfinite", "true"], &model, &data, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    // A loader that refuses NaN weights stops it earlier; either way nothing passes for a result.
    if err.contains("skipped") {
        assert!(err.contains("every one of the 2 steps was skipped"), "{err}");
    }
    assert!(!out.join("adapter").exists(), "no adapter from a run that trained nothing");
    assert!(!out.join("checkpoints/step-2").exists(), "no final checkpoint a resume would finish from");
}

/// The help text of flag `--name` in `kiln train --help`: from its line to the next flag's,
/// whitespace collapsed (clap may wrap a line).
fn flag_help(help: &str, name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let mut lines = help.lines().skip_while(|l| {
        let l = l.trim_start();
        !(l == flag || l.starts_with(&format!("{flag} ")))
    });
    let first = lines.next()?;
    let rest = lines.take_while(|l| !l.trim_start().starts_with('-'));
    let text: Vec<&str> = std::iter::once(first).chain(rest).flat_map(str::split_whitespace).collect();
    Some(text.join(" "))
}

#[test]
fn help_shows_the_defaults_of_the_configuration() {
    let out = kiln().args(["train", "--help"]).output().unwrap();
    let help = ok(&out);
    let defaults = serde_json::to_value(kiln::train::TrainConfig::default()).unwrap();
    let mut checked = 0;
    for (key, want) in defaults.as_object().unwrap() {
        let text = flag_help(&help, &key.replace('_', "-")).unwrap_or_else(|| panic!("no --{key} in: {help}"));
        let shown: Vec<&str> = text.split("[default: ").skip(1).map(|s| s.split(']').next().unwrap()).collect();
        assert!(shown.len() <= 1, "--{key}: more than one default: {text}");
        let shown = shown.first().copied();
        let value = |what: &str| shown.unwrap_or_else(|| panic!("--{key}: no default shown, {what} wanted: {text}"));
        match want {
            serde_json::Value::Number(n) => assert_eq!(value("a number").parse::<f64>().ok(), n.as_f64(), "--{key}"),
            serde_json::Value::Bool(b) => assert_eq!(value("a bool"), b.to_string(), "--{key}"),
            serde_json::Value::String(s) if !s.is_empty() => assert_eq!(value(s), s, "--{key}"),
            // Left open by the configuration (no model, the model's context, no tokens to add):
            // described in words where the help says anything.
            _ => {
                if let Some(s) = shown {
                    assert!(s.contains(' ') || s == "none", "--{key}: a default the configuration does not have: {s}");
                }
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked >= 38, "only {checked} settings with a default");
    // The flags that change how the run is made, not what it trains, have no setting.
    for flag in ["config", "dry-run", "resume", "overwrite", "device"] {
        assert!(flag_help(&help, flag).is_some_and(|t| !t.contains("[default:")), "--{flag}");
    }
}
