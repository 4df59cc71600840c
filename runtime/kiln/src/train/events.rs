//! What a run reports in process: the events of the loop as it goes (to a progress bar),
//! what one [`super::Trainer::step`] did, an evaluation, and the summary of a finished run.
//! (`metrics.jsonl` holds the records of [`super::metrics`].)

use std::path::Path;

use super::metrics::{EvalLog, SkipLog, StepLog};
use super::pref::PrefStats;

/// What the loop (and [`super::run`] around it) reports as it goes.
pub enum Event<'a> {
    /// A line worth showing before or between steps: the plan, a tokenizer or resume note.
    Note(&'a str),
    /// Training starts: `total` optimizer steps in all (a resumed run has taken some).
    Start {
        total: usize,
    },
    Step(&'a StepLog),
    /// Held-out loss, and the generation metrics when `eval_metrics` asks for them.
    Eval {
        step: usize,
        loss: f64,
        scores: Option<&'a crate::eval::Scores>,
        /// Preference runs: rewards and reward accuracy on the held-out pairs.
        pref: Option<&'a PrefStats>,
    },
    /// Reference log-probabilities computed so far (`precompute_ref`).
    Reference {
        done: usize,
        total: usize,
    },
    Saved {
        step: usize,
        path: &'a Path,
    },
    /// A step skipped for a non-finite loss or gradient.
    Skipped {
        step: usize,
        reason: &'a str,
    },
}

/// What [`Trainer::step`] did.
#[derive(Clone, Debug)]
pub enum Stepped {
    /// The update was applied.
    Applied(StepLog),
    /// Nothing applied: the loss or a gradient was not finite (`skip_nonfinite`).
    Skipped(SkipLog),
}

/// An evaluation by [`Trainer::evaluate_logged`]: its metrics record and what it was made of.
pub struct Evaluation {
    pub log: EvalLog,
    pub pref: Option<PrefStats>,
    pub scores: Option<crate::eval::Scores>,
}

/// What a finished run measured.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: usize,
    pub secs: f64,
    pub tokens: usize,
    pub losses: Vec<(usize, f64)>,
    pub evals: Vec<(usize, f64)>,
    pub best_eval: Option<(usize, f64)>,
    pub resumed_from: Option<usize>,
    /// Steps skipped for a non-finite loss or gradient (`skip_nonfinite`).
    pub skipped: Vec<usize>,
    /// Stopped early by the stop flag (Ctrl-C), after saving a checkpoint.
    pub interrupted: bool,
    /// Preference runs: held-out reward accuracy by step.
    pub eval_rewards: Vec<(usize, f64)>,
}
