//! `kiln train` end to end on a small random model with the fixture tokenizer: the outputs of a
//! run, a resume from its checkpoint, the dry-run plan, and bad arguments failing cleanly.

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
    kiln()
        .arg("train")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
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
