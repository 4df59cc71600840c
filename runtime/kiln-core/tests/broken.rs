//! Deliberately broken backends the op parity table must catch (issue 24's "Verify"): the CPU
//! backend wrapped with one bug at a time (`broken/faulty.rs`) — an AdamW without weight decay,
//! a RoPE off by one position at the end of each sequence, an op left out — runs the whole
//! table, and exactly the cases that reach the bug must fail (or, for the left-out op, the
//! run's verification and the coverage check must name it). The wrapper without a bug passes
//! the table exactly, so the failures are the bugs', not the wrapper's. (The GPU counterparts:
//! wgpu's missed tail tile in `kiln-wgpu/tests/wgpu_parity.rs`, the CUDA emulation's broken
//! kernels in `kiln-cuda/tests/cuda_emu.rs`.)

#[path = "broken/faulty.rs"]
mod faulty;

use std::cell::RefCell;
use std::collections::HashMap;

use faulty::{Fault, Faulty};
use kiln_core::DType;
use kiln_core::backend::Op;
use kiln_core::selftest::{self, CPU_SKIPS, Filter, Report, TABLE_CASES};

/// What one run of the whole table on a faulty backend found, with the backend methods each
/// case called.
struct Outcome {
    report: Report,
    /// Every case, in the order they ran.
    calls: Vec<Row>,
}

/// A case as it ran.
struct Row {
    name: String,
    op: Op,
    dtype: DType,
    /// The backend methods it called.
    calls: Vec<&'static str>,
}

impl Outcome {
    /// The cases that called a method `pick` accepts, sorted (each seed's rows, so names come
    /// twice).
    fn calling(&self, pick: impl Fn(&str) -> bool) -> Vec<String> {
        self.rows(|r| r.calls.iter().any(|m| pick(m)))
    }
    /// The cases of `op`, sorted.
    fn of(&self, op: Op) -> Vec<String> {
        self.rows(|r| r.op == op)
    }
    /// The cases `pick` accepts, sorted.
    fn rows(&self, pick: impl Fn(&Row) -> bool) -> Vec<String> {
        sorted(self.calls.iter().filter(|r| pick(r)).map(|r| &r.name))
    }
    /// The failed cases, sorted.
    fn failed(&self) -> Vec<String> {
        sorted(self.report.failed.iter().map(|(n, _)| n))
    }
}

/// Runs every case of the table (seeds 1 and 2, whatever `KILN_SELFTEST_OP` says) on the CPU
/// backend with `fault`.
fn run(fault: Fault) -> Outcome {
    run_on(Faulty::new(fault))
}

/// [`run`] on `be`.
fn run_on(be: Faulty) -> Outcome {
    // Each case's op by its name in reports.
    let ops: HashMap<String, (Op, DType)> = [1, 2]
        .into_iter()
        .flat_map(selftest::cases)
        .map(|c| (format!("faulty {}", c.name), (c.op, c.dtype())))
        .collect();
    let calls = RefCell::new(Vec::new());
    let t0 = std::time::Instant::now();
    // `on` follows each case, so the calls taken there are that case's.
    let report = selftest::run_filtered(&be, &Filter::all(), &mut |name, _| {
        let (op, dtype) = *ops.get(name).unwrap_or_else(|| panic!("{name}: not a case of the table"));
        calls.borrow_mut().push(Row { name: name.to_string(), op, dtype, calls: be.take_calls() })
    });
    eprintln!(
        "{:?}{}: {} passed, {} failed, {} skipped in {:.2}s",
        be.fault(),
        if be.claims_input_type() { " (claiming to compute in its inputs' type)" } else { "" },
        report.passed.len(),
        report.failed.len(),
        report.skipped.len(),
        t0.elapsed().as_secs_f64()
    );
    Outcome { report, calls: calls.into_inner() }
}

fn sorted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = names.cloned().collect();
    v.sort();
    v
}

/// The number of cases a run of the whole table has (seeds 1 and 2).
const RUN_CASES: usize = 2 * TABLE_CASES;

/// Whether the CPU's allow-list lists `case` (what it skips for a reviewed reason).
fn cpu_skips(case: &str) -> bool {
    CPU_SKIPS.iter().any(|(pat, _)| case.contains(pat))
}

/// The wrapper itself is faithful: without a fault it passes the CPU's verification exactly
/// (every case passes, only the CPU's allowed skips) and its coverage check.
#[test]
fn unbroken_wrapper_passes_exactly() {
    let o = run(Fault::None);
    o.report.verify(RUN_CASES, CPU_SKIPS).unwrap();
    assert_eq!(o.calls.len(), RUN_CASES, "every case reported once");
    selftest::coverage(&Faulty::new(Fault::None), &[]).unwrap();
    // The calls recorded per case are the case's own: the rope rows call rope, no row but
    // attention's calls it.
    let skipped = sorted(o.report.skipped.iter().map(|(n, _)| n));
    for Row { name, op, calls, .. } in &o.calls {
        assert_eq!(calls.is_empty(), skipped.contains(name), "{name}: backend calls {calls:?}");
        let rope = calls.contains(&"rope");
        assert!(rope == (*op == Op::Rope) || *op == Op::Attention, "{name}: {calls:?}");
    }
    assert!(o.calls.iter().any(|r| r.op == Op::Attention && r.calls.contains(&"rope")));
}

/// AdamW without its decoupled weight decay fails every AdamW row that decays (against the
/// rows' closed-form f64 references), and nothing else.
#[test]
fn adamw_without_weight_decay_fails_the_adamw_rows() {
    let o = run(Fault::AdamWWithoutWeightDecay);
    let decaying = o.calling(|m| m.ends_with(" wd"));
    assert!(decaying.len() >= 8, "the AdamW rows with weight decay (both seeds): {decaying:?}");
    let adamw = o.of(Op::AdamW);
    assert!(decaying.iter().all(|n| adamw.contains(n)), "only AdamW rows step AdamW: {decaying:?}");
    assert_eq!(o.failed(), decaying, "{:#?}", o.report.failed);
    for (n, e) in &o.report.failed {
        eprintln!("caught: {e}");
        assert!(e.starts_with(n.as_str()), "the failure names its case: {e}");
    }
    assert_fails_verify(&o);
}

/// The run's verification fails, listing each failed case and the count short by as many.
fn assert_fails_verify(o: &Outcome) {
    let skipped = o.report.skipped.len();
    assert!(o.report.skipped.iter().all(|(n, _)| cpu_skips(n)), "{:#?}", o.report.skipped);
    assert_eq!(o.report.passed.len() + o.report.failed.len() + skipped, RUN_CASES);
    let e = o.report.verify(RUN_CASES, CPU_SKIPS).unwrap_err();
    for (n, _) in &o.report.failed {
        assert!(e.lines().any(|l| l.starts_with(&format!("FAILED {n}: "))), "{n} is not listed: {e}");
    }
    assert_eq!(e.lines().count(), o.report.failed.len() + 1, "the failed cases and the count: {e}");
}

/// RoPE rotating each sequence's last position one position too far fails every row that
/// rotates (the rope rows and attention's packed rows), forward and backward, and nothing else.
#[test]
fn rope_off_by_one_at_the_end_fails_the_rows_that_rotate() {
    let o = run(Fault::RopeOffByOneAtEnd);
    let rotating = o.calling(|m| m == "rope");
    let rope = o.of(Op::Rope);
    assert!(rope.len() >= 12 && rope.iter().all(|n| rotating.contains(n)), "{rotating:?}");
    assert!(rotating.iter().any(|n| o.of(Op::Attention).contains(n)), "attention's packed rows rotate: {rotating:?}");
    assert_eq!(o.failed(), rotating, "{:#?}", o.report.failed);
    assert_fails_verify(&o);
    // The one-token sequence's only position is its last: even it is caught.
    assert!(o.failed().iter().any(|n| n.contains("rope b1 t1 ")), "{:?}", o.failed());
}

/// An op a backend quietly leaves out is skipped, not failed: a check that only asks for no
/// failures and some passes lets it through; the run's verification (the CPU allows no skip)
/// names each skipped case, and the coverage check names the op.
#[test]
fn a_skipped_op_fails_verify_and_coverage() {
    let skipped = Op::GeGlu;
    let o = run(Fault::SkipOp(skipped));
    let its_rows = o.of(skipped);
    assert!(!its_rows.is_empty());
    let (listed, skips): (Vec<_>, Vec<_>) = o.report.skipped.iter().map(|(n, _)| n).partition(|n| cpu_skips(n));
    let skips = sorted(skips.into_iter());
    assert_eq!(skips, its_rows, "exactly the op's rows are skipped, besides the CPU's listed skips");
    // What a parity test checked before: no failure, something passed. The bug passes it.
    assert!(o.report.failed.is_empty() && !o.report.passed.is_empty());
    assert_eq!(o.report.passed.len() + skips.len() + listed.len(), RUN_CASES);
    let e = o.report.verify(RUN_CASES, CPU_SKIPS).unwrap_err();
    eprintln!("caught: {}", e.lines().next().unwrap_or_default());
    for n in &skips {
        assert!(e.contains(&format!("SKIPPED (not on the allow-list) {n}: geglu left out")), "{n}: {e}");
    }
    assert_eq!(e.lines().count(), skips.len(), "only the skipped cases are named: {e}");
    // Listed with a reason, the skips pass; listed without one, they do not.
    let with = |why| [CPU_SKIPS, &[("geglu", why)]].concat();
    o.report.verify(RUN_CASES, &with("no GeGLU kernel on this backend")).unwrap();
    assert!(o.report.verify(RUN_CASES, &with(" ")).is_err());
    let be = Faulty::new(Fault::SkipOp(skipped));
    let e = selftest::coverage(&be, &[]).unwrap_err();
    eprintln!("caught: {e}");
    assert!(e.starts_with("geglu: none of its") && e.contains("faulty"), "{e}");
    assert_eq!(e.lines().count(), 1, "only the skipped op is named: {e}");
    selftest::coverage(&Faulty::new(Fault::None), &[]).unwrap();
}

/// Linear layers on 16-bit weights that round their activations to the weights' type, on a
/// backend that computes in f32 after widening the weights exactly: tolerances from the case's
/// dtype label (the backend claiming to compute in its inputs' type, as every case's tolerance
/// once followed its label) let the bug through; tolerances from what the backend computes
/// fail every 16-bit linear row (those whose activations are 16-bit already have nothing left
/// to round).
#[test]
fn sixteen_bit_rounding_passes_the_label_but_not_the_arithmetic() {
    let sixteen = |o: &Outcome| {
        o.rows(|r| {
            r.op == Op::Linear && matches!(r.dtype, DType::BF16 | DType::F16) && !r.name.ends_with("activations")
        })
    };
    let honest = run(Fault::RoundsToWeightType);
    assert!(sixteen(&honest).len() >= 16, "{:?}", sixteen(&honest));
    assert_eq!(honest.failed(), sixteen(&honest), "{:#?}", honest.report.failed);
    for (_, e) in honest.report.failed.iter().take(3) {
        eprintln!("caught: {e}");
    }
    let labelled = run_on(Faulty::new(Fault::RoundsToWeightType).claiming_input_type());
    labelled.report.verify(RUN_CASES, CPU_SKIPS).unwrap();
}
