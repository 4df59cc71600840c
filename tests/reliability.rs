//! Reliability of `kiln train` as a process: killed with SIGKILL at random moments (during
//! steps and checkpoint writes) and resumed, it ends with exactly the losses of an
//! uninterrupted run and every checkpoint on disk loads; Ctrl-C (SIGINT), SIGTERM (kill,
//! SLURM) and SIGHUP (a closed terminal) save a checkpoint and exit with 128+n; a non-finite
//! loss stops the run naming the step (or is skipped with --skip-nonfinite).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("reliability-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 4);
    let data = d.join("data.jsonl");
    let rows: String = (0..64)
        .map(|i| {
            let c = format!(
                "the {} pot number {i} is glazed {}",
                ["red", "blue", "green"][i % 3],
                "and fired ".repeat(i % 5)
            );
            format!("{}\n", serde_json::json!({"prompt": format!("describe pot {i}"), "completion": c}))
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    (d, m, data)
}

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = common::kiln_train(model, data, out);
    c.args(["--batch-size", "4", "--eval-split", "0", "--max-seq-len", "256", "--lora-r", "8", "--seed", "3"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// (step, loss) of the train records in `OUT/metrics.jsonl`. Read while the run writes, so a
/// last line without its newline is a record still being written and is left out.
fn losses(out: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let whole = text.rfind('\n').map_or("", |i| &text[..i]);
    whole
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_identical_losses() {
    let (d, model, data) = setup("kill");
    // About 20 ms a step: kills land in start-up, steps and checkpoint writes alike.
    let args = ["--max-steps", "60", "--save-steps", "1", "--save-total-limit", "3", "--learning-rate", "2e-3"];
    let clean = d.join("clean");
    let o = train(&model, &data, &clean, &args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = losses(&clean);
    assert_eq!(want.len(), 60);

    let out = d.join("killed");
    let mut rng = kiln::core::rng::Rng::new(11);
    let (mut kills, mut resumed_after_kill) = (0, 0);
    let t0 = Instant::now();
    loop {
        let has_ck = !kiln::train::checkpoint::list(&out).is_empty();
        let mut cmd = train(&model, &data, &out, &args);
        if has_ck {
            cmd.arg("--resume");
            resumed_after_kill += usize::from(kills > 0);
        }
        let mut child = cmd.spawn().unwrap();
        let finish = kills >= 25 || t0.elapsed() > Duration::from_secs(120);
        if !finish {
            std::thread::sleep(Duration::from_millis(10 + rng.below(300) as u64));
        }
        if !finish && child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            // Whatever the moment, every checkpoint listed loads whole.
            for (step, p) in kiln::train::checkpoint::list(&out) {
                let ck = kiln::train::checkpoint::load(&p).unwrap_or_else(|e| panic!("step-{step} after a kill: {e}"));
                assert_eq!(ck.state.step, step);
                assert!(ck.params.contains("model.layers.0.self_attn.q_proj.lora_A.weight"));
            }
            continue;
        }
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        break;
    }
    eprintln!("{kills} SIGKILLs, {resumed_after_kill} resumes after a kill");
    assert!(
        kills >= 10 && resumed_after_kill >= 5,
        "{kills} kills, {resumed_after_kill} resumes: too few to mean anything"
    );
    assert_eq!(losses(&out), want, "after {kills} kills the losses differ from the uninterrupted run");
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
}

/// A long run into `out`, returned once it has logged its first three steps (so a signal lands
/// mid-training).
fn train_until_steps(model: &Path, data: &Path, out: &Path) -> std::process::Child {
    let child = train(model, data, out, &["--max-steps", "100000", "--learning-rate", "2e-3"]).spawn().unwrap();
    let t0 = Instant::now();
    while !out.join("metrics.jsonl").is_file() || losses(out).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no training steps within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `kill -SIG` after the first steps: the run finishes its step, saves a checkpoint of it and
/// exits with `code` (128 + the signal's number), releasing its lock; `--resume` continues.
fn signal_saves_a_checkpoint(sig: &str, code: i32) {
    let (d, model, data) = setup(&format!("sig{}", sig.to_lowercase()));
    let out = d.join("run");
    let child = train_until_steps(&model, &data, &out);
    let st = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "SIG{sig}: {err}");
    assert!(
        err.contains("interrupted at step") && err.contains(&format!("SIG{sig}")) && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let cks = kiln::train::checkpoint::list(&out);
    let (step, p) = cks.last().expect("a checkpoint on the signal");
    let ck = kiln::train::checkpoint::load(p).unwrap();
    assert_eq!(ck.state.step, *step);
    assert_eq!(losses(&out).last().unwrap().0 as usize, *step, "the checkpoint is of the last step logged");
    assert!(!out.join(".kiln-lock").exists(), "the lock is released");
    // The same command again is refused: a run is there to resume.
    let o = train(&model, &data, &out, &["--max-steps", "100000", "--learning-rate", "2e-3"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume"), "{err}");
}

#[test]
fn sigint_saves_a_checkpoint_and_exits_130() {
    signal_saves_a_checkpoint("INT", 130);
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    signal_saves_a_checkpoint("TERM", 143);
}

#[test]
fn sighup_saves_a_checkpoint_and_exits_129() {
    signal_saves_a_checkpoint("HUP", 129);
}

#[test]
fn a_second_signal_exits_at_once() {
    let (d, model, data) = setup("second-signal");
    let out = d.join("run");
    let child = train_until_steps(&model, &data, &out);
    // Two signals microseconds apart (shell builtins): the second lands within the step the
    // first asked to finish, and ends the process with its own code. When both are pending
    // together the kernel delivers the lower number first (SIGHUP before SIGTERM), so the
    // second handled may be either: 129 or 143, never after a checkpoint wait.
    let pid = child.id().to_string();
    let st = Command::new("sh").args(["-c", &format!("kill -TERM {pid}; kill -HUP {pid}")]).status().unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(matches!(o.status.code(), Some(129 | 143)), "{:?}: {err}", o.status);
    assert!(!err.contains("interrupted at step") && !err.contains("panicked"), "no checkpoint wait: {err}");
    // Whatever was on disk stays loadable.
    for (step, p) in kiln::train::checkpoint::list(&out) {
        assert_eq!(kiln::train::checkpoint::load(&p).unwrap().state.step, step);
    }
}

#[test]
fn non_finite_losses_stop_the_run_or_are_skipped() {
    let (d, model, data) = setup("nan");
    // A learning rate of 1e6 blows the adapter up within a few steps.
    let o =
        train(&model, &data, &d.join("stop"), &["--max-steps", "30", "--learning-rate", "1e6", "--max-grad-norm", "0"])
            .output()
            .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("training stopped") && err.contains("step "), "{err}");
    assert!(err.contains("the loss is") || err.contains("the gradient of"), "names what was not finite: {err}");
    eprintln!("{}", err.lines().last().unwrap_or(""));
    assert!(!err.contains("panicked"), "{err}");
    let o = train(
        &model,
        &data,
        &d.join("skip"),
        &["--max-steps", "30", "--learning-rate", "1e6", "--max-grad-norm", "0", "--skip-nonfinite", "true"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped for a non-finite loss or gradient"), "{err}");
    let skips = std::fs::read_to_string(d.join("skip/metrics.jsonl")).unwrap().matches("\"kind\":\"skip\"").count();
    assert!(skips > 0, "skips are logged in metrics.jsonl");
    // A skipped step still counts: the run ends with the checkpoint of its last step.
    let last = kiln::train::checkpoint::list(&d.join("skip")).pop().map(|c| c.0);
    assert_eq!(last, Some(30), "checkpoint of the final step");
}

#[test]
fn a_run_that_cannot_fit_is_refused_with_settings_that_would() {
    let (d, model, data) = setup("memory");
    let run = |limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["train", "--max-steps", "2", "--batch-size", "8", "--max-seq-len", "512", "--eval-split", "0"])
            .args(["--memory-limit-mb", limit, "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(d.join("out"))
            .output()
            .unwrap()
    };
    // 20 MiB: the run needs more, but a micro-batch of 1 with accumulation fits.
    let o = run("20");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("exceeds the 20.0 MiB available"), "{err}");
    assert!(err.contains("settings that fit: ") && err.contains("--batch-size 1 --grad-accum 8"), "{err}");
    // 1 MiB: nothing fits.
    let err = String::from_utf8_lossy(&run("1").stderr).into_owned();
    assert!(err.contains("no single setting change fits"), "{err}");
    assert!(!d.join("out/checkpoints").exists(), "nothing trained");
}
