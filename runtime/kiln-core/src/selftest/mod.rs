//! The op parity suite (the ggml test-backend-ops idea): every op's forward and backward
//! kernels on a backend against the CPU reference computed in f64, on fresh random inputs at
//! several shapes including ragged ones. Tolerances (DESIGN, in `compare.rs`):
//! ‖out−ref‖/‖ref‖ ≤ 1e-5 for f32 and ≤ 1e-2 for bf16/f16 inputs, plus |out−ref| ≤ atol +
//! |ref|·eps elementwise; NaN never passes. A case a backend does not support is reported as
//! skipped with the reason, never as passed.
//!
//! The cases of an op family are built by `<family>_cases` in this folder's `<family>.rs`, each
//! from its own random stream, so a run narrowed to some ops ([`Filter`], `KILN_SELFTEST_OP`,
//! `kiln selftest --op`) sees the inputs of a full run. The same table runs in `cargo test`
//! (each backend's parity test) and in `kiln selftest`; [`coverage`] checks that every op has
//! cases that run on a backend or is listed as not running there.

mod attention;
mod compare;
mod elementwise;
mod embedding;
mod glu;
mod loss;
mod matmul;
mod norm;
mod optim;
mod rope;

pub use attention::attention_cases;
pub use elementwise::elementwise_cases;
pub use embedding::embedding_cases;
pub use glu::glu_cases;
pub use loss::loss_cases;
pub use matmul::matmul_cases;
pub use norm::norm_cases;
pub use optim::optim_cases;
pub use rope::rope_cases;

use crate::backend::{Backend, Op, Support};
use crate::rng::Rng;
use crate::{CpuBackend, DType, Tensor};

/// Runs a case's ops on a backend; an error is a failure of that backend.
pub type Run = fn(&dyn Backend, &[Tensor]) -> crate::Result<Vec<Tensor>>;

/// One row of the table: an op at a shape and dtype, its inputs, and what to run.
pub struct Case {
    /// The op under test (for `Backend::supports`, filters and coverage).
    pub op: Op,
    /// Shown in reports.
    pub name: String,
    /// dtype of the inputs under test (weights for the linear ops).
    dtype: DType,
    inputs: Vec<Tensor>,
    run: Run,
}

impl Case {
    fn new(op: Op, name: impl Into<String>, dtype: DType, inputs: Vec<Tensor>, run: Run) -> Case {
        Case { op, name: name.into(), dtype, inputs, run }
    }
    /// The dtype whose support the case needs.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Builds a family's cases on fresh random inputs from a seed.
pub type Build = fn(u64) -> Vec<Case>;

/// Every family's stem (`Op::family`) and the builder of its cases, in the order they run.
pub const FAMILIES: [(&str, Build); 9] = [
    ("elementwise", elementwise_cases),
    ("glu", glu_cases),
    ("matmul", matmul_cases),
    ("norm", norm_cases),
    ("rope", rope_cases),
    ("attention", attention_cases),
    ("embedding", embedding_cases),
    ("loss", loss_cases),
    ("optim", optim_cases),
];

/// The table on fresh random inputs from `seed`.
pub fn cases(seed: u64) -> Vec<Case> {
    cases_of(seed, &Filter::all())
}

/// The cases of the ops `filter` accepts (only their families are built).
pub fn cases_of(seed: u64, filter: &Filter) -> Vec<Case> {
    FAMILIES
        .iter()
        .filter(|(fam, _)| Op::ALL.iter().any(|op| op.family() == *fam && filter.accepts(*op)))
        .flat_map(|(_, build)| build(seed))
        .filter(|c| filter.accepts(c.op))
        .collect()
}

/// The environment variable that narrows [`run`] to some ops (the syntax of [`Filter::parse`]).
pub const FILTER_ENV: &str = "KILN_SELFTEST_OP";

/// Which ops' cases run: all, or those named by op (`Op::name`, e.g. `rms_norm`) or by
/// family (`Op::family`, e.g. `glu`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `None`: every op.
    ops: Option<Vec<Op>>,
}

impl Filter {
    /// Every op.
    pub fn all() -> Filter {
        Filter { ops: None }
    }
    /// Comma-separated op or family names; an empty string is every op. An unknown name is an
    /// error that lists the names.
    pub fn parse(s: &str) -> Result<Filter, String> {
        let mut ops: Vec<Op> = Vec::new();
        let mut any = false;
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            any = true;
            let named: Vec<Op> = match term.parse::<Op>() {
                Ok(op) => vec![op],
                Err(_) => Op::ALL.into_iter().filter(|op| op.family() == term).collect(),
            };
            if named.is_empty() {
                let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                let fams: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
                return Err(format!(
                    "unknown op '{term}': ops are {}; families are {}",
                    names.join(", "),
                    fams.join(", ")
                ));
            }
            for op in named {
                if !ops.contains(&op) {
                    ops.push(op);
                }
            }
        }
        Ok(Filter { ops: any.then_some(ops) })
    }
    /// The filter `KILN_SELFTEST_OP` asks for (every op when it is unset).
    pub fn from_env() -> Result<Filter, String> {
        match std::env::var(FILTER_ENV) {
            Ok(s) => Filter::parse(&s).map_err(|e| format!("{FILTER_ENV}: {e}")),
            Err(std::env::VarError::NotPresent) => Ok(Filter::all()),
            Err(e) => Err(format!("{FILTER_ENV}: {e}")),
        }
    }
    /// Whether `op`'s cases run.
    pub fn accepts(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }
}

/// What a suite run found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    /// `(case, why)` for cases the backend does not support.
    pub skipped: Vec<(String, String)>,
    /// `(case, what failed)`.
    pub failed: Vec<(String, String)>,
}

/// Runs the table (seeds 1 and 2) on `be` against the f64 CPU reference, narrowed to the ops
/// `KILN_SELFTEST_OP` names when it is set (a name it does not know is a failure); `on` sees
/// each case's outcome as it finishes (`None` passed, `Some(msg)` skipped or failed).
pub fn run(be: &dyn Backend, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    match Filter::from_env() {
        Ok(f) => run_filtered(be, &f, on),
        Err(e) => {
            on(FILTER_ENV, Some(&e));
            Report { failed: vec![(FILTER_ENV.into(), e)], ..Report::default() }
        }
    }
}

/// [`run`] over the ops `filter` accepts.
pub fn run_filtered(be: &dyn Backend, filter: &Filter, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_cases(be, filter, &|_| true, on)
}

/// [`run`] over the cases `keep` accepts, whatever `KILN_SELFTEST_OP` says (a kernel variant
/// checked on the cases that reach it).
pub fn run_where(be: &dyn Backend, keep: &dyn Fn(&Case) -> bool, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_cases(be, &Filter::all(), keep, on)
}

fn run_cases(
    be: &dyn Backend,
    filter: &Filter,
    keep: &dyn Fn(&Case) -> bool,
    on: &mut dyn FnMut(&str, Option<&str>),
) -> Report {
    let mut rep = Report::default();
    for seed in [1, 2] {
        for case in cases_of(seed, filter).into_iter().filter(|c| keep(c)) {
            let name = format!("{} {}", be.name(), case.name);
            if let Support::No(why) = be.supports(case.op, case.dtype) {
                on(&name, Some(&format!("skipped: {why}")));
                rep.skipped.push((name, why));
                continue;
            }
            match check(be, &case, &name) {
                Ok(()) => {
                    on(&name, None);
                    rep.passed.push(name);
                }
                Err(e) => {
                    on(&name, Some(&e));
                    rep.failed.push((name, e));
                }
            }
        }
    }
    rep
}

/// Runs one case on `be` and on the f64 CPU reference and compares every output.
fn check(be: &dyn Backend, case: &Case, name: &str) -> Result<(), String> {
    let up = case.inputs.iter().map(|t| be.upload(t)).collect::<crate::Result<Vec<_>>>().map_err(|e| e.to_string())?;
    let got = (case.run)(be, &up).map_err(|e| format!("{name}: {e}"))?;
    let r64: Vec<Tensor> = case.inputs.iter().map(compare::f64_of).collect();
    let want = (case.run)(&CpuBackend, &r64).map_err(|e| format!("{name}: reference: {e}"))?;
    // A backend returning fewer outputs than the reference must not pass on the ones it has.
    if got.len() != want.len() {
        return Err(format!("{name}: {} outputs, the reference has {}", got.len(), want.len()));
    }
    let t = compare::tol(be.compute_dtype(case.op, case.dtype));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        compare::compare(&format!("{name} output {i}"), g, w, &t)?;
    }
    Ok(())
}

/// Checks that every op of [`Op::ALL`] has parity cases and that some of them run on `be`, or
/// that the op is in `not_here` (with the reason it does not run there), in which case none of
/// its cases may run there. The error lists every op that breaks this.
pub fn coverage(be: &dyn Backend, not_here: &[(Op, &str)]) -> Result<(), String> {
    let all = cases(1);
    let mut problems = Vec::new();
    for op in Op::ALL {
        let dtypes: Vec<DType> = all.iter().filter(|c| c.op == op).map(|c| c.dtype).collect();
        let runs = dtypes.iter().filter(|&&d| be.supports(op, d) == Support::Yes).count();
        let name = op.name();
        match not_here.iter().find(|(o, _)| *o == op) {
            _ if dtypes.is_empty() => problems.push(format!("{name}: no parity case (add one to {}_cases)", op.family())),
            Some((_, why)) if why.trim().is_empty() => problems.push(format!("{name}: listed without a reason")),
            Some((_, why)) if runs > 0 => problems.push(format!(
                "{name}: listed as not on {} ({why}), but {runs} of its {} cases run there",
                be.name(),
                dtypes.len()
            )),
            None if runs == 0 => problems.push(format!(
                "{name}: none of its {} cases runs on {} (support it, or list it as not on this backend with the reason)",
                dtypes.len(),
                be.name()
            )),
            _ => {}
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// A family's random stream: the seed mixed with the family's stem (FNV-1a), so each family's
/// inputs do not depend on which other families are built.
fn rng(seed: u64, family: &str) -> Rng {
    Rng::new(family.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3)))
}

/// Standard normal values in `dtype`.
fn randn(rng: &mut Rng, dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, dims.to_vec()).unwrap().to_dtype(dtype).unwrap()
}

/// Standard normal f32 tensors of each of `dims`.
fn f32s(rng: &mut Rng, dims: &[&[usize]]) -> Vec<Tensor> {
    dims.iter().map(|d| randn(rng, d, DType::F32)).collect()
}

/// An i32 tensor (ids, positions, targets, segments).
fn i32s(v: Vec<i32>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims.to_vec()).unwrap()
}

/// A standard normal `[n, k]` matrix block-quantized as `ty` (`None` when `ty` cannot hold it).
fn quantized(rng: &mut Rng, ty: crate::quant::GgmlType, n: usize, k: usize) -> Option<Tensor> {
    randn(rng, &[n, k], DType::F32)
        .to_vec_f32()
        .and_then(|v| crate::quant::quantize(ty, &v))
        .and_then(|b| Tensor::from_quant_bytes(b, ty, [n, k]))
        .ok()
}

/// An output a kernel must return.
fn some(t: Option<Tensor>, what: &str) -> crate::Result<Tensor> {
    t.ok_or_else(|| crate::Error::Msg(what.into()))
}
