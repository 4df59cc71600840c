//! The op parity table (`kiln_core::selftest`) on the CPU backend: its f32 kernels against its
//! own f64 path (narrowed to some ops with `KILN_SELFTEST_OP=rope`, or `=glu,rms_norm`), and
//! the table's completeness: every op has a CPU kernel and parity rows built by its family.
//! GPU backends run the same table, and [`selftest::coverage`], from their own crates' tests.

use kiln_core::backend::Op;
use kiln_core::selftest::{self, FAMILIES, Filter, TABLE_CASES};
use kiln_core::{Backend, CpuBackend, DType, Support};

/// The whole table (or the rows `KILN_SELFTEST_OP` names): every case passes or is skipped
/// with a reason on `CPU_SKIPS`, and the count is exactly the table's.
#[test]
fn parity_table() {
    let be = CpuBackend;
    let t0 = std::time::Instant::now();
    let rep = selftest::run(&be, &mut |_, _| {});
    for (n, why) in &rep.skipped {
        eprintln!("SKIP {n}: {why}");
    }
    eprintln!(
        "parity cpu: {} cases passed, {} skipped, {} failed in {:.1} s",
        rep.passed.len(),
        rep.skipped.len(),
        rep.failed.len(),
        t0.elapsed().as_secs_f64()
    );
    let filter = Filter::from_env().unwrap();
    let expected = selftest::count(&selftest::DEFAULT_SEEDS, &filter, &|_| true);
    if filter == Filter::all() {
        assert_eq!(expected, 2 * TABLE_CASES);
    }
    if let Err(e) = rep.verify(expected, selftest::CPU_SKIPS) {
        panic!("{e}");
    }
}

/// Every seed's table has the same rows: `TABLE_CASES` of them (the count the parity runs of
/// every backend assert).
#[test]
fn every_seed_builds_table_cases_rows() {
    let mut seeds = vec![1, 2, 3, 0xDEAD_BEEF, u64::MAX];
    seeds.extend(selftest::seeds_for("cuda-emu v3_mma"));
    for seed in seeds {
        let cases = selftest::cases(seed);
        assert_eq!(cases.len(), TABLE_CASES, "seed {seed}");
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        let first: Vec<String> = selftest::cases(1).into_iter().map(|c| c.name).collect();
        assert_eq!(names, first, "seed {seed}: the same rows in the same order");
    }
}

/// Every op of `Op::ALL` runs on the CPU in f32 and has parity rows, built by the family the op
/// names (`<family>_cases` in `selftest/<family>.rs`), and every family builds only its own ops.
#[test]
fn every_op_has_a_cpu_kernel_and_parity_rows() {
    for op in Op::ALL {
        assert_eq!(CpuBackend.supports(op, DType::F32), Support::Yes, "{}: no CPU kernel in f32", op.name());
        assert_eq!(op.name().parse::<Op>().ok(), Some(op), "{}: the name does not parse back", op.name());
    }
    let fams: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
    for op in Op::ALL {
        assert!(fams.contains(&op.family()), "{}: family {} builds no cases", op.name(), op.family());
    }
    for (fam, build) in FAMILIES {
        let cases = build(1);
        assert!(!cases.is_empty(), "{fam}_cases builds nothing");
        for c in &cases {
            assert_eq!(c.op.family(), fam, "{fam}_cases builds {} ({})", c.name, c.op.name());
        }
    }
    selftest::coverage(&CpuBackend, &[]).unwrap();
}

/// The coverage check names what is missing: an op listed as not on a backend that runs it, an
/// op listed without a reason.
#[test]
fn coverage_rejects_a_wrong_not_here_list() {
    let e = selftest::coverage(&CpuBackend, &[(Op::Rope, "no kernel")]).unwrap_err();
    assert!(e.contains("rope: listed as not on cpu (no kernel)"), "{e}");
    let e = selftest::coverage(&CpuBackend, &[(Op::GeGlu, " ")]).unwrap_err();
    assert!(e.contains("geglu: listed without a reason"), "{e}");
}

/// A filter selects by op name or family; only the selected families are built, and their
/// inputs are those of a full run.
#[test]
fn filters_select_by_op_or_family() {
    let names = |f: &Filter| selftest::cases_of(1, f).into_iter().map(|c| c.name).collect::<Vec<_>>();
    let rope = names(&Filter::parse("rope").unwrap());
    assert!(rope.len() >= 6 && rope.iter().all(|n| n.starts_with("rope ")), "{rope:?}");
    let glu = selftest::cases_of(1, &Filter::parse("glu").unwrap());
    assert!(glu.iter().any(|c| c.op == Op::SwiGlu) && glu.iter().any(|c| c.op == Op::GeGlu));
    assert!(glu.iter().all(|c| c.op.family() == "glu"));
    let two = selftest::cases_of(1, &Filter::parse(" rms_norm , scale").unwrap());
    assert!(two.iter().all(|c| matches!(c.op, Op::RmsNorm | Op::Scale)) && two.len() >= 5);
    assert_eq!(selftest::cases(1).len(), names(&Filter::parse("").unwrap()).len());
    let e = Filter::parse("rope,ropes").unwrap_err();
    assert!(e.contains("'ropes'") && e.contains("rms_norm") && e.contains("attention"), "{e}");
    // A filtered run passes on the same cases as the full run's rows of that op.
    let rope_filter = Filter::parse("rope").unwrap();
    let rep = selftest::run_filtered(&CpuBackend, &rope_filter, &mut |_, _| {});
    assert_eq!(selftest::count(&selftest::DEFAULT_SEEDS, &rope_filter, &|_| true), 2 * rope.len());
    rep.verify(2 * rope.len(), selftest::CPU_SKIPS).unwrap();
}
