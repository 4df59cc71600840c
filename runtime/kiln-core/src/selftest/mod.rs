//! The op parity suite (the ggml test-backend-ops idea): every op's forward and backward
//! kernels on a backend against a reference in f64 — the CPU backend run on the inputs widened
//! to f64, or a closed form written in the table ([`Case::with_reference`]: AdamW and 8-bit
//! AdamW) — on fresh random inputs at several shapes including ragged ones. Tolerances
//! (`compare.rs`) follow what the backend computes ([`Backend::compute_dtype`]), not the
//! inputs' label: ‖out−ref‖/‖ref‖ ≤ 1e-5 for f32 arithmetic and ≤ 1e-2 for 16-bit arithmetic,
//! plus |out−ref| ≤ atol·max|ref| + eps·|ref| elementwise, each with an absolute floor stated
//! per op; NaN or infinity on either side fails. A case a backend does not support is reported
//! as skipped with the reason, never as passed, and a parity run fails on any skip that is not
//! on its backend's allow-list ([`Report::verify`], [`CPU_SKIPS`]); a case whose inputs could
//! not be built fails.
//!
//! The cases of an op family are built by `<family>_cases` in this folder's `<family>.rs`, each
//! from its own random stream, so a run narrowed to some ops ([`Filter`], `KILN_SELFTEST_OP`,
//! `kiln selftest --op`) sees the inputs of a full run. Each variant pass of a backend draws
//! its own inputs ([`run_seeded`], [`seeds_for`]). The same table runs in `cargo test` (each
//! backend's parity test) and in `kiln selftest`; [`coverage`] checks that every op has cases
//! that run on a backend or is listed as not running there.

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

/// A closed-form reference of a case (from its inputs as built, in f64 arithmetic), used instead
/// of the CPU backend where the CPU would be compared with itself (the optimizer rows).
pub type Reference = fn(&[Tensor]) -> crate::Result<Vec<Tensor>>;

/// What a case needs of a backend beyond [`Backend::supports`] (an optional kernel such as
/// [`Backend::has_adamw8`]): `Err(why)` skips the case there with that reason.
pub type Needs = fn(&dyn Backend) -> Result<(), String>;

/// Whether a backend takes 16-bit activations (the mixed-precision rows of a family whose
/// dtype label names the weights, as the linear layer's does): as its elementwise ops do.
fn act16(be: &dyn Backend) -> Result<(), String> {
    match be.supports(Op::Add, DType::BF16) {
        Support::Yes => Ok(()),
        Support::No(why) => Err(format!("16-bit activations: {why}")),
    }
}

/// One row of the table: an op at a shape and dtype, its inputs, and what to run.
pub struct Case {
    /// The op under test (for `Backend::supports`, filters and coverage).
    pub op: Op,
    /// Shown in reports.
    pub name: String,
    /// dtype of the inputs under test (weights for the linear ops).
    dtype: DType,
    /// The inputs, or why they could not be built (a quantizer that failed): such a case fails
    /// with that error wherever it runs, so it can never vanish from a report.
    inputs: Result<Vec<Tensor>, String>,
    run: Run,
    /// `None`: the CPU backend running `run` on the inputs widened to f64.
    reference: Option<Reference>,
    needs: Option<Needs>,
    /// The last `codes` outputs are integer codes (8-bit optimizer state), compared with the
    /// reference's unrounded code values: each must be the nearest integer.
    codes: usize,
}

impl Case {
    fn new(op: Op, name: impl Into<String>, dtype: DType, inputs: Vec<Tensor>, run: Run) -> Case {
        Case::built(op, name, dtype, Ok(inputs), run)
    }
    /// A case whose inputs may have failed to build (the error then fails the case).
    fn built(op: Op, name: impl Into<String>, dtype: DType, inputs: Result<Vec<Tensor>, String>, run: Run) -> Case {
        Case { op, name: name.into(), dtype, inputs, run, reference: None, needs: None, codes: 0 }
    }
    /// Compares against `reference` (closed form, f64) instead of the CPU backend in f64.
    pub fn with_reference(mut self, reference: Reference) -> Case {
        self.reference = Some(reference);
        self
    }
    /// Skips the case where `needs` says the backend lacks what it runs.
    fn with_needs(mut self, needs: Needs) -> Case {
        self.needs = Some(needs);
        self
    }
    /// The last `n` outputs are integer codes (see the `codes` field).
    fn with_codes(mut self, n: usize) -> Case {
        self.codes = n;
        self
    }
    /// The dtype whose support the case needs.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Why the case does not run on `be` (`None`: it runs).
    pub fn skip_reason(&self, be: &dyn Backend) -> Option<String> {
        if let Support::No(why) = be.supports(self.op, self.dtype) {
            return Some(why);
        }
        self.needs.and_then(|n| n(be).err())
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

/// The number of cases one seed's table has (every family, every op): a run of the whole table
/// over `s` seeds reports `s · TABLE_CASES` cases, passed or skipped.
pub const TABLE_CASES: usize = 135;

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

/// The cases the CPU backend skips, `(pattern, reason)` as [`Report::verify`] takes them
/// (`kiln_cuda::PARITY_SKIPS` and `kiln_wgpu::PARITY_SKIPS` are the GPU backends' lists): every
/// entry is reviewed, and a skip not on its backend's list fails the parity run.
pub const CPU_SKIPS: &[(&str, &str)] = &[(
    "adamw8 ",
    "no 8-bit AdamW kernel (has_adamw8 is false): the trainer keeps 8-bit moments on the host and steps them with adamw_step",
)];

/// What a suite run found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    /// `(case, why)` for cases the backend does not support.
    pub skipped: Vec<(String, String)>,
    /// `(case, what failed)`.
    pub failed: Vec<(String, String)>,
}

impl Report {
    /// Ok only when no case failed, every skipped case's name contains the pattern of an entry
    /// of `allowed` (`(pattern, reason)`, the reason non-empty: the backend's reviewed list of
    /// what does not run there), and `expected` cases ran or were skipped. The error lists each
    /// problem: the failed cases, the unlisted skips with their reasons, a wrong count.
    pub fn verify(&self, expected: usize, allowed: &[(&str, &str)]) -> Result<(), String> {
        let mut problems: Vec<String> = Vec::new();
        for (pat, why) in allowed {
            if pat.trim().is_empty() || why.trim().is_empty() {
                problems.push(format!("allow-list entry ({pat:?}, {why:?}): a pattern and a reason are both needed"));
            }
        }
        let listed = |case: &str| {
            allowed.iter().any(|(pat, why)| !pat.trim().is_empty() && !why.trim().is_empty() && case.contains(pat))
        };
        for (case, what) in &self.failed {
            problems.push(format!("FAILED {case}: {what}"));
        }
        for (case, why) in self.skipped.iter().filter(|(c, _)| !listed(c)) {
            problems.push(format!("SKIPPED (not on the allow-list) {case}: {why}"));
        }
        let ran = self.passed.len() + self.skipped.len();
        if ran != expected {
            problems.push(format!(
                "{ran} cases ran ({} passed, {} skipped, {} failed); expected {expected} passed or skipped",
                self.passed.len(),
                self.skipped.len(),
                self.failed.len()
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }
}

/// The seeds of a plain run.
pub const DEFAULT_SEEDS: [u64; 2] = [1, 2];

/// Two seeds derived from `label` (FNV-1a of it), so each variant pass of a backend (a GEMM
/// variant, a precision, a configuration) draws inputs of its own: a pass that leaves an output
/// unwritten cannot inherit the right answer from another pass on the same inputs.
pub fn seeds_for(label: &str) -> [u64; 2] {
    let h = label.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
    [h, h.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15]
}

/// Runs the table (seeds 1 and 2) on `be` against the f64 reference, narrowed to the ops
/// `KILN_SELFTEST_OP` names when it is set (a name it does not know is a failure); `on` sees
/// each case's outcome as it finishes (`None` passed, `Some(msg)` skipped or failed).
pub fn run(be: &dyn Backend, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_seeded(be, &DEFAULT_SEEDS, on)
}

/// [`run`] on the inputs of `seeds` (one table per seed; see [`seeds_for`]).
pub fn run_seeded(be: &dyn Backend, seeds: &[u64], on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    match Filter::from_env() {
        Ok(f) => run_pass(be, seeds, &f, &|_| true, on),
        Err(e) => {
            on(FILTER_ENV, Some(&e));
            Report { failed: vec![(FILTER_ENV.into(), e)], ..Report::default() }
        }
    }
}

/// [`run`] over the ops `filter` accepts.
pub fn run_filtered(be: &dyn Backend, filter: &Filter, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_pass(be, &DEFAULT_SEEDS, filter, &|_| true, on)
}

/// [`run`] over the cases `keep` accepts, whatever `KILN_SELFTEST_OP` says (a kernel variant
/// checked on the cases that reach it).
pub fn run_where(be: &dyn Backend, keep: &dyn Fn(&Case) -> bool, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_pass(be, &DEFAULT_SEEDS, &Filter::all(), keep, on)
}

/// The general run: the cases of each of `seeds` that `filter` and `keep` accept.
pub fn run_pass(
    be: &dyn Backend,
    seeds: &[u64],
    filter: &Filter,
    keep: &dyn Fn(&Case) -> bool,
    on: &mut dyn FnMut(&str, Option<&str>),
) -> Report {
    let mut rep = Report::default();
    for &seed in seeds {
        run_cases(be, cases_of(seed, filter).into_iter().filter(|c| keep(c)), &mut rep, on);
    }
    rep
}

/// Runs `cases` on `be`, adding their outcomes to `rep`.
fn run_cases(
    be: &dyn Backend,
    cases: impl Iterator<Item = Case>,
    rep: &mut Report,
    on: &mut dyn FnMut(&str, Option<&str>),
) {
    for case in cases {
        let name = format!("{} {}", be.name(), case.name);
        if let Some(why) = case.skip_reason(be) {
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

/// How many cases [`run_pass`] reports (passed, skipped or failed) for these arguments: the
/// count a narrowed run's [`Report::verify`] expects.
pub fn count(seeds: &[u64], filter: &Filter, keep: &dyn Fn(&Case) -> bool) -> usize {
    seeds.iter().map(|&s| cases_of(s, filter).iter().filter(|c| keep(c)).count()).sum()
}

/// Runs one case on `be` and on its reference and compares every output.
fn check(be: &dyn Backend, case: &Case, name: &str) -> Result<(), String> {
    let inputs = case.inputs.as_ref().map_err(|e| format!("{name}: building the inputs: {e}"))?;
    let up = inputs.iter().map(|t| be.upload(t)).collect::<crate::Result<Vec<_>>>().map_err(|e| e.to_string())?;
    let got = (case.run)(be, &up).map_err(|e| format!("{name}: {e}"))?;
    let want = match case.reference {
        Some(reference) => reference(inputs),
        None => (case.run)(&CpuBackend, &inputs.iter().map(compare::f64_of).collect::<Vec<_>>()),
    }
    .map_err(|e| format!("{name}: reference: {e}"))?;
    // A backend returning fewer outputs than the reference must not pass on the ones it has.
    if got.len() != want.len() {
        return Err(format!("{name}: {} outputs, the reference has {}", got.len(), want.len()));
    }
    let computed = be.compute_dtype(case.op, case.dtype);
    let t = compare::tol(case.op, computed);
    let first_code = got.len().saturating_sub(case.codes);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let what = format!("{name} output {i}");
        // An output in a 16-bit type (the mixed-precision path's activations) is held to that
        // type's rounding, or to bf16's where the arithmetic rounds to bf16 (the looser);
        // casts stay exact.
        let t16 = match g.dtype() {
            _ if computed == DType::BF16 => t,
            d @ (DType::BF16 | DType::F16) if case.op != Op::Cast => compare::tol(case.op, d),
            _ => t,
        };
        if i >= first_code { compare::codes(&what, g, w)? } else { compare::compare(&what, g, w, &t16)? }
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
        let rows: Vec<&Case> = all.iter().filter(|c| c.op == op).collect();
        let runs = rows.iter().filter(|c| c.skip_reason(be).is_none()).count();
        let name = op.name();
        match not_here.iter().find(|(o, _)| *o == op) {
            _ if rows.is_empty() => problems.push(format!("{name}: no parity case (add one to {}_cases)", op.family())),
            Some((_, why)) if why.trim().is_empty() => problems.push(format!("{name}: listed without a reason")),
            Some((_, why)) if runs > 0 => problems.push(format!(
                "{name}: listed as not on {} ({why}), but {runs} of its {} cases run there",
                be.name(),
                rows.len()
            )),
            None if runs == 0 => problems.push(format!(
                "{name}: none of its {} cases runs on {} (support it, or list it as not on this backend with the reason)",
                rows.len(),
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

/// A standard normal `[n, k]` matrix block-quantized as `ty`, or the quantizer's error (the
/// case built on it then fails with it).
fn quantized(rng: &mut Rng, ty: crate::quant::GgmlType, n: usize, k: usize) -> Result<Tensor, String> {
    randn(rng, &[n, k], DType::F32)
        .to_vec_f32()
        .and_then(|v| crate::quant::quantize(ty, &v))
        .and_then(|b| Tensor::from_quant_bytes(b, ty, [n, k]))
        .map_err(|e| format!("quantizing {n}x{k} as {}: {e}", ty.name()))
}

/// An output a kernel must return.
fn some(t: Option<Tensor>, what: &str) -> crate::Result<Tensor> {
    t.ok_or_else(|| crate::Error::Msg(what.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType as G;

    /// A quantizer that fails makes a failed case with its error, never a missing one.
    #[test]
    fn a_quantizer_failure_is_a_failed_case() {
        let mut r = rng(1, "test");
        // Q4_K needs rows of whole 256-value super-blocks.
        let bad = quantized(&mut r, G::Q4K, 3, 100);
        let e = bad.as_ref().err().cloned().expect("a 100-value row cannot be Q4_K");
        assert!(e.contains("3x100"), "{e}");
        let case = Case::built(Op::Cast, "dequantize bad", DType::Quant(G::Q4K), bad.map(|w| vec![w]), |be, x| {
            Ok(vec![be.cast(&x[0], DType::F32)?])
        });
        let mut rep = Report::default();
        run_cases(&CpuBackend, std::iter::once(case), &mut rep, &mut |_, _| {});
        assert!(rep.passed.is_empty() && rep.skipped.is_empty(), "{rep:?}");
        assert_eq!(rep.failed.len(), 1, "{rep:?}");
        assert!(rep.failed[0].1.contains("building the inputs") && rep.failed[0].1.contains(&e), "{rep:?}");
        assert!(rep.verify(1, &[]).unwrap_err().contains("FAILED cpu dequantize bad"));
    }

    /// `verify` passes only a clean report of the expected size whose skips are all listed with
    /// a reason, and names each problem.
    #[test]
    fn verify_names_failures_unlisted_skips_and_wrong_counts() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let skip = |c: &str, why: &str| (c.to_string(), why.to_string());
        let ok =
            Report { passed: s(&["cpu a", "cpu b"]), skipped: vec![skip("cpu adamw8 5", "no kernel")], failed: vec![] };
        assert_eq!(ok.verify(3, &[("adamw8 ", "no 8-bit kernel")]), Ok(()));
        let e = ok.verify(3, &[]).unwrap_err();
        assert!(e.contains("not on the allow-list") && e.contains("cpu adamw8 5: no kernel"), "{e}");
        let e = ok.verify(3, &[("adamw8 ", " ")]).unwrap_err();
        assert!(e.contains("a pattern and a reason are both needed") && e.contains("not on the allow-list"), "{e}");
        let e = ok.verify(4, &[("adamw8 ", "no 8-bit kernel")]).unwrap_err();
        assert!(e.contains("3 cases ran") && e.contains("expected 4"), "{e}");
        let bad = Report { failed: vec![skip("cpu c", "element 3: 1 vs 2")], ..ok };
        let e = bad.verify(3, &[("adamw8 ", "no 8-bit kernel")]).unwrap_err();
        assert!(e.contains("FAILED cpu c: element 3"), "{e}");
    }

    /// Variant labels get seeds of their own, distinct from each other and from a plain run's.
    #[test]
    fn seeds_differ_between_labels() {
        let labels = ["cuda-emu v1_naive", "cuda-emu v2_tiled", "cuda-emu v3_mma", "wgpu v2 f32", "wgpu v3 f16"];
        let mut all: Vec<u64> = DEFAULT_SEEDS.to_vec();
        for l in labels {
            assert_eq!(seeds_for(l), seeds_for(l), "deterministic");
            all.extend(seeds_for(l));
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "every pass draws its own inputs");
    }
}
